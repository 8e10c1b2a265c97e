"""Unknown files clustered into candidate productions.

HDBSCAN (scikit-learn) rather than k-means: the number of unknown productions in a dump is what the
investigator wants to learn, not something to give up front, and HDBSCAN leaves a file that fits no
dense group as noise (-1) instead of forcing it into the nearest cluster, which is the honest answer
for a one-off file. Measured against FAISS k-means in docs/BENCHMARKS.md.

Files are clustered one by one (frames of one production are often linked as near duplicates, so
clustering whole groups would leave too few units); the unknown members of one shot group then take
the group's majority cluster, so the states of one shot always land together.
Vectors are L2-normalised and reduced by PCA before HDBSCAN: on unit vectors Euclidean distance
orders pairs as cosine similarity does, and the reduction keeps HDBSCAN's neighbour search fast at
100k units (exact in 512 dimensions it is quadratic).
"""

from __future__ import annotations

import numpy as np

#: Units (shots) a candidate production needs; fewer are left unclustered.
MIN_CLUSTER_SIZE = 3
#: Dimensions kept by the PCA before HDBSCAN.
PCA_DIMS = 32
#: Past this many files HDBSCAN runs on an evenly spaced sample of them and every other file takes
#: the label of its nearest sampled file (FAISS): HDBSCAN's cost grows faster than linearly.
MAX_SAMPLE = 20000


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def reduce(vectors: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """Normalised, centred, projected on the top principal axes (deterministic: SVD, sign fixed)."""
    x = _normalise(vectors).astype(np.float64)
    x -= x.mean(axis=0)
    if x.shape[1] <= dims or len(x) <= dims:
        return x
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 20000)], full_matrices=False)
    axes = vt[:dims]
    axes *= np.sign(axes[np.arange(dims), np.abs(axes).argmax(axis=1)])[:, None]
    return x @ axes.T


def cluster_units(vectors: np.ndarray, min_cluster_size: int = MIN_CLUSTER_SIZE) -> np.ndarray:
    """Cluster label per row (-1: in no cluster). Clusters are numbered by their first row, so the
    same vectors in the same order give the same labels."""
    from sklearn.cluster import HDBSCAN

    n = len(vectors)
    if n < max(2, min_cluster_size):
        return np.full(n, -1, np.int64)
    x = reduce(vectors)
    sample = np.arange(0, n, max(1, -(-n // MAX_SAMPLE)))
    raw_sample = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1, copy=True).fit_predict(x[sample])
    if len(sample) == n:
        raw = raw_sample
    else:
        import faiss

        xs = np.ascontiguousarray(x[sample], dtype=np.float32)
        index = faiss.IndexFlatL2(xs.shape[1])
        index.add(xs)
        _, nearest = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        raw = raw_sample[nearest[:, 0]]
        raw[sample] = raw_sample
    labels = np.full(n, -1, np.int64)
    order: dict[int, int] = {}
    for row, c in enumerate(raw):
        if c < 0:
            continue
        labels[row] = order.setdefault(int(c), len(order))
    return labels


def representatives(vectors: np.ndarray, labels: np.ndarray, per_cluster: int = 6) -> dict[int, list[int]]:
    """Rows nearest each cluster's centroid (the thumbnails an investigator looks at first)."""
    x = _normalise(vectors)
    out: dict[int, list[int]] = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        rows = np.flatnonzero(labels == c)
        centre = x[rows].mean(axis=0)
        sims = x[rows] @ centre
        out[c] = rows[np.lexsort((rows, -sims))][:per_cluster].tolist()
    return out
