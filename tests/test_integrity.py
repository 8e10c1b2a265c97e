"""The index cannot be silently corrupted: one writer at a time, readers that never write, every
file checked against the sha256 its manifest recorded, and damage reported as one line + exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_frame
from typer.testing import CliRunner

from matcher import Matcher
from matcher.cli import app
from matcher.search.store import ReferenceStore

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def snapshot(root: Path) -> dict:
    """Every file of a directory with its content hash: what 'nothing changed' means."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


def one_line_error(res) -> str:
    """The run failed with exit 2 and exactly one line on stderr, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matcher: error: "), res.stderr
    assert "Traceback" not in res.output + res.stderr
    return lines[0]


@pytest.fixture()
def index_copy(tmp_path, built_index):
    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    return copy


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


# ------------------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("field", ["vectors", "probes", "metadata"])
def test_a_flipped_byte_in_any_index_file_is_one_line_and_exit_2(index_copy, library, field):
    name = manifest_of(index_copy)[field]
    path = index_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle: the file still parses
    path.write_bytes(bytes(data))
    before = snapshot(index_copy)
    for args in (("match", library["Night Patrol"][0]), ("index", "info")):
        line = one_line_error(run(*args, "--index", index_copy))
        assert f"{name}: index file damaged" in line
    assert snapshot(index_copy) == before  # nothing deleted, repaired or recreated


def test_a_flipped_sha256_column_in_the_metadata_is_refused(index_copy, library):
    name = manifest_of(index_copy)["metadata"]
    path = index_copy / name
    data = bytearray(path.read_bytes())
    digest = ReferenceStore.open(index_copy).references([1])[1].sha256.encode()
    at = bytes(data).index(digest)
    data[at] = 0xFF  # a reference's sha256 no longer text
    path.write_bytes(bytes(data))
    line = one_line_error(run("match", library["Night Patrol"][0], "--index", index_copy))
    assert f"{name}: index file damaged" in line


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_missing_or_empty_metadata_file_is_refused_not_recreated(index_copy, library, damage):
    path = index_copy / manifest_of(index_copy)["metadata"]
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")
    before = snapshot(index_copy)
    line = one_line_error(run("match", library["Night Patrol"][0], "--index", index_copy))
    assert path.name in line and ("missing index file" in line or "damaged" in line)
    line = one_line_error(
        run("index", "add", "--index", index_copy, "--title", "X", library["Ice Kingdom"][0])
    )
    assert path.name in line
    assert snapshot(index_copy) == before


def test_add_after_the_manifest_was_deleted_does_not_wipe_the_index(index_copy, library):
    (index_copy / "manifest.json").unlink()
    before = snapshot(index_copy)
    line = one_line_error(
        run("index", "add", "--index", index_copy, "--title", "X", library["Ice Kingdom"][0])
    )
    assert "no manifest.json" in line and "refusing to overwrite" in line
    assert snapshot(index_copy) == before


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m.update(generation=m["generation"] - 1), "'vectors' must be"),
        (lambda m: m.update(generation=-1), "'generation' must be an integer >= 1"),
        (lambda m: m.update(generation="4"), "'generation' must be an integer >= 1"),
        (lambda m: m.update(vectors=None), "'vectors' must be"),
        (lambda m: m.update(dim="727"), "'dim' must be a positive integer"),
        (lambda m: m.pop("embedder"), "'embedder' must be an object"),
        (lambda m: m.update(calibration=[1, 2]), "'calibration' must be an object or null"),
        (lambda m: m.update(threshold="0.5"), "'threshold' must be a number"),
        (lambda m: m["files"].popitem(), "'files' does not list the files"),
    ],
    ids=[
        "generation-down",
        "generation-minus-1",
        "generation-string",
        "vectors-null",
        "dim-string",
        "no-embedder",
        "calibration-list",
        "threshold-string",
        "file-missing-from-list",
    ],
)
def test_an_edited_manifest_is_one_line_and_nothing_is_deleted(index_copy, library, edit, words):
    manifest = manifest_of(index_copy)
    edit(manifest)
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(index_copy)
    for args in (("index", "info"), ("match", library["Night Patrol"][0])):
        line = one_line_error(run(*args, "--index", index_copy))
        assert "damaged manifest" in line and words in line, line
    assert snapshot(index_copy) == before


def test_a_damaged_calibration_inside_the_manifest_is_one_line(index_copy, library):
    manifest = manifest_of(index_copy)
    manifest["calibration"]["weights"] = "ab"  # three numbers expected
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run("match", library["Night Patrol"][0], "--index", index_copy))
    assert "calibration" in line


def test_verification_is_memoised_by_file_identity_but_not_fooled_by_a_restored_mtime(index_copy):
    """A second open reads no index file (the hash cache knows it); editing a file and setting its
    mtime back still changes its ctime, so it is hashed and caught."""
    res = run("index", "info", "--index", index_copy)
    assert res.exit_code == 0 and "verified   4 files against the sha256 in the manifest" in res.output
    cache = json.loads(Path(os.environ["MATCHER_HASH_CACHE"]).read_text())
    vectors = index_copy / manifest_of(index_copy)["vectors"]
    assert any(key.startswith(os.path.realpath(vectors) + "|") for key in cache)
    st = vectors.stat()
    data = bytearray(vectors.read_bytes())
    data[-5] ^= 0x01
    vectors.write_bytes(bytes(data))
    os.utime(vectors, ns=(st.st_atime_ns, st.st_mtime_ns))
    line = one_line_error(run("index", "info", "--index", index_copy))
    assert "index file damaged" in line


# ------------------------------------------------------------------------------------- concurrency
def test_a_reader_during_a_write_changes_nothing_and_sees_the_committed_generation(index_copy, library):
    writer = Matcher.open(index_copy)
    before = writer.info()
    with writer.store.writing():
        # an add in progress: vectors and rows exist, the new generation is not committed yet
        writer.store.add(writer.embedder.embed([_image(library["Ice Kingdom"][0])] * 5), _refs(5))
        res = run("index", "info", "--index", index_copy, "--json")  # a reader, meanwhile
        assert res.exit_code == 0, res.output
        seen = json.loads(res.output)
        assert seen["titles"] == before["titles"] and seen["generation"] == before["generation"]
        res = run("match", library["Night Patrol"][0], "--index", index_copy)
        assert res.exit_code == 0 and "Night Patrol" in res.output
        writer.recalibrate()
    writer.close()
    after = ReferenceStore.open(index_copy)
    assert after.titles() == {**before["titles"], "Reader Test": 5}  # the add survived the readers
    ids = after.ids_of_title("Reader Test")
    assert len(after.references(ids)) == 5 and after.count == before["references"] + 5


def _image(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _refs(n):
    from matcher.search.store import Reference

    return [Reference("Reader Test", f"reader{i}.png") for i in range(n)]


def test_a_second_writer_is_refused_with_one_line_or_waits_for_the_first(index_copy, library):
    # another process in the middle of a change holds the writer lock for 3 s
    hold = (
        "import sys, time; from matcher.search.store import ReferenceStore; "
        "s = ReferenceStore.open(sys.argv[1], writable=True); print('held', flush=True); time.sleep(3)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(index_copy)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = index_copy.parent / "second.png"
        draw_frame("Ice Kingdom", 999).save(second)  # new: a known still under a 2nd title is refused
        args = ("index", "add", "--index", index_copy, "--title", "Second", second)
        line = one_line_error(run(*args, env={"MATCHER_LOCK_TIMEOUT": "0"}))
        assert "another matcher is writing to this index" in line
        res = run(*args, env={"MATCHER_LOCK_TIMEOUT": "60"})
        assert res.exit_code == 0, res.output
        assert "waiting up to 60 s" in res.stderr
        assert holder.poll() is not None  # it finished only after the holder let go
    finally:
        holder.kill()
        holder.wait()
    assert ReferenceStore.open(index_copy).titles()["Second"] == 1


def test_two_concurrent_adds_and_a_reader(tmp_path, library):
    """Two `index add` processes started together while a reader keeps opening the index: before
    the lock, the last save won the vectors file (a title with none of its vectors) and a reader's
    recovery deleted an add's rows. Now the second writer waits, both titles are complete, and the
    reader always sees a whole generation."""
    idx = tmp_path / "idx"
    assert (
        run(
            "index", "add", "--index", idx, "--title", "Ice Kingdom", library["Ice Kingdom"][0].parent
        ).exit_code
        == 0
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "matcher.cli", "index", "add", "--index", str(idx), "--title", title]
            + [str(p) for p in library[title]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for title in ("Sunny Farm", "Night Patrol")
    ]
    # a reader, all along: each open sees one committed generation, whole, and changes nothing
    seen = set()
    while any(p.poll() is None for p in procs):
        reader = ReferenceStore.open(idx)
        titles = reader.titles()
        assert reader.count == sum(titles.values()) == len(reader.references(range(1, 200)))
        seen.add(reader.manifest["generation"])
        reader.close()
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    assert len(seen) >= 2  # the reader did overlap the writers' commits
    store = ReferenceStore.open(idx)
    assert store.titles() == {"Ice Kingdom": 12, "Night Patrol": 12, "Sunny Farm": 60}
    assert store.count == 84
    for title in store.titles():
        assert len(store.references(store.ids_of_title(title))) == store.titles()[title]


# ------------------------------------------------------------------------------------- traceback triggers
def test_add_to_a_read_only_index_is_one_line(index_copy, library):
    (index_copy / "index.lock").unlink()
    before = snapshot(index_copy)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(index_copy)], capture_output=True).returncode != 0:
            pytest.skip("root, and this file system cannot make a directory immutable")
    else:
        index_copy.chmod(0o555)
    try:
        res = run("index", "add", "--index", index_copy, "--title", "X", library["Ice Kingdom"][0])
        line = one_line_error(res)
        assert "cannot write" in line
        assert (
            run("match", library["Night Patrol"][0], "--index", index_copy).exit_code == 0
        )  # still readable
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(index_copy)], check=True)
        index_copy.chmod(0o755)
    assert snapshot(index_copy) == before


def test_index_pointing_at_a_regular_file_is_one_line(tmp_path, library):
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("keep me")
    for args in (("index", "add", "--title", "X", library["Ice Kingdom"][0]), ("index", "info")):
        line = one_line_error(run(*args, "--index", not_a_dir))
        assert "notes.txt" in line and "not" in line
    assert not_a_dir.read_text() == "keep me"


def test_a_bad_max_pixels_setting_is_one_line(tmp_path, library):
    p = subprocess.run(
        [sys.executable, "-m", "matcher.cli", "match", str(library["Ice Kingdom"][0])],
        cwd=tmp_path,
        env={**os.environ, "MATCHER_MAX_PIXELS": "abc"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (
        p.stderr.strip()
        == "matcher: error: MATCHER_MAX_PIXELS='abc' is not a positive whole number of pixels"
    )


def test_names_that_are_not_utf8_are_indexed_and_printed_safely(tmp_path, library):
    """`index add` of such a name used to be a traceback (SQLite takes UTF-8 only), and so was a plain
    `match` of it on an ASCII terminal: the name is kept with its bytes as \\xNN, and printed escaped."""
    refs = tmp_path.as_posix().encode() + b"/refs"
    os.makedirs(refs)
    odd = refs + b"/still-\xff\xfe.png"
    shutil.copyfile(library["Ice Kingdom"][0], odd)
    idx = tmp_path / "idx"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    cmd = [sys.executable, "-m", "matcher.cli"]
    p = subprocess.run(
        cmd + ["index", "add", "--index", str(idx), "--title", "Ice Kingdom", os.fsdecode(refs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    assert ReferenceStore.open(idx).references([1])[1].source.endswith("still-\\xff\\xfe.png")
    p = subprocess.run(
        cmd + ["match", "--index", str(idx), os.fsdecode(odd)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    assert b"still-\\xff\\xfe.png\t\tmatched\tIce Kingdom" in p.stdout


def test_a_reader_that_read_the_previous_manifest_follows_the_commit(index_copy, monkeypatch):
    """A commit deletes the previous generation's files; a reader that read the old manifest just
    before (the race, made certain here) finds them gone and loads the new generation instead of
    failing."""
    old_manifest = (index_copy / "manifest.json").read_bytes()
    first = manifest_of(index_copy)["generation"]
    m = Matcher.open(index_copy)
    m.recalibrate(unknown_share=0.3)  # commits generation first + 1 and deletes first's files
    m.close()
    assert not (index_copy / f"vectors-{first}.faiss").exists()
    reader = ReferenceStore(index_copy, {}, None, None, None)
    stale = iter([old_manifest])
    monkeypatch.setattr(
        reader, "_read_manifest", lambda: next(stale, None) or ReferenceStore._read_manifest(reader)
    )
    reader._load()
    assert reader.manifest["generation"] == first + 1 and reader.count == 84
    reader.close()
