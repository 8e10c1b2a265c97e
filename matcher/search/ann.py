"""The nearest-neighbour index behind the reference store: exact while that is fast, approximate above.

Vectors are float32 rows of norm <= 1; similarity is their inner product (cosine for unit rows).
Below `exact_max` vectors the index is an exact flat scan (`IndexIDMap2(IndexFlatIP)`); a single
query then scans n * d * 4 bytes, which at 100k x 512 is ~200 MB, a few tens of ms on one core. Above
it the index is an IVF-Flat (`IndexIVFFlat`, inner product): it supports adding vectors later and `remove_ids`
(HNSW supports neither removal nor cheap mmap), and it stores vectors uncompressed, so the only
approximation is which inverted lists are probed. `nprobe` is tuned at build time: recall@10 against
exact search is measured on a sample of the indexed vectors used as queries, and nprobe is doubled
until recall, less a margin for sampling error, is >= `min_recall` (0.99); if no nprobe up to
`nlist / 4` reaches it (the lists would no longer save much work) the exact index is built instead.
The measured recall goes in the description dict, which the store writes into its manifest and
`index info` prints.

faiss is imported lazily so that importing this module costs nothing until an index is touched.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import faiss

#: Largest index built exact by default. Measured (docs/BENCHMARKS.md): exact single-query search at
#: 100k x 512 is ~10-20 ms and a batch of 1,000 ~1 s on 2 cores; at 1M it is 10x that, where IVF is
#: >10x faster at recall@10 >= 0.99.
DEFAULT_EXACT_MAX = 100_000
DEFAULT_MIN_RECALL = 0.99
RECALL_K = 10
RECALL_MARGIN = 0.003
#: Queries used to measure recall at build time (a sample of the indexed vectors).
DEFAULT_EVAL_QUERIES = 1000
#: k-means training points per list (faiss warns below 39).
TRAIN_PER_LIST = 50
#: Indexes whose file is at least this large are opened memory-mapped by `read_index(mmap=None)`.
MMAP_MIN_BYTES = 256 * 2**20


_TUNED = False


def _faiss():
    global _TUNED
    import faiss

    if not _TUNED:
        # Exact batch search (>= 20 queries) is a BLAS product in blocks of query_bs x database_bs
        # scores. faiss's default database block (1024 rows) makes many small sgemm calls; 32768
        # rows was 2-3x faster for 1,000 queries x 200k (docs/BENCHMARKS.md), with a temporary
        # block of at most 1024 x 32768 floats (128 MB).
        faiss.cvar.distance_compute_blas_query_bs = 1024
        faiss.cvar.distance_compute_blas_database_bs = 32768
        # Recent faiss (1.15 here) compares queries x dim with this threshold (default 128000; older
        # versions compared queries with 20), so classic's 279-dim batches took the non-BLAS kernel
        # below 459 queries: 1.7 vs 0.3 ms per query for 64-400 queries x 100k (docs/BENCHMARKS.md).
        # BLAS from ~20 queries at any dimension, as before.
        if faiss.cvar.distance_compute_blas_threshold > 1000:
            faiss.cvar.distance_compute_blas_threshold = 20 * 256
        _TUNED = True
    return faiss


def _as_f32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    return vectors


def _as_ids(ids: Any, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != n:
        raise ValueError(f"{ids.shape[0]} ids for {n} vectors")
    return ids


def default_nlist(n: int) -> int:
    """Inverted lists for n vectors: ~sqrt(n) (1M -> 1024), at least 16, and >= 39 points per list."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(16, min(nlist, n // 39, 65536)))


def exact_index(dim: int) -> faiss.Index:
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def recall_at_k(
    approx_ids: np.ndarray, exact_ids: np.ndarray, approx_d=None, exact_d=None, per_query: bool = False
):
    """Mean fraction of the exact top-k found in the approximate top-k.

    With scores given, an approximate hit whose score ties the exact k-th score counts as found, so
    duplicate vectors (which tie) do not read as misses.
    """
    k = exact_ids.shape[1]
    found = 0
    rows = []
    for i in range(exact_ids.shape[0]):
        truth = set(exact_ids[i][exact_ids[i] >= 0].tolist())
        if not truth:
            rows.append(1.0)
            continue
        hits = len(truth.intersection(approx_ids[i].tolist()))
        if exact_d is not None and approx_d is not None and hits < len(truth):
            kth = exact_d[i][min(len(truth), k) - 1]
            extra = [
                j
                for j, s in zip(approx_ids[i], approx_d[i], strict=True)
                if j >= 0 and j not in truth and s >= kth - 1e-5
            ]
            hits = min(len(truth), hits + len(extra))
        found += hits / len(truth)
        rows.append(hits / len(truth))
    if per_query:
        return np.asarray(rows, dtype=np.float64)
    return found / max(1, exact_ids.shape[0])


def _drop_self(d: np.ndarray, i: np.ndarray, self_ids: np.ndarray, k: int):
    """Remove each row's own id from a (k+1)-wide answer, keeping k columns."""
    keep = i != self_ids[:, None]
    # Rows where the query itself was not returned (possible with ties or approximate search): drop
    # the last column instead.
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    return d[keep].reshape(len(d), k), i[keep].reshape(len(i), k)


def _ivf(index: faiss.Index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except Exception:
        return None


def build(
    vectors: np.ndarray,
    ids: Any,
    *,
    exact_max: int | None = None,
    min_recall: float = DEFAULT_MIN_RECALL,
    nlist: int | None = None,
    eval_queries: int = DEFAULT_EVAL_QUERIES,
    seed: int = 0,
) -> tuple[faiss.Index, dict]:
    """Build the index for `vectors` (n x d, rows of norm <= 1) with int64 `ids`.

    Returns (index, info); `info` is JSON-serialisable: kind ("exact" / "ivf-flat"), ntotal, dim,
    params (nlist, nprobe), recall_at_10 measured against exact search (1.0 for exact), and
    build_seconds.
    """
    faiss = _faiss()
    t0 = time.perf_counter()
    exact_max = DEFAULT_EXACT_MAX if exact_max is None else exact_max
    vectors = _as_f32(vectors)
    n, d = vectors.shape
    ids = _as_ids(ids, n)
    if n <= exact_max or n < 2 * 39 * 16:
        index = exact_index(d)
        if n:
            index.add_with_ids(vectors, ids)
        return index, _info(index, recall=1.0, seconds=time.perf_counter() - t0)

    rng = np.random.default_rng(seed)
    nlist = nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.cp.niter = 20
    n_train = min(n, nlist * TRAIN_PER_LIST)
    train = vectors if n_train == n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
    ivf.train(train)
    del train
    ivf.add_with_ids(vectors, ids)

    # Measure recall@10 against exact search, leave-one-out: a sample of the indexed vectors are the
    # queries, and each query's own entry is dropped from both answers, so the sample behaves like
    # unseen frames of the same shots. nprobe doubles until the recall, less two standard errors
    # (over queries) and RECALL_MARGIN, is >= min_recall: the sample estimate must hold for new
    # queries too (a bench run measured 0.9923 on the sample but 0.9893 on held-out queries).
    q_rows = np.sort(rng.choice(n, min(eval_queries, n), replace=False))
    queries = vectors[q_rows]
    k = min(RECALL_K, n - 1)
    exact_d, exact_rows = faiss.knn(queries, vectors, k + 1, faiss.METRIC_INNER_PRODUCT)
    exact_d, exact_ids = _drop_self(exact_d, ids[exact_rows], ids[q_rows], k)
    nprobe, recall = 1, 0.0
    while nprobe <= max(1, nlist // 4):
        ivf.nprobe = nprobe
        approx_d, approx_ids = ivf.search(queries, k + 1)
        approx_d, approx_ids = _drop_self(approx_d, approx_ids, ids[q_rows], k)
        per_query = recall_at_k(approx_ids, exact_ids, approx_d, exact_d, per_query=True)
        recall = float(per_query.mean())
        stderr = float(per_query.std()) / math.sqrt(len(per_query))
        if recall - 2 * stderr - RECALL_MARGIN >= min_recall:
            return ivf, _info(ivf, recall=recall, seconds=time.perf_counter() - t0)
        nprobe *= 2
    # IVF cannot reach the recall target without scanning most of the lists: exact is as fast.
    index = exact_index(d)
    index.add_with_ids(vectors, ids)
    info = _info(index, recall=1.0, seconds=time.perf_counter() - t0)
    info["note"] = f"ivf recall@10 {recall:.4f} < {min_recall} at nprobe {nprobe // 2}; fell back to exact"
    info["fallback_at"] = n
    return index, info


def _info(index: faiss.Index, *, recall: float, seconds: float | None = None) -> dict:
    ivf = _ivf(index)
    info: dict[str, Any] = {
        "kind": ivf_kind(index),
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
        "metric": "inner_product",
        "params": {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)} if ivf is not None else {},
        f"recall_at_{RECALL_K}": round(float(recall), 4),
    }
    if seconds is not None:
        info["build_seconds"] = round(seconds, 3)
    return info


def describe(index: faiss.Index) -> dict:
    """Kind and parameters of an opened index (recall is only known from the build-time info)."""
    info = _info(index, recall=1.0)
    if info["kind"] != "exact":
        info.pop(f"recall_at_{RECALL_K}")
    return info


#: Below this many queries an exact search is one BLAS matrix-vector product over a zero-copy view
#: of the stored vectors (all cores), instead of faiss's per-query scan, which runs on one thread:
#: measured 82 ms vs 216 ms per query at 1M x 512 on 2 cores. From 20 queries up faiss uses BLAS too.
GEMV_MAX_QUERIES = 20
#: From this many queries an IVF-Flat batch is searched list by list (see _ivf_grouped_search).
GROUPED_MIN_QUERIES = 64
UNALIGNED_BLOCK = 8192


def _flat_view(index: faiss.Index) -> tuple[np.ndarray, np.ndarray] | None:
    """(vectors, ids) as zero-copy numpy views of an exact IndexIDMap2(IndexFlatIP), else None."""
    faiss = _faiss()
    if not isinstance(index, faiss.IndexIDMap2) or index.ntotal == 0:
        return None
    flat = faiss.downcast_index(index.index)
    if not isinstance(flat, faiss.IndexFlatIP):
        return None
    n, d = int(flat.ntotal), int(flat.d)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)
    return vectors, ids


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    only_ids: np.ndarray | None = None,
    exclude_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq x k), best first; missing neighbours have id -1 and score -inf.

    `only_ids` / `exclude_ids` restrict the search (calibration's leave-one-out); on IVF, a search
    restricted to a few ids probes 4x the lists, where those few may sit.
    """
    faiss = _faiss()
    queries = _as_f32(queries)
    k = int(max(1, k))
    nq = len(queries)
    if index.ntotal == 0 or nq == 0:
        return (np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64))
    sel, widen = None, 1
    if only_ids is not None:
        allowed = np.ascontiguousarray(only_ids, dtype=np.int64)
        sel, widen = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed)), 4
    elif exclude_ids is not None and len(exclude_ids):
        excluded = np.ascontiguousarray(exclude_ids, dtype=np.int64)
        inner = faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded))
        sel = faiss.IDSelectorNot(inner)  # `inner` and `excluded` stay alive in this frame: sel uses them
    if sel is not None:
        ivf = _ivf(index)
        if ivf is None:
            return index.search(queries, k, params=faiss.SearchParameters(sel=sel))
        nprobe = min(int(ivf.nlist), int(ivf.nprobe) * max(1, int(widen)))
        return index.search(queries, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
    if nq >= GROUPED_MIN_QUERIES:
        if isinstance(index, faiss.IndexIVFFlat):
            return _ivf_grouped_search(index, queries, k)
    view = _flat_view(index) if nq < GEMV_MAX_QUERIES else None
    if view is None:
        return index.search(queries, k)
    vectors, ids = view
    n = len(vectors)
    if vectors.flags.aligned:
        scores = queries @ vectors.T  # (nq, n), multi-threaded BLAS
    else:
        # A memory-mapped file can place the vectors at an offset that is not a multiple of 4:
        # numpy would copy all of them (2 GB at 1M) before BLAS. Copy block by block into a small
        # buffer that stays in cache instead.
        scores = np.empty((nq, n), np.float32)
        buf = np.empty((min(n, UNALIGNED_BLOCK), vectors.shape[1]), np.float32)
        raw, raw_buf = vectors.view(np.uint8), buf.view(np.uint8)  # byte copies: memcpy speed
        for a in range(0, n, UNALIGNED_BLOCK):
            b = min(n, a + UNALIGNED_BLOCK)
            np.copyto(raw_buf[: b - a], raw[a:b])
            scores[:, a:b] = queries @ buf[: b - a].T
    kk = min(k, n)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (nq, 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    out_d = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    out_d[:, :kk] = np.take_along_axis(top_scores, order, axis=1)
    out_i[:, :kk] = ids[np.take_along_axis(top, order, axis=1)]
    return out_d, out_i


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Copies of every stored (vector, id), for rebuilding an index of another kind."""
    faiss = _faiss()
    view = _flat_view(index)
    if view is not None:
        return view[0].copy(), view[1].copy()
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32), np.zeros(0, np.int64)
    ivf = _ivf(index)
    if ivf is None:
        raise TypeError(f"cannot read vectors back from a {type(index).__name__}")
    invlists, d = ivf.invlists, int(ivf.d)
    vectors = np.empty((int(ivf.ntotal), d), np.float32)
    ids = np.empty(int(ivf.ntotal), np.int64)
    at = 0
    for lst in range(int(ivf.nlist)):
        size = int(invlists.list_size(lst))
        if not size:
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * d * 4)
        vectors[at : at + size] = np.frombuffer(codes, dtype=np.float32).reshape(size, d)
        ids[at : at + size] = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        at += size
    return vectors[:at], ids[:at]


def reconstruct(index: faiss.Index, ids: Any) -> np.ndarray:
    """Stored vectors for the given ids (exact: by id map; IVF: via a hash-table direct map)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ivf = _ivf(index)
    if ivf is not None and ivf.direct_map.type == 0:  # NoMap
        ivf.set_direct_map_type(_faiss().DirectMap.Hashtable)
    out = np.empty((len(ids), index.d), np.float32)
    for row, i in enumerate(ids):
        out[row] = index.reconstruct(int(i))
    return out


_BLAS_LOCAL = None


def _blas_threads_local(n: int) -> int | None:
    """Set numpy's OpenBLAS thread count for the calling thread only (OpenBLAS >= 0.3.27); returns
    the previous count, or None where unavailable. Many small products are faster single-threaded:
    OpenBLAS wakes and syncs its threads per call, which costs more than the product itself, and
    much more on a busy machine (measured 0.27 s vs 2.3 s for the grouped IVF search below)."""
    global _BLAS_LOCAL
    if _BLAS_LOCAL is None:
        _BLAS_LOCAL = False
        try:
            import ctypes
            import glob

            libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
            for path in glob.glob(libs):
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                    _BLAS_LOCAL = fn
                    break
        except Exception:
            _BLAS_LOCAL = False
    return int(_BLAS_LOCAL(int(n))) if _BLAS_LOCAL else None


def _scan_lists(invlists, queries, k, d, lists, owners, starts, ends, cand_s, cand_i) -> None:
    faiss = _faiss()
    fill = np.zeros(len(queries), np.int64)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        lst = int(lists[a])
        size = int(invlists.list_size(lst))
        if size == 0:
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * d * 4).view(np.float32).reshape(size, d)
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        qs = owners[a:b]
        scores = queries[qs] @ codes.T  # (len(qs), size)
        kk = min(k, size)
        top = (
            np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            if kk < size
            else np.tile(np.arange(size), (len(qs), 1))
        )
        cols = fill[qs][:, None] + np.arange(kk)
        cand_s[qs[:, None], cols] = np.take_along_axis(scores, top, axis=1)
        cand_i[qs[:, None], cols] = ids[top]
        fill[qs] += kk


def _ivf_grouped_search(ivf: faiss.IndexIVF, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch IVF-Flat search list by list: the same answers as `ivf.search` (same lists probed,
    exact scores within them), but each probed list is read once for all the queries that probe it,
    as one BLAS product, instead of once per query. faiss scans per query, so a batch re-reads each
    list ~nq*nprobe/nlist times from memory: 2.2 s for 1,000 queries at 1M x 512, nprobe 8/1024."""
    nq, d = queries.shape
    nprobe = int(min(ivf.nprobe, ivf.nlist))
    _, probed = ivf.quantizer.search(queries, nprobe)
    lists = probed.ravel()
    owners = np.repeat(np.arange(nq), nprobe)
    keep = lists >= 0
    lists, owners = lists[keep], owners[keep]
    order = np.argsort(lists, kind="stable")
    lists, owners = lists[order], owners[order]
    cuts = np.flatnonzero(np.diff(lists)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(lists)]
    width = nprobe * k
    cand_s = np.full((nq, width), -np.inf, np.float32)
    cand_i = np.full((nq, width), -1, np.int64)
    invlists = ivf.invlists
    previous = _blas_threads_local(1)
    try:
        _scan_lists(invlists, queries, k, d, lists, owners, starts, ends, cand_s, cand_i)
    finally:
        if previous is not None:
            _blas_threads_local(previous)
    kk = min(k, width)
    top = (
        np.argpartition(-cand_s, kk - 1, axis=1)[:, :kk] if kk < width else np.tile(np.arange(width), (nq, 1))
    )
    top_s = np.take_along_axis(cand_s, top, axis=1)
    order = np.argsort(-top_s, axis=1, kind="stable")
    out_d = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    out_d[:, :kk] = np.take_along_axis(top_s, order, axis=1)
    out_i[:, :kk] = np.take_along_axis(np.take_along_axis(cand_i, top, axis=1), order, axis=1)
    out_i[~np.isfinite(out_d)] = -1
    return out_d, out_i


def add(index: faiss.Index, vectors: np.ndarray, ids: Any) -> None:
    """Add vectors to an index opened writable (not memory-mapped). IVF assigns them to trained lists."""
    vectors = _as_f32(vectors)
    if len(vectors):
        index.add_with_ids(vectors, _as_ids(ids, len(vectors)))


def remove(index: faiss.Index, ids: Any) -> int:
    """Remove ids; returns how many vectors were removed."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if not len(ids):
        return 0
    return int(index.remove_ids(_faiss().IDSelectorBatch(ids)))


def should_rebuild(index: faiss.Index, info: dict | None, *, exact_max: int | None = None) -> bool:
    """Whether the index kind no longer fits its size (the store rebuilds with `build` on save).

    Exact grown past `exact_max` -> rebuild (if a build fell back to exact at `info["fallback_at"]`
    vectors, only once the index has doubled since). IVF whose size changed 4x since it was trained
    (its lists no longer fit the data) or that shrank below `exact_max / 2` -> rebuild.
    """
    exact_max = DEFAULT_EXACT_MAX if exact_max is None else exact_max
    n = int(index.ntotal)
    info = info or {}
    if _ivf(index) is None:
        if n <= exact_max:
            return False
        return n >= 2 * int(info.get("fallback_at") or 0)
    if ivf_kind(index) == "ivf-pq":
        return False  # its codes cannot give the vectors back: rebuilt from the sources or shards
    built = int(info.get("ntotal") or 0)
    return n > 4 * max(built, 1) or 4 * n < built or n < exact_max // 2


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` to `path` (the caller writes to a temporary name and renames, for atomicity)."""
    _faiss().write_index(index, os.fspath(path))


def read_index(path: str | os.PathLike, *, mmap: bool | None = None) -> faiss.Index:
    """Open an index file. `mmap=None` memory-maps files >= MMAP_MIN_BYTES.

    Memory-mapped indexes are read-only (vectors stay in the page cache, shared and not counted
    twice); open with mmap=False to add or remove.
    """
    faiss = _faiss()
    path = os.fspath(path)
    if mmap is None:
        mmap = Path(path).stat().st_size >= MMAP_MIN_BYTES
    if mmap:
        try:
            return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            try:
                return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                pass
    return faiss.read_index(path)


def set_threads(n: int | None = None) -> None:
    """faiss OpenMP threads (default: all cores)."""
    faiss = _faiss()
    faiss.omp_set_num_threads(int(n or os.cpu_count() or 1))


# ------------------------------------------------------------------------------ building at scale
# An index too large to build in memory is built as faiss contrib/ondisk does: train on a sample,
# add each chunk (shard) of vectors to an empty copy of the trained index written to its own file,
# then merge the inverted lists of those files into one `.ivfdata` file (OnDiskInvertedLists), which
# readers memory-map. Peak memory is the trained index plus one chunk, whatever the total.

#: Bytes an exact index holds per vector besides the floats (its int64 id).
ID_BYTES = 8
#: Bytes of a PQ code per vector dimension: ~d/3 bytes per vector (d/m >= 3 dims per sub-quantizer).
PQ_DIMS_PER_CODE = 3
#: Recall gains below this stop the nprobe search of an IVF-PQ index (its codes bound the recall).
PQ_PLATEAU = 0.005
#: Vectors per chunk when an index in memory is rebuilt through the on-disk path (store.save).
REBUILD_CHUNK = 50_000


#: A size: a number and an optional unit (k, M, G, T; binary multiples).
SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([bBkKmMgGtT])?(?:i?[bB])?")


def parse_bytes(text: str | int | None) -> int | None:
    """'4G', '512M', '1.5G', '300k' or a plain number of bytes -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a size (use e.g. 4G, 512M or a number of bytes)")
    value = float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper())
    if value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value)


def exact_bytes(n: int, d: int) -> int:
    """Memory an exact index of n vectors of d dims holds (floats and ids)."""
    return int(n) * (int(d) * 4 + ID_BYTES)


def pq_subquantizers(d: int) -> int:
    """Sub-quantizers of the IVF-PQ code: the largest divisor m of d with d/m >= PQ_DIMS_PER_CODE
    (279 -> 93 bytes a vector, 128 -> 32, 512 -> 128): a 12-16x smaller index than exact."""
    best = 1
    for m in range(1, d + 1):
        if d % m == 0 and d // m >= PQ_DIMS_PER_CODE:
            best = m
    return best


def choose_kind(n: int, d: int, *, memory_budget: int | None = None, exact_max: int | None = None) -> str:
    """ "exact", "ivf-flat" or "ivf-pq" for n vectors: exact while small, IVF-Flat above `exact_max`,
    IVF-PQ when the uncompressed vectors would not fit `memory_budget` bytes."""
    exact_max = DEFAULT_EXACT_MAX if exact_max is None else exact_max
    if memory_budget is not None and exact_bytes(n, d) > memory_budget and n >= 2 * 39 * 16:
        return "ivf-pq"
    if n <= exact_max or n < 2 * 39 * 16:
        return "exact"
    return "ivf-flat"


def _empty_ivf(kind: str, d: int, nlist: int):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf-pq":
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, pq_subquantizers(d), 8, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.cp.niter = 20
    return ivf


class _StdoutToStderr:
    """faiss's on-disk lists print progress with printf (stdout), where `--json` lines go: send it
    to stderr while they are written (writers only; readers open the lists silently)."""

    def __enter__(self):
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)

    def __exit__(self, *exc):
        os.dup2(self._saved, 1)
        os.close(self._saved)


def is_on_disk(index: faiss.Index) -> bool:
    ivf = _ivf(index)
    return ivf is not None and isinstance(
        _faiss().downcast_InvertedLists(ivf.invlists), _faiss().OnDiskInvertedLists
    )


def on_disk_path(index: faiss.Index) -> str | None:
    """The .ivfdata file an IVF index's lists are mapped from, else None."""
    if not is_on_disk(index):
        return None
    return str(_faiss().downcast_InvertedLists(_ivf(index).invlists).filename)


def ivf_kind(index: faiss.Index) -> str:
    faiss = _faiss()
    ivf = _ivf(index)
    if ivf is None:
        return "exact"
    return "ivf-pq" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ) else "ivf-flat"


def build_from_chunks(
    chunks,
    n: int,
    d: int,
    take,
    ivfdata: str | os.PathLike,
    *,
    memory_budget: int | None = None,
    exact_max: int | None = None,
    min_recall: float = DEFAULT_MIN_RECALL,
    nlist: int | None = None,
    eval_queries: int = DEFAULT_EVAL_QUERIES,
    seed: int = 0,
) -> tuple[faiss.Index, dict]:
    """Build an index over vectors given chunk by chunk, never all in memory at once.

    `chunks()` yields (vectors, ids) chunks in a fixed order (it is called several times: add, and
    exact search for the recall measurement); `take(rows)` returns the vectors at sorted global row
    positions (the training sample and the recall queries). An IVF index gets its lists in the file
    `ivfdata` (OnDiskInvertedLists, memory-mapped); exact indexes are built in memory (they fit the
    budget by definition). Returns (index, info) as `build` does; info["kind"] is the kind chosen,
    info["memory_budget"] the budget it was chosen for, info["on_disk"] whether lists are in `ivfdata`.
    """
    faiss = _faiss()
    t0 = time.perf_counter()
    kind = choose_kind(n, d, memory_budget=memory_budget, exact_max=exact_max)
    if kind == "exact":
        index = exact_index(d)
        for vectors, ids in chunks():
            add(index, vectors, ids)
        info = _info(index, recall=1.0, seconds=time.perf_counter() - t0)
        info["memory_budget"] = memory_budget
        return index, info
    rng = np.random.default_rng(seed)
    nlist = nlist or default_nlist(n)
    ivf = _empty_ivf(kind, d, nlist)
    n_train = min(n, max(nlist * TRAIN_PER_LIST, 256 * 39 if kind == "ivf-pq" else 0))
    ivf.train(_as_f32(take(np.sort(rng.choice(n, n_train, replace=False)))))
    ivfdata = Path(ivfdata)
    parts = []
    try:
        for k, (vectors, ids) in enumerate(chunks()):
            part = faiss.clone_index(ivf)
            add(part, vectors, ids)
            path = ivfdata.with_name(f"{ivfdata.name}.part{k}")
            faiss.write_index(part, os.fspath(path))
            parts.append(path)
            del part
        with _StdoutToStderr():
            _merge_parts(ivf, parts, ivfdata)
    finally:
        for path in parts:
            with contextlib.suppress(OSError):
                path.unlink()
    recall, nprobe, reached = _tune_nprobe(ivf, chunks, take, n, kind, min_recall, eval_queries, rng)
    if not reached and kind == "ivf-flat":
        # as `build`: IVF cannot reach the recall target without scanning most lists, exact is as fast
        del ivf
        with contextlib.suppress(OSError):
            ivfdata.unlink()
        index = exact_index(d)
        for vectors, ids in chunks():
            add(index, vectors, ids)
        info = _info(index, recall=1.0, seconds=time.perf_counter() - t0)
        info["note"] = f"ivf recall@10 {recall:.4f} < {min_recall} at nprobe {nprobe}; fell back to exact"
        info["fallback_at"] = n
        info["memory_budget"] = memory_budget
        return index, info
    ivf.nprobe = nprobe
    info = _info(ivf, recall=recall, seconds=time.perf_counter() - t0)
    info["memory_budget"] = memory_budget
    info["on_disk"] = True
    return ivf, info


def _merge_parts(ivf, parts, ivfdata: Path) -> None:
    """faiss.contrib.ondisk.merge_ondisk, keeping the part files' lists alive only while merging."""
    faiss = _faiss()
    held, lists = [], faiss.InvertedListsPtrVector()
    for path in parts:
        part = faiss.read_index(os.fspath(path), faiss.IO_FLAG_MMAP)
        held.append(part)
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    _merge_lists(ivf, lists, ivfdata)
    del held


def _merge_lists(ivf, lists, ivfdata: Path) -> None:
    faiss = _faiss()
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.fspath(ivfdata))
    ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
    ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()


def _exact_knn_chunked(queries, chunks, k: int):
    """Exact top-k by inner product over vectors given chunk by chunk (bounded memory)."""
    faiss = _faiss()
    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for vectors, ids in chunks():
        kk = min(k, len(vectors))
        dd, rows = faiss.knn(queries, _as_f32(vectors), kk, faiss.METRIC_INNER_PRODUCT)
        ii = np.asarray(ids, np.int64)[rows]
        all_d, all_i = np.hstack([best_d, dd]), np.hstack([best_i, ii])
        order = np.argsort(-all_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(all_d, order, axis=1), np.take_along_axis(all_i, order, axis=1)
    return best_d, best_i


def _tune_nprobe(ivf, chunks, take, n, kind, min_recall, eval_queries, rng) -> tuple[float, int]:
    """Leave-one-out recall@10 against exact search, as `build` measures it; nprobe doubles until
    the recall target holds (IVF-Flat) or, for IVF-PQ, whose codes bound the recall, until it stops
    improving. Returns (recall, nprobe, whether the target was reached)."""
    q_rows = np.sort(rng.choice(n, min(eval_queries, n), replace=False))
    queries = _as_f32(take(q_rows))
    k = min(RECALL_K, n - 1)
    exact_d, exact_all = _exact_knn_chunked(queries, chunks, k + 1)
    # the query's own id: its exact best match (itself, score = its squared norm)
    self_ids = exact_all[:, 0].copy()
    exact_d, exact_ids = _drop_self(exact_d, exact_all, self_ids, k)
    nprobe, best = 1, (0.0, 1)
    while nprobe <= max(1, ivf.nlist // 4):
        ivf.nprobe = nprobe
        approx_d, approx_ids = ivf.search(queries, k + 1)
        approx_d, approx_ids = _drop_self(approx_d, approx_ids, self_ids, k)
        per_query = recall_at_k(approx_ids, exact_ids, approx_d, exact_d, per_query=True)
        recall = float(per_query.mean())
        stderr = float(per_query.std()) / math.sqrt(len(per_query))
        if recall - 2 * stderr - RECALL_MARGIN >= min_recall:
            return recall, nprobe, True
        if kind == "ivf-pq" and recall < best[0] + PQ_PLATEAU and nprobe > 1:
            return (*((recall, nprobe) if recall > best[0] else best), False)
        if recall > best[0]:
            best = (recall, nprobe)
        nprobe *= 2
    return (*best, False)


def chunks_of(index: faiss.Index, size: int = REBUILD_CHUNK):
    """A `chunks()` callable over the vectors of an exact or IVF-Flat index, without copying them
    all: zero-copy slices of an exact index, list by list groups of an IVF-Flat."""
    faiss = _faiss()

    def gen():
        view = _flat_view(index)
        if view is not None:
            for a in range(0, len(view[0]), size):
                yield view[0][a : a + size], view[1][a : a + size]
            return
        ivf = _ivf(index)
        if ivf is None or ivf_kind(index) != "ivf-flat":
            raise TypeError(f"cannot read vectors back from a {type(index).__name__}")
        d, invlists = int(ivf.d), ivf.invlists
        vecs, ids, held = [], [], 0
        for lst in range(int(ivf.nlist)):
            m = int(invlists.list_size(lst))
            if not m:
                continue
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), m * d * 4)
            vecs.append(np.frombuffer(codes, dtype=np.float32).reshape(m, d).copy())
            ids.append(faiss.rev_swig_ptr(invlists.get_ids(lst), m).copy())
            held += m
            if held >= size:
                yield np.concatenate(vecs), np.concatenate(ids)
                vecs, ids, held = [], [], 0
        if vecs:
            yield np.concatenate(vecs), np.concatenate(ids)

    return gen


def take_of(index: faiss.Index, chunks):
    """A `take(rows)` callable: vectors at sorted global positions of `chunks()` order."""

    def take(rows):
        rows = np.asarray(rows, np.int64)
        out, at = [], 0
        for vectors, _ in chunks():
            m = len(vectors)
            sel = rows[(rows >= at) & (rows < at + m)] - at
            if len(sel):
                out.append(np.asarray(vectors[sel], np.float32))
            at += m
        return np.concatenate(out) if out else np.zeros((0, index.d), np.float32)

    return take


def to_memory(index: faiss.Index) -> faiss.Index:
    """An IVF index with on-disk lists given in-memory lists (a copy), so that a writer's add or
    remove never changes a committed `.ivfdata` file; other indexes are returned as they are."""
    if not is_on_disk(index):
        return index
    faiss = _faiss()
    ivf = _ivf(index)
    src = ivf.invlists
    mem = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for lst in range(int(ivf.nlist)):
        m = int(src.list_size(lst))
        if m:
            mem.add_entries(lst, m, src.get_ids(lst), src.get_codes(lst))
    ivf.replace_invlists(mem, True)
    mem.this.disown()
    return index


def write_on_disk(index: faiss.Index, path: str | os.PathLike, ivfdata: str | os.PathLike) -> None:
    """Write an IVF index as `path` (quantizer, parameters) + `ivfdata` (its lists, which readers
    memory-map). An index whose lists are in memory has them moved to the new file (memory freed);
    one whose lists are already in another `.ivfdata` file has them copied there."""
    faiss = _faiss()
    ivf = _ivf(index)
    lists = faiss.InvertedListsPtrVector()
    lists.push_back(ivf.invlists)
    own = ivf.own_invlists
    ivf.own_invlists = False  # replace_invlists must not free the source before the copy is written
    old = ivf.invlists
    with _StdoutToStderr():
        _merge_lists(ivf, lists, Path(ivfdata))
    if own:
        old.this.own(True)
        del old
    faiss.write_index(index, os.fspath(path))


def read_on_disk(path: str | os.PathLike, ivfdata: str | os.PathLike) -> faiss.Index:
    """Open an index written by `write_on_disk`, its lists memory-mapped read-only from `ivfdata`
    (the name is given, not the one recorded in the file: an index directory can move)."""
    faiss = _faiss()
    index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    ivf = _ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise ValueError("not an index with on-disk inverted lists")
    lists.filename = os.fspath(ivfdata)
    lists.read_only = True
    lists.do_mmap()
    return index
