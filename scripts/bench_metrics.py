"""Metrics for the accuracy benchmark: top-1 (overall and macro), decision accuracy, false attribution,
open-set AUROC and expected calibration error.  Pure numpy, no I/O."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def top1(truth: Sequence[str], pred: Sequence[str | None]) -> float:
    if len(truth) == 0:
        return float("nan")
    return float(np.mean([t == p for t, p in zip(truth, pred, strict=True)]))


def macro_top1(truth: Sequence[str], pred: Sequence[str | None]) -> float:
    """Per-title accuracy averaged over titles (each production weighs the same)."""
    per: dict[str, list[bool]] = defaultdict(list)
    for t, p in zip(truth, pred, strict=True):
        per[t].append(t == p)
    if not per:
        return float("nan")
    return float(np.mean([np.mean(v) for v in per.values()]))


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties count one half (Mann-Whitney)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    # average ranks over ties
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def ece(
    conf: Sequence[float], correct: Sequence[bool], bins: int = 15, weights: Sequence[float] | None = None
) -> float:
    """Expected calibration error with equal-width confidence bins (optionally sample-weighted)."""
    conf = np.clip(np.asarray(conf, dtype=np.float64), 0, 1)
    correct = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    w = np.ones(len(conf)) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any() and w[m].sum() > 0:
            gap = abs(np.average(conf[m], weights=w[m]) - np.average(correct[m], weights=w[m]))
            total += w[m].sum() / w.sum() * gap
    return float(total)


def balanced_weights(is_distractor: Sequence[bool]) -> np.ndarray:
    """Sample weights giving known queries and distractors half the total each (the 1:1 prior that
    matcher's calibration assumes, since a dump's share of unknowns is not known in advance)."""
    d = np.asarray(is_distractor, dtype=bool)
    nd, nk = max(int(d.sum()), 1), max(int((~d).sum()), 1)
    return np.where(d, 0.5 / nd, 0.5 / nk) * len(d)


def knn_vote(sims: np.ndarray, ref_titles: np.ndarray, k: int = 10, temp: float = 0.05):
    """A plain nearest-neighbour title vote (used before matcher's scorer existed, and as a sanity check).

    Returns (top titles, confidences, best similarity) per query row.
    """
    titles = np.unique(ref_titles)
    tix = {t: i for i, t in enumerate(titles)}
    rt = np.array([tix[t] for t in ref_titles])
    k = min(k, sims.shape[1])
    nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    out_t, out_c, out_s = [], [], []
    for i in range(sims.shape[0]):
        s = sims[i, nn[i]]
        w = np.exp((s - s.max()) / temp)
        votes = np.bincount(rt[nn[i]], weights=w, minlength=len(titles))
        j = int(votes.argmax())
        out_t.append(str(titles[j]))
        out_c.append(float(votes[j] / votes.sum()))
        out_s.append(float(s.max()))
    return out_t, np.array(out_c), np.array(out_s)
