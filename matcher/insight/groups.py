"""Shot groups: which files of a dump show the same shot in different states (line-art, cel,
finished frame, notes, crops, re-encodes), and what verdict travels along a group.

- The near-duplicate graph is a FAISS k-NN search of the dump's own embeddings against themselves
  (inner product, as the index searches); an edge is kept when its similarity, on the scorer's
  scale (divided by the lower evidence coverage of the two files: a sketch's lines or a grey
  frame's shapes are all it can share), reaches the edge threshold.
- The threshold and the probability that an edge is a true link are calibrated like the unknown
  threshold, on the index's own probes: altered and line-art copies of reference stills
  (``store.probes``). Positives: a probe against the still it was made from. Negatives: a probe
  against the most similar still of another title, i.e. exactly the mistake that would carry a
  title to a file of another production. The threshold lets at most ``max_false_link`` of the
  negatives through.
- Groups are connected components (scipy), but the verdict does not trust a chain blindly: a file
  receives a title with the confidence of the member that matched it, times the product of the
  link probabilities along the most probable path between them (Dijkstra on -log p), so a long
  chain of weak links carries little.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

#: Share of cross-title probe pairs allowed to reach the edge threshold (false links).
MAX_FALSE_LINK = 0.01
#: Neighbours looked at per file; a shot rarely has more states than this in one dump.
NEIGHBOURS = 16


@dataclass
class EdgeCalibration:
    threshold: float  # cosine similarity an edge needs
    slope: float  # P(same shot | s) = 1 / (1 + exp(-(slope * s + intercept)))
    intercept: float
    positives: int  # probe pairs it was fitted on
    negatives: int
    recall: float  # share of positive pairs at or above the threshold
    false_link: float  # share of negative pairs at or above it

    def probability(self, sims: np.ndarray) -> np.ndarray:
        z = self.slope * np.asarray(sims, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def fit_edges(pos: np.ndarray, neg: np.ndarray, max_false_link: float = MAX_FALSE_LINK) -> EdgeCalibration:
    """Threshold and link probability from similarities of true (pos) and false (neg) pairs."""
    pos = np.sort(np.asarray(pos, dtype=np.float64))
    neg = np.sort(np.asarray(neg, dtype=np.float64))
    if not len(pos) or not len(neg):
        raise ValueError("edge calibration needs probe pairs of both kinds")
    # smallest threshold that lets at most max_false_link of the negatives through
    k = int(np.floor(max_false_link * len(neg)))
    threshold = float(neg[len(neg) - k - 1]) + 1e-6 if k < len(neg) else float(neg[0])
    threshold = max(threshold, float(neg[-1]) + 1e-6) if k == 0 else threshold
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    # balanced classes: the probability is P(same shot | s) under a 1:1 prior
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    from matcher.score.calibration import _fit_logistic

    beta = _fit_logistic(np.column_stack([x, np.zeros(len(x))]), y, w * len(x))
    slope, intercept = float(beta[0]), float(beta[2])
    return EdgeCalibration(
        threshold=threshold,
        slope=slope,
        intercept=intercept,
        positives=len(pos),
        negatives=len(neg),
        recall=float(np.mean(pos >= threshold)),
        false_link=float(np.mean(neg >= threshold)),
    )


def calibrate_edges(
    store, coverage=None, max_false_link: float = MAX_FALSE_LINK, k: int = 16
) -> EdgeCalibration:
    """Fit the edge threshold on an index's probes (see the module docstring). Similarities are on
    the scorer's scale (``evidence_scale``: a line-art or grey file's cosine divided by its
    coverage), as the unknown threshold's are, so a sketch can link to its finished frame."""
    from matcher.score.scoring import evidence_scale

    p = store.probes
    vecs = np.ascontiguousarray(p["vectors"], dtype=np.float32)
    if not len(vecs):
        raise ValueError("the index has no calibration probes")
    ref_ids = np.asarray(p["ref_ids"], dtype=np.int64)
    own = np.ascontiguousarray(store.vectors(ref_ids), dtype=np.float32)
    own_scale = evidence_scale(coverage, own)
    scale = np.maximum(evidence_scale(coverage, vecs), own_scale)
    pos = np.einsum("ij,ij->i", vecs, own) * scale
    sims, ids = store.search(vecs, k)
    titles = store.title_array(np.where(ids >= 0, ids, 0))
    other = (titles != np.asarray(p["titles"])[:, None]) & (ids >= 0)
    neg = np.where(other, sims, -np.inf).max(axis=1) * scale
    neg = neg[np.isfinite(neg)]
    # the background set stands for productions outside the index: its nearest stills are negatives too
    bg = store.background.get("vectors") if hasattr(store, "background") else None
    if bg is not None and len(bg):
        bg = np.ascontiguousarray(bg, dtype=np.float32)
        bsims, _ = store.search(bg, 1)
        neg = np.concatenate([neg, bsims[:, 0] * evidence_scale(coverage, bg)])
    return fit_edges(pos, neg, max_false_link)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def near_duplicate_edges(
    vectors: np.ndarray, threshold: float, k: int = NEIGHBOURS, scale: np.ndarray | None = None
):
    """(i, j, similarity) with i < j for every pair among each file's k nearest neighbours whose
    similarity (inner product, as the index searches, times the larger evidence ``scale`` of the
    two files) reaches ``threshold``; sorted, so the same vectors give the same edges."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, min(k + 1, n))
    rows = np.repeat(np.arange(n), ids.shape[1])
    cols, s = ids.ravel(), sims.ravel()
    if scale is not None:
        s = s * np.maximum(scale[rows], scale[np.maximum(cols, 0)])
    keep = (cols >= 0) & (cols != rows) & (s >= threshold)
    i, j, s = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], s[keep]
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    # float32 sums differ in the last bit between the two directions: keep one, rounded
    return i[first], j[first], np.round(s[first], 6)


def group_files(
    vectors: np.ndarray,
    verdicts: list[dict],
    cal: EdgeCalibration,
    threshold: float,
    k: int = NEIGHBOURS,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Group files and carry verdicts along each group.

    ``verdicts[i]``: {"title", "confidence", "status"} of file i (its own verdict). ``threshold``:
    the index's unknown threshold, which a carried confidence must reach too.
    Returns (group label per file, -1 for a file alone; group dicts; per-file dicts with
    ``group_title``, ``group_confidence``, ``group_source`` (index of the member whose verdict it
    carries) and ``group_edge`` (index of the neighbour on the path towards it, similarity))."""
    n = len(vectors)
    i, j, s = near_duplicate_edges(vectors, cal.threshold, k, scale)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp, minlength=comp.max() + 1 if n else 0)
    # stable ids: groups of two or more, numbered by their first file
    labels = np.full(n, -1, np.int64)
    groups: list[dict] = []
    per_file = [{} for _ in range(n)]
    prob = cal.probability(s)
    cost = coo_matrix((-np.log(np.clip(prob, 1e-12, 1.0)) + 1e-9, (i, j)), shape=(n, n)).tocsr()
    seen: dict[int, int] = {}
    for f in range(n):
        c = comp[f]
        if sizes[c] < 2:
            continue
        if c not in seen:
            seen[c] = len(groups)
            groups.append({"members": []})
        labels[f] = seen[c]
        groups[seen[c]]["members"].append(f)
    edge_of = {(int(a), int(b)): round(float(v), 6) for a, b, v in zip(i, j, s)}
    for (a, b), v in edge_of.items():
        groups[labels[a]].setdefault("edges", []).append((a, b, v))
    for gid, g in enumerate(groups):
        members = g["members"]
        g["id"] = gid
        g.setdefault("edges", [])
        sources = [m for m in members if verdicts[m].get("status") == "matched" and verdicts[m].get("title")]
        best: dict[str, tuple[float, int, np.ndarray, np.ndarray]] = {}
        if sources:
            dist, pred = dijkstra(cost, directed=False, indices=sources, return_predecessors=True)
            for row, m in enumerate(sources):
                t, conf = verdicts[m]["title"], float(verdicts[m].get("confidence") or 0.0)
                # the strongest member per title is where that title's evidence comes from
                if t not in best or conf > best[t][0] or (conf == best[t][0] and m < best[t][1]):
                    best[t] = (conf, m, dist[row], pred[row])
        g_titles = sorted(best, key=lambda t: (-best[t][0], t))
        g["titles"] = {t: round(best[t][0], 6) for t in g_titles}
        g["conflict"] = len(g_titles) > 1
        g["title"] = None if g["conflict"] or not g_titles else g_titles[0]
        g["confidence"] = round(best[g_titles[0]][0], 6) if g_titles else 0.0
        for f in members:
            carried = {}
            for t, (conf, m, dist, pred) in best.items():
                carried[t] = (conf * float(np.exp(-dist[f])), m, int(pred[f]) if f != m else -9999)
            order = sorted(carried, key=lambda t: (-carried[t][0], t))
            rec: dict = {"group": gid, "group_title": None, "group_confidence": 0.0}
            if order:
                t = order[0]
                conf, m, nb = carried[t]
                rec["group_confidence"] = round(conf, 6)
                rec["group_source"] = m
                if nb >= 0:
                    a, b = min(f, nb), max(f, nb)
                    rec["group_edge"] = (nb, edge_of.get((a, b)))
                # another title reaching the threshold too means the group contradicts itself
                contested = len(order) > 1 and carried[order[1]][0] >= threshold
                if conf >= threshold and not contested:
                    rec["group_title"] = t
                elif contested:
                    rec["group_conflict"] = order
            per_file[f] = rec
    return labels, groups, per_file
