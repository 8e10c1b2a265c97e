"""TitleScorer: from a query's nearest reference stills to ranked titles, a calibrated confidence, or unknown.

1. Per title, its best still's similarity ``s_t`` (the max, never a vote count: a title with 5,000
   stills must not win by numbers).
2. Imbalance correction: ``z_t = (s_t - mu_t) / sigma_t``, where mu_t/sigma_t describe how similar title
   t's best still is to queries that are NOT from t (its "background" spread). A big title has many
   stills, so by chance one of them lies close to any query: its mu_t is higher, and that is taken off.
   This is the score normalisation copy-detection systems use, estimated per title.
3. Confidence: a logistic model of (z_top, z_top - z_second), fitted by the index itself on pseudo-queries
   (see calibration.py), with non-negative weights so that confidence never falls when the evidence
   grows. The title is reported when confidence >= the index's threshold, else "unknown".

Sketches are scored apart. An embedder that reports how much of a vector carries evidence
(``coverage``; classic: ~1 colour, ~0.6 grey, ~0.4 line-art) lets the index keep a second set of the
parameters above for queries in the SKETCH_COVERAGE range, fitted on sketch probes only. Those queries are
ranked by their best still's similarity: a sketch's background statistics are too noisy to reorder
titles by (measured: seen line-art top-1 66% ranked by z, 85% by similarity; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from matcher.records import Evidence, TitleScore

_SHRINK = 8.0  # pseudo-count pulling a title's stats towards the global ones when it has few probes
# Queries with coverage in [low, high) are scored as sketches (classic line-art: 0.37-0.40). Below
# `low` lies a near-blank still (a flat colour, an empty page: ~0.19); it has no band of its own and is
# scored with the main parameters, where its scaled-up noise stays far below a real match.
SKETCH_COVERAGE = (0.25, 0.5)
# Queries of the main band with less evidence than this (classic grey stills: ~0.6) must clear their own
# unknown threshold, fitted on grey probes: at the shared one, 4 of 68 grey distractors got a title (5.9%)
# against 0 of 68 colour ones (docs/BENCHMARKS.md, "Per-kind unknown thresholds").
GREY_COVERAGE = 0.8
# Below these counts a band's confidence is reported as resting on too few probes (calibration_warning):
# the 2% unknown threshold is then a tail of fewer than 4 probes, or the known side is a handful of stills.
MIN_KNOWN_PROBES = 100
MIN_KNOWN_STILLS = 20  # ... or the known probes are copies of this few distinct reference stills
MIN_UNKNOWN_PROBES = 200


def is_sketch(coverage) -> np.ndarray | bool:
    """Whether queries (or probes) with this coverage are scored with the sketch parameters."""
    c = np.asarray(coverage)
    return (c >= SKETCH_COVERAGE[0]) & (c < SKETCH_COVERAGE[1])


@dataclass
class Calibration:
    """Everything the scorer learned from the index's own references; stored in the manifest."""

    mu: dict[str, float] = field(default_factory=dict)  # per-title background mean of best similarity
    sigma: dict[str, float] = field(default_factory=dict)  # ... and its spread
    n: dict[str, int] = field(default_factory=dict)  # probes behind each title's stats
    global_mu: float = 0.0
    global_sigma: float = 0.1
    weights: tuple[float, float, float] = (1.5, 1.5, -4.0)  # (z_top, margin, bias) -> logit
    threshold: float = 0.5
    grey_threshold: float | None = None  # for queries below GREY_COVERAGE, when the index could fit one
    fitted: bool = False  # False: too little data (e.g. one title), the prior above is used
    probes: int = 0
    unknown_share: float = 0.5  # prior share of queries from productions not in the index
    rank_by: str = "z"  # "z": normalised score; "similarity": the best still's similarity
    sketch: Calibration | None = None  # parameters for sketch queries (is_sketch), when fitted
    background: int = 0  # background-set images among the unknown probes (background.py)
    known_probes: int = 0  # pseudo-queries the fit rests on: of an indexed title ...
    unknown_probes: int = 0  # ... and of no indexed title (other titles left out, background set)
    known_stills: int = 0  # distinct reference stills the known probes were made from

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = list(self.weights)
        d["sketch"] = self.sketch.to_dict() if self.sketch else None
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration:
        if not d:
            return cls()
        d = dict(d)
        d["weights"] = tuple(d.get("weights", cls.weights))
        d["sketch"] = cls.from_dict(d["sketch"]) if d.get("sketch") else None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def warning(self) -> str | None:
        """One line when this band's confidence rests on too few probes, else None."""
        if not self.fitted:
            return (
                f"not calibrated ({self.probes} probes, no background set): the confidence is a prior, "
                "not a measured probability; add titles or rebuild the index with this version"
            )
        if not self.known_probes and not self.unknown_probes:
            return (
                "calibrated without the background set (index written by an older version): "
                "run 'matcher index calibrate' to refit it"
            )
        if (
            self.known_probes < MIN_KNOWN_PROBES
            or self.unknown_probes < MIN_UNKNOWN_PROBES
            or self.known_stills < MIN_KNOWN_STILLS
        ):
            return (
                f"calibrated on few probes ({self.known_probes} made from {self.known_stills} reference "
                f"stills, {self.unknown_probes} of other productions): read the confidence as a rough "
                "estimate"
            )
        return None

    def for_coverage(self, coverage: float) -> Calibration:
        """The parameters that score a query with this much evidence (see SKETCH_COVERAGE)."""
        return self.sketch if self.sketch is not None and is_sketch(coverage) else self

    def threshold_for(self, coverage: float) -> float:
        """The unknown threshold for a query with this much evidence (see GREY_COVERAGE)."""
        if self.grey_threshold is not None and coverage < GREY_COVERAGE:
            return self.grey_threshold
        return self.threshold

    def stats(self, title: str) -> tuple[float, float]:
        """Shrunk (mu, sigma) for a title; unseen titles get the global stats."""
        n = self.n.get(title, 0)
        if n == 0:
            return self.global_mu, self.global_sigma
        w = n / (n + _SHRINK)
        mu = w * self.mu[title] + (1 - w) * self.global_mu
        var = w * self.sigma[title] ** 2 + (1 - w) * self.global_sigma**2
        return mu, max(math.sqrt(var), 1e-3)

    def probability(self, z_top: float | np.ndarray, margin: float | np.ndarray):
        a, b, c = self.weights
        logit = a * np.asarray(z_top) + b * np.asarray(margin) + c
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -40, 40)))


def coverage_of(coverage, vectors: np.ndarray) -> np.ndarray:
    """Per-vector evidence share from an embedder's ``coverage`` function; 1 for embedders without one."""
    if coverage is None or len(vectors) == 0:
        return np.ones(len(vectors), dtype=np.float32)
    return np.asarray(coverage(vectors), dtype=np.float32)


def evidence_scale(coverage, vectors: np.ndarray) -> np.ndarray:
    """Per-query factor that puts similarities on the scale of a full-colour query.

    A grey still cannot show colour and a line-art sketch shows only lines, so even its right match
    is less similar than a colour frame's would be (classic: ~0.6x grey, ~0.4x sketch), and the
    per-title background statistics, fitted mostly on colour, would rank such queries by noise.
    Embedders that know how much of a vector carries evidence expose ``coverage(vectors)`` (0..1);
    similarities are divided by it for scoring (evidence keeps the raw cosine). Others: 1."""
    return 1.0 / np.maximum(coverage_of(coverage, vectors), 0.2)


def rescale(sims: np.ndarray, ids: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """sims (n, k) times a per-query scale, leaving the missing-neighbour slots (id -1) untouched."""
    return np.multiply(sims, scale.reshape(-1, 1), out=sims.copy(), where=ids >= 0)


@dataclass
class Ranking:
    """Intermediate result of scoring one query, exposed for calibration and the benchmark."""

    titles: list[str]  # candidate titles, best first
    z: np.ndarray  # normalised score per candidate
    best: dict[str, tuple[float, int]]  # title -> (best similarity, reference id)
    z_top: float
    margin: float
    calibration: Calibration  # the parameters (sketch or not) that scored it
    coverage: float = 1.0  # the query's evidence share (scoring.coverage_of); picks the threshold


class TitleScorer:
    """Turns one query's neighbour list into ranked titles with calibrated confidence."""

    def __init__(self, calibration: Calibration, all_titles: list[str]):
        self.calibration = calibration
        self.all_titles = list(all_titles)

    def rank(self, sims: np.ndarray, titles: np.ndarray, ids: np.ndarray, coverage: float = 1.0) -> Ranking:
        """Rank the titles of one query's neighbours (sims: evidence-scaled, see evidence_scale)."""
        cal = self.calibration.for_coverage(coverage)
        best: dict[str, tuple[float, int]] = {}
        for s, t, i in zip(sims, titles, ids):
            if i < 0 or not t:
                continue
            if t not in best or s > best[t][0]:
                best[t] = (float(s), int(i))
        valid = sims[ids >= 0]
        floor = float(valid.min()) if len(valid) else -1.0  # absent titles are at most this similar
        zs = {}
        for t in self.all_titles:
            s = best[t][0] if t in best else floor
            mu, sigma = cal.stats(t)
            zs[t] = (s - mu) / sigma
        if cal.rank_by == "similarity":
            present = sorted(best, key=lambda t: -best[t][0])
            # candidate scores follow exp(z): kept non-increasing down a similarity ranking
            z_present = np.minimum.accumulate(np.array([zs[t] for t in present], dtype=np.float64))
        else:
            present = sorted(best, key=lambda t: -zs[t])
            z_present = np.array([zs[t] for t in present], dtype=np.float64)
        if not present:
            return Ranking([], z_present, best, -10.0, 0.0, cal, coverage)
        z_top = float(z_present[0])
        # Margin in raw similarity over the runner-up title (absent titles: the floor), in units of the
        # background spread: how far ahead the winner is, independent of per-title offsets.
        others = [best[t][0] if t in best else floor for t in self.all_titles if t != present[0]]
        runner_up = max(others) if others else floor
        margin = (best[present[0]][0] - runner_up) / cal.global_sigma
        return Ranking(present, z_present, best, z_top, float(margin), cal, coverage)

    @staticmethod
    def tied(ranking: Ranking) -> list[str]:
        """Titles tied for first place (their best stills are equally similar to the query, e.g. the
        same picture indexed under two titles): no title may be chosen among them. [] when none."""
        if len(ranking.titles) < 2:
            return []
        top = ranking.best[ranking.titles[0]][0]
        return [t for t in ranking.titles if abs(ranking.best[t][0] - top) <= 1e-6]

    def score(self, ranking: Ranking, threshold: float | None = None, max_candidates: int = 5):
        """(title or None, confidence, candidates) for a ranking."""
        cal = ranking.calibration
        threshold = cal.threshold_for(ranking.coverage) if threshold is None else threshold
        if not ranking.titles:
            return None, 0.0, []
        candidates = []
        confidence = float(cal.probability(ranking.z_top, ranking.margin))
        candidates.append(TitleScore(ranking.titles[0], confidence))
        # The other candidates share what the top one leaves (1 - confidence) with "none of them"
        # (weight of z = 0, the background level) in proportion to exp(z), capped at the top's
        # score: candidate scores read as probabilities, add up to at most 1 and keep the ranking.
        rest = np.exp(np.clip(ranking.z[1:max_candidates], -30, 30))
        if len(rest):
            w = np.minimum(rest / (rest.sum() + 1.0) * (1.0 - confidence), confidence)
            candidates += [TitleScore(t, float(s)) for t, s in zip(ranking.titles[1:max_candidates], w)]
        title = ranking.titles[0] if confidence >= threshold else None
        if len(self.tied(ranking)) > 1:
            title = None  # a tie is reported as one (MatchResult.tie), never broken silently
        return title, confidence, candidates

    @staticmethod
    def evidence(ranking: Ranking, sims, ids, refs: dict, per_title: int = 3, titles: int = 3) -> list:
        """The reference stills behind the top titles, most similar first."""
        out = []
        wanted = ranking.titles[:titles]
        counts = dict.fromkeys(wanted, 0)
        for s, i in sorted(zip(sims, ids), key=lambda x: -x[0]):
            ref = refs.get(int(i))
            if ref is None or ref.title not in counts or counts[ref.title] >= per_title:
                continue
            counts[ref.title] += 1
            out.append(
                Evidence(
                    ref.title, ref.source, float(s), ref.timestamp, ref.episode, ref.timestamp_end, ref.sha256
                )
            )
        order = {t: n for n, t in enumerate(wanted)}
        out.sort(key=lambda e: (order[e.title], -e.similarity))
        return out
