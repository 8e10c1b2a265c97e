"""ReferenceStore on disk: atomic saves, crash recovery, corrupt and mismatched indexes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from matcher import Matcher, MatcherError
from matcher.search.store import Reference, ReferenceStore, StoreError

INFO = {"spec": "classic", "pretrained": None, "fingerprint": "f", "dim": 8}


def _vecs(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _refs(n, title="T"):
    return [Reference(title, f"src{i}.png", None, None) for i in range(n)]


def test_crash_before_manifest_rename_keeps_previous_generation(tmp_path, monkeypatch):
    s = ReferenceStore.create(tmp_path / "i", INFO)
    s.add(_vecs(5), _refs(5))
    s.save()
    s.add(_vecs(3, 1), _refs(3, "U"))

    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        s.save()
    monkeypatch.setattr(os, "replace", real_replace)
    s.close()

    files_after_crash = sorted(p.name for p in (tmp_path / "i").iterdir())
    again = ReferenceStore.open(tmp_path / "i")
    assert again.count == 5
    assert again.titles() == {"T": 5}  # the half-saved rows are not visible
    sims, ids = again.search(_vecs(1), 3)
    assert set(again.references(ids[0])) <= set(range(1, 6))
    again.close()
    # a reader never deletes anything; the next writer clears what the crash left, under the lock
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == files_after_crash
    writer = ReferenceStore.open(tmp_path / "i", writable=True)
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == sorted(
        ["index.lock", "manifest.json", *writer.manifest["files"]]
    )
    writer.close()


def test_search_exclusions(tmp_path):
    s = ReferenceStore.create(tmp_path / "i", INFO)
    v = _vecs(10)
    ids = s.add(v, _refs(10))
    _, got = s.search(v[:1], 1)
    assert got[0, 0] == ids[0]
    _, got = s.search(v[:1], 3, exclude_ids=ids[:1])
    assert ids[0] not in got[0]
    _, got = s.search(v[:1], 3, only_ids=ids[5:7])
    assert set(got[0][got[0] >= 0]) <= set(ids[5:7])


def test_corrupt_manifest_is_a_clear_error(tmp_path, built_index):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(MatcherError, match="corrupt manifest"):
        Matcher.open(copy)


def test_corrupt_vectors_file_is_a_clear_error(tmp_path, built_index):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    vectors = copy / json.loads((copy / "manifest.json").read_text())["vectors"]
    vectors.write_bytes(vectors.read_bytes()[:100])
    with pytest.raises(MatcherError, match=f"{vectors.name}: index file damaged: 100 bytes"):
        Matcher.open(copy)


def test_damaged_probe_file_is_refused_before_anything_runs(tmp_path, built_index, library):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    probes = copy / json.loads((copy / "manifest.json").read_text())["probes"]
    probes.write_bytes(b"not an npz")
    before = sorted(p.name for p in copy.iterdir())
    # every file of the generation is checked when the index is opened, probes included
    with pytest.raises(MatcherError, match=f"{probes.name}: index file damaged"):
        Matcher.open(copy)
    with pytest.raises(MatcherError, match=f"{probes.name}: index file damaged"):
        Matcher.open_or_create(copy).add([library["Night Patrol"][0]], title="Night Patrol")
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing deleted or recreated


def test_fingerprint_mismatch_is_refused(tmp_path, built_index):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["embedder"]["fingerprint"] = "0000000000000000"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    # classic has no weights to pass: the index was built by another version of the descriptor
    with pytest.raises(MatcherError, match="model mismatch: .*another version of classic.*rebuild it"):
        Matcher.open(copy)


def test_future_format_is_refused(tmp_path):
    s = ReferenceStore.create(tmp_path / "i", INFO)
    s.close()
    m = json.loads((tmp_path / "i" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="format 99 is not supported"):
        ReferenceStore.open(tmp_path / "i")


def test_no_pickle_on_disk(built_index):
    for f in built_index.iterdir():
        assert not f.name.endswith((".pkl", ".pickle"))
    with np.load(next(built_index.glob("probes-*.npz")), allow_pickle=False) as z:
        assert set(z.files) == {"vectors", "ref_ids", "titles", "kinds"}
        assert {str(k) for k in z["kinds"]} == {"altered", "sketch"}  # loads without pickle
