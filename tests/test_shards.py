"""Index building at scale (issue 16): shards on disk, an index trained on a sample with its IVF
lists merged on disk, IVF-PQ under a memory budget, and the on-disk lists a verified file of the
generation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matcher.cli import app
from matcher.search import ann, shards
from matcher.search.store import Reference, ReferenceStore

EMBEDDER = {"spec": "synthetic", "pretrained": None, "fingerprint": "synthetic", "dim": 32}


def clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(8, n // 40), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(a: int, b: int) -> list[dict]:
    return [{"title": f"T{i % 7}", "source": f"/refs/{i}.png", "sha256": f"{i:064x}"} for i in range(a, b)]


def write_shards(directory: Path, x: np.ndarray, size: int, order=None) -> None:
    parts = [(k, a) for k, a in enumerate(range(0, len(x), size))]
    for k, a in order(parts) if order else parts:
        v = x[a : a + size]
        rng = shards.shard_rng(f"{k:06d}", v)  # the probes a worker makes for this shard
        rows = np.sort(rng.choice(len(v), 3, replace=False))
        probe = v[rows] + 0.05 * rng.normal(size=(3, x.shape[1])).astype(np.float32)
        shards.write_shard(
            directory,
            k,
            v,
            records(a, a + len(v)),
            {"vectors": probe, "rows": rows, "kinds": ["altered"] * 3},
        )


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sharded_build_equals_an_in_memory_build(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "DEFAULT_EXACT_MAX", 1000)  # IVF at test sizes
    x = clustered(4000)
    write_shards(tmp_path / "sh", x, 1500)
    gen = shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER)

    store = ReferenceStore.open(tmp_path / "idx")
    m = store.manifest
    assert m["generation"] == gen and m["count"] == 4000 and m["search"]["kind"] == "ivf-flat"
    assert m["search"]["recall_at_10"] >= 0.99
    # ids follow shard order: row i of the shards is reference i + 1, with its record
    refs = store.references([1, 1501, 4000])
    assert [(r.id, r.source) for r in refs.values()] == [
        (1, "/refs/0.png"),
        (1501, "/refs/1500.png"),
        (4000, "/refs/3999.png"),
    ]
    assert np.allclose(store.vectors(np.array([1, 4000])), x[[0, 3999]])

    memory, info = ann.build(x, np.arange(1, 4001), exact_max=1000)
    assert (info["kind"], info["params"]["nlist"]) == (m["search"]["kind"], m["search"]["params"]["nlist"])
    q = clustered(200, seed=1)
    _, exact = ann.search(ann.build(x, np.arange(1, 4001))[0], q, 10)
    _, sharded = store.search(q, 10)
    _, in_memory = ann.search(memory, q, 10)
    assert ann.recall_at_k(sharded, exact) >= 0.97 and ann.recall_at_k(in_memory, exact) >= 0.97
    assert ann.recall_at_k(sharded, in_memory) >= 0.95
    store.close()


def test_probes_are_seeded_per_shard_whatever_the_order_shards_were_written(tmp_path):
    x = clustered(3000)
    write_shards(tmp_path / "a", x, 1000)
    write_shards(tmp_path / "b", x, 1000, order=lambda parts: parts[::-1])  # another worker order
    for name in ("a", "b"):
        shards.build_from_shards(tmp_path / name, tmp_path / f"idx-{name}", EMBEDDER)
    a, b = (ReferenceStore.open(tmp_path / f"idx-{n}") for n in ("a", "b"))
    for key in ("vectors", "ref_ids", "titles", "kinds"):
        assert np.array_equal(a.probes[key], b.probes[key])
    assert len(a.probes["ref_ids"]) == 9 and a.files["vectors-2.faiss"] == b.files["vectors-2.faiss"]
    # a shard's seed depends on its id and content, not on who wrote it
    v = x[:1000]
    assert shards.shard_rng("000000", v).integers(1 << 30) == shards.shard_rng("000000", v.copy()).integers(
        1 << 30
    )
    assert shards.shard_rng("000000", v).integers(1 << 30) != shards.shard_rng("000001", v).integers(1 << 30)


def test_a_memory_budget_below_the_exact_size_picks_ivf_pq_and_records_recall(tmp_path):
    x = clustered(6000)
    write_shards(tmp_path / "sh", x, 2000)
    exact_size = ann.exact_bytes(6000, 32)  # 816,000 bytes
    shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER, memory_budget="500K")
    res = run("index", "info", "--index", tmp_path / "idx", "--json")
    assert res.exit_code == 0, res.output
    search = json.loads(res.stdout)["search"]
    assert search["kind"] == "ivf-pq" and search["memory_budget"] == 500 * 1024 < exact_size
    assert 0.5 <= search["recall_at_10"] <= 1.0 and search["params"]["nprobe"] >= 1
    # the compressed index is smaller than the budget; the vectors uncompressed would not be
    files = json.loads((tmp_path / "idx" / "manifest.json").read_text())["files"]
    assert files["vectors-2.ivfdata"]["size"] < 500 * 1024

    # a budget that the exact index fits keeps it exact
    shards.build_from_shards(tmp_path / "sh", tmp_path / "idx2", EMBEDDER, memory_budget="4G")
    assert json.loads((tmp_path / "idx2" / "manifest.json").read_text())["search"]["kind"] == "exact"


def test_store_save_under_a_memory_budget_rebuilds_as_ivf_pq_on_disk(tmp_path):
    x = clustered(3000)
    store = ReferenceStore.create(tmp_path / "idx", EMBEDDER)
    store.add(x, [Reference(title="A", source=f"s{i}") for i in range(3000)])
    store.set_memory_budget(100_000)
    store.save()
    m = store.manifest
    assert m["search"]["kind"] == "ivf-pq" and m["memory_budget"] == 100_000 and "recall_at_10" in m["search"]
    assert m["ivfdata"] in m["files"] and ann.is_on_disk(store.index)
    store.close()
    store = ReferenceStore.open(tmp_path / "idx")
    _, found = store.search(x[:20], 10)
    assert (found[:, :10] == np.arange(1, 21)[:, None]).any(axis=1).mean() >= 0.9  # each finds itself
    store.close()


def test_the_merged_on_disk_index_opens_mapped_verified_and_a_writer_never_changes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "DEFAULT_EXACT_MAX", 1000)
    x = clustered(3000)
    write_shards(tmp_path / "sh", x, 1000)
    shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER)
    root = tmp_path / "idx"
    ivfdata = root / "vectors-2.ivfdata"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["files"][ivfdata.name]["sha256"] == sha(ivfdata)
    store = ReferenceStore.open(root)
    assert ann.on_disk_path(store.index) == str(ivfdata)
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert str(ivfdata) in maps  # the lists are memory-mapped, not read into memory
    store.close()

    keep = tmp_path / "committed.ivfdata"
    os.link(ivfdata, keep)  # the same inode: a change in place would show here
    before = sha(keep)
    store = ReferenceStore.open(root, writable=True)
    store.add(clustered(50, seed=3), [Reference(title="B", source=f"b{i}") for i in range(50)])
    store.save()
    assert sha(keep) == before and store.manifest["generation"] == 3 and store.count == 3050
    store.close()
    assert not ivfdata.exists() and (root / "vectors-3.ivfdata").exists()  # the old generation is purged


def test_a_damaged_ivfdata_file_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "DEFAULT_EXACT_MAX", 1000)
    write_shards(tmp_path / "sh", clustered(3000), 1000)
    shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER)
    path = tmp_path / "idx" / "vectors-2.ivfdata"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    res = run("index", "info", "--index", tmp_path / "idx")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matcher: error: ") and "Traceback" not in res.output
    assert f"{path}: index file damaged" in lines[0]


def test_a_damaged_or_unfinished_shard_is_one_line(tmp_path):
    x = clustered(200)
    write_shards(tmp_path / "sh", x, 100)
    (tmp_path / "sh" / "shard-000001.json").unlink()  # a worker died before committing it
    assert [s.id for s in shards.read_shards(tmp_path / "sh")] == ["000000"]
    npy = tmp_path / "sh" / "shard-000000.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0x01
    npy.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match=r"shard-000000\.npy: shard file damaged"):
        shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER)
    assert not (tmp_path / "idx").exists()


def test_a_bad_memory_budget_is_one_line(tmp_path):
    res = run(
        "index", "add", "--index", tmp_path / "idx", "--title", "A", "--memory-budget", "lots", tmp_path
    )
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "matcher: error: --memory-budget: 'lots' is not a size (use e.g. 4G, 512M or a number of bytes)"
    ]


def test_a_sharded_ivf_that_misses_the_recall_target_falls_back_to_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "DEFAULT_EXACT_MAX", 1000)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)  # no clusters: IVF lists do not help
    write_shards(tmp_path / "sh", x / np.linalg.norm(x, axis=1, keepdims=True), 1000)
    shards.build_from_shards(tmp_path / "sh", tmp_path / "idx", EMBEDDER)
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["search"]["kind"] == "exact" and "fell back to exact" in m["search"]["note"]
    assert m["format_version"] == 2 and m["ivfdata"] is None
    assert sorted(p.name for p in (tmp_path / "idx").glob("vectors-*")) == ["vectors-2.faiss"]
