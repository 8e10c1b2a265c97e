"""matcher.search.ann: exact below the threshold, IVF above it with measured recall, ids, removal, files."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from matcher.search import ann  # noqa: E402


def clustered(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    """Vectors in tight groups around shared centres, like stills of the same shots."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 40), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_small_set_is_exact_and_ids_round_trip():
    x = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 7 + 1000
    index, info = ann.build(x, ids)
    assert info["kind"] == "exact" and info["ntotal"] == 500 and info["recall_at_10"] == 1.0
    scores, found = ann.search(index, x[[3, 42]], 5)
    assert found[:, 0].tolist() == [ids[3], ids[42]]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_empty_index_searches_to_nothing():
    index, info = ann.build(np.zeros((0, 16), np.float32), [])
    assert info["kind"] == "exact" and info["ntotal"] == 0
    scores, found = ann.search(index, np.ones((2, 16), np.float32), 3)
    assert (found == -1).all() and scores.shape == (2, 3)


def test_above_threshold_is_ivf_with_measured_recall(tmp_path):
    x = clustered(6000)
    ids = np.arange(6000, dtype=np.int64) * 3 + 5
    index, info = ann.build(x, ids, exact_max=1000, eval_queries=300)
    assert info["kind"] == "ivf-flat"
    assert info["recall_at_10"] >= 0.99
    assert info["params"]["nlist"] >= 16 and info["params"]["nprobe"] >= 1

    # Held-out queries of the same shots: recall against exact search holds.
    rng = np.random.default_rng(1)
    q = x[rng.choice(6000, 200, replace=False)] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact, _ = ann.build(x, ids)
    de, ie = ann.search(exact, q, 10)
    da, ia = ann.search(index, q, 10)
    assert ann.recall_at_k(ia, ie, da, de) >= 0.98
    assert set(np.unique(ia)) <= set(ids.tolist())

    # Remove and add: approximate indexes must support both.
    removed = ann.remove(index, ids[:100])
    assert removed == 100 and index.ntotal == 5900
    _, found = ann.search(index, x[:5], 10)
    assert not set(found.ravel().tolist()) & set(ids[:100].tolist())
    ann.add(index, x[:100], ids[:100])
    assert index.ntotal == 6000
    _, found = ann.search(index, x[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()

    # Files: plain and memory-mapped reads give the same answers and the same description.
    path = tmp_path / "index.faiss"
    ann.write_index(index, path)
    for mmap in (False, True):
        opened = ann.read_index(path, mmap=mmap)
        assert ann.describe(opened)["kind"] == "ivf-flat"
        assert ann.describe(opened)["params"] == ann.describe(index)["params"]
        assert np.array_equal(ann.search(opened, q[:20], 10)[1], ann.search(index, q[:20], 10)[1])


def test_recall_unreachable_falls_back_to_exact():
    # Uniform noise in 64-d has no cluster structure: IVF needs most lists to reach 0.99.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, info = ann.build(x, np.arange(4000), exact_max=100, eval_queries=200, min_recall=0.999)
    assert info["kind"] == "exact" and "fell back" in info["note"]
    assert index.ntotal == 4000


def test_exact_index_remove_and_mmap(tmp_path):
    x = clustered(300)
    ids = np.arange(300, dtype=np.int64) + 10
    index, _ = ann.build(x, ids)
    assert ann.remove(index, [10, 11, 999]) == 2
    _, found = ann.search(index, x[:1], 3)
    assert 10 not in found[0].tolist()
    path = tmp_path / "exact.faiss"
    ann.write_index(index, path)
    opened = ann.read_index(path, mmap=True)
    assert opened.ntotal == 298
    assert np.array_equal(ann.search(opened, x[5:8], 4)[1], ann.search(index, x[5:8], 4)[1])


def test_recall_counts_ties_as_hits():
    exact_ids = np.array([[1, 2, 3]])
    exact_d = np.array([[0.9, 0.8, 0.7]], np.float32)
    approx_ids = np.array([[1, 2, 4]])  # 4 ties 3's score: a duplicate, not a miss
    approx_d = np.array([[0.9, 0.8, 0.7]], np.float32)
    assert ann.recall_at_k(approx_ids, exact_ids, approx_d, exact_d) == 1.0
    assert ann.recall_at_k(approx_ids, exact_ids) == pytest.approx(2 / 3)


def test_exact_gemv_path_matches_faiss():
    x = clustered(2000)
    ids = np.arange(2000, dtype=np.int64) * 5 + 3
    index, _ = ann.build(x, ids)
    q = clustered(30, seed=9)
    d_fast, i_fast = ann.search(index, q[:5], 7)  # few queries: BLAS path over the raw vectors
    d_ref, i_ref = index.search(q[:5], 7)
    assert np.array_equal(i_fast, i_ref) and np.allclose(d_fast, d_ref, atol=1e-5)
    d_big, i_big = ann.search(index, x[:3], 5000)  # k > n pads with -1
    assert (i_big[:, 2000:] == -1).all() and sorted(i_big[0, :2000].tolist()) == sorted(ids.tolist())


def test_all_vectors_reconstruct_and_selectors():
    x = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 2 + 1
    for exact_max in (10_000, 500):
        index, info = ann.build(x, ids, exact_max=exact_max, eval_queries=200)
        vecs, got = ann.all_vectors(index)
        order = np.argsort(got)
        assert np.array_equal(got[order], ids) and np.allclose(vecs[order], x)
        assert np.allclose(ann.reconstruct(index, ids[[5, 7]]), x[[5, 7]])
        allowed = ids[:50]
        _, found = ann.search(index, x[:3], 5, only_ids=allowed)
        assert set(found[found >= 0].tolist()) <= set(allowed.tolist()) and found[0, 0] == ids[0]
        _, found = ann.search(index, x[:3], 5, exclude_ids=ids[:1])
        assert ids[0] not in found and found[0, 0] != ids[0]


def test_store_switches_to_ivf_with_lists_on_disk(tmp_path, monkeypatch):
    from matcher.search.store import Reference, ReferenceStore

    monkeypatch.setattr(ann, "DEFAULT_EXACT_MAX", 1000)
    x = clustered(3000)
    store = ReferenceStore.create(
        tmp_path / "idx", {"spec": "t", "pretrained": None, "fingerprint": "f", "dim": 64}
    )
    refs = [Reference(title="A" if i % 2 else "B", source=f"s{i}") for i in range(3000)]
    ids = store.add(x, refs)
    store.save()
    info = store.manifest["search"]
    assert info["kind"] == "ivf-flat" and info["recall_at_10"] >= 0.99
    store.close()

    # the IVF lists are a generation file of their own, memory-mapped read-only (format 3)
    m = store.manifest
    assert (
        m["format_version"] == 3 and m["ivfdata"] == "vectors-2.ivfdata" and "vectors-2.ivfdata" in m["files"]
    )
    store = ReferenceStore.open(tmp_path / "idx")
    assert (
        ann.on_disk_path(store.index) == str(tmp_path / "idx" / "vectors-2.ivfdata") and store.count == 3000
    )
    _, found = store.search(x[:4], 3)
    assert found[:, 0].tolist() == ids[:4].tolist()
    _, only = store.search(x[:2], 3, only_ids=store.ids_of_title("A"))
    assert set(only[only >= 0].tolist()) <= set(store.ids_of_title("A").tolist())
    assert store.remove_title("B") == 1500 and not ann.is_on_disk(store.index)  # a copy in memory
    store.save()
    store.close()
    store = ReferenceStore.open(tmp_path / "idx")
    assert store.count == 1500 and store.manifest["search"]["kind"] == "ivf-flat"
    assert np.allclose(store.vectors(ids[1:2]), x[1:2])
    store.close()


def test_unaligned_mmapped_exact_search_matches(tmp_path, monkeypatch):
    x = clustered(5000)
    index, _ = ann.build(x, np.arange(5000))
    path = tmp_path / "e.faiss"
    ann.write_index(index, path)
    opened = ann.read_index(path, mmap=True)
    monkeypatch.setattr(ann, "UNALIGNED_BLOCK", 700)
    vectors, _ = ann._flat_view(opened)
    d1, i1 = ann.search(opened, x[:3], 5)
    d2, i2 = index.search(x[:3], 5)
    assert np.array_equal(i1, i2) and np.allclose(d1, d2, atol=1e-5)
    if not vectors.flags.aligned:  # faiss's file layout puts the codes at an odd offset
        assert vectors.ctypes.data % 4 != 0


def test_grouped_ivf_batch_search_matches_faiss():
    x = clustered(8000)
    ids = np.arange(8000, dtype=np.int64) + 100
    index, info = ann.build(x, ids, exact_max=1000, eval_queries=200)
    assert info["kind"] == "ivf-flat"
    q = clustered(200, seed=3)
    d_ref, i_ref = index.search(q, 10)
    d, i = ann.search(index, q, 10)  # >= GROUPED_MIN_QUERIES: list-by-list path
    assert (i == i_ref).mean() > 0.999 and np.allclose(d, d_ref, atol=1e-5)
