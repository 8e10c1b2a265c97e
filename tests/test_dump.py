"""`matcher match DUMP --out`: a hostile dump is reported file by file, exactly once, resumably.

A real (tiny) classic index is built from generated cels; nothing is faked below the matcher API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _hostile  # noqa: E402

from matcher.api import Matcher  # noqa: E402
from matcher.run import dump, pool  # noqa: E402
from matcher.write.report import read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world(hostile_world):
    return hostile_world


def run(world, out: Path | None, **kw):
    m = Matcher.open(world["index"])
    try:
        opts = {"every": 1.0, "all_frames": True, "workers": 2, "quiet": True} | kw
        return dump.run_dump(world["dump"], m, out=out, **opts)
    finally:
        m.close()


def file_records(path: Path) -> list[dict]:
    return [r for r in read_records(path) if r.get("record") == "file"]


def test_every_file_reported_once_with_the_right_status(world, tmp_path, monkeypatch):
    # one file vanishes between the walk and its decoding
    real_walk = dump.walk

    def walk_with_ghost(root):
        yield from real_walk(root)
        yield dump.Entry("ghost.png", os.fsencode(str(Path(root) / "ghost.png")), "file")

    monkeypatch.setattr(dump, "walk", walk_with_ghost)
    out = tmp_path / "r.jsonl"
    t0 = time.monotonic()
    stats = run(world, out, csv=tmp_path / "r.csv")
    elapsed = time.monotonic() - t0
    expected = dict(world["expected"], **{"ghost.png": ("error", None)})

    files = file_records(out)
    counts = Counter(r["path"] for r in files)
    assert {p: n for p, n in counts.items() if n != 1} == {}
    assert set(counts) == set(expected)
    got = {r["path"]: (r["status"], r["title"] if r["status"] == "matched" else None) for r in files}
    want = {p: (s, t if s == "matched" else None) for p, (s, t) in expected.items()}
    assert got == want
    by = {r["path"]: r for r in files}
    for r in files:
        assert set(r) >= {"path", "sha256", "size", "status", "reason", "title", "confidence", "candidates"}
        if r["status"] in ("error", "skipped"):
            assert r["reason"] and "\n" not in r["reason"], r
        if r["status"] in ("matched", "unknown"):
            assert len(r["sha256"]) == 64 and r["evidence"], r
    assert "outside the dump" in by["links/outside.png"]["reason"]
    assert "loop" in by["links/loop_a"]["reason"] and "loop" in by["links/parent_loop"]["reason"]
    assert "FIFO" in by["links/pipe.png"]["reason"]
    assert "bomb" in by["bad/bomb.png"]["reason"]
    assert "144 Mpx is over the 80 Mpx limit" in by["bad/bomb_small.gif"]["reason"]
    assert "text" in by["bad/text.png"]["reason"] and ".png" in by["bad/text.png"]["reason"]
    assert "truncated" in by["bad/truncated.jpg"]["reason"]
    assert "0 bytes" in by["bad/empty.png"]["reason"]
    assert "vanished" in by["ghost.png"]["reason"]
    assert "archive" in by["notes/archive.zip"]["reason"]
    # parts: one line per video still (with its timestamp), per GIF frame and per TIFF page
    parts = [r for r in read_records(out) if r.get("record") in ("still", "frame")]
    stills = sorted(r["timestamp"] for r in parts if r["path"] == "video/clip.mp4")
    assert stills == [0.0, 1.0, 2.0]
    assert sorted(r["frame"] for r in parts if r["path"] == "multi/anim.gif") == [0, 1, 2]
    assert sorted(r["frame"] for r in parts if r["path"] == "multi/pages.tiff") == [0, 1, 2]
    assert by["video/clip.mp4"]["stills"] == 3 and "3 of 3 stills" in by["video/clip.mp4"]["reason"]
    assert by["multi/pages.tiff"]["reason"].startswith("2 of 3 frames matched")
    # a run header and a summary closing the report
    recs = list(read_records(out))
    assert recs[0]["record"] == "run" and recs[0]["index_fingerprint"].startswith("sha256:")
    summary = recs[-1]
    assert summary["record"] == "summary"
    assert summary["totals"]["files"] == len(expected)
    assert {t["title"] for t in summary["titles"]} == set(_hostile.TITLES)
    # CSV mirror: one row per file/part line
    import csv

    rows = list(csv.DictReader(open(tmp_path / "r.csv", newline="", encoding="utf-8")))
    assert len(rows) == len(files) + len(parts)
    assert stats.files == len(expected) and elapsed < 20
    print(f"\n{len(expected)} entries in {elapsed:.2f} s ({len(expected) / elapsed:.1f} files/s)")


def test_gif_first_frame_without_all_frames(world, tmp_path):
    out = tmp_path / "r.jsonl"
    run(world, out, all_frames=False)
    gif = next(r for r in file_records(out) if r["path"] == "multi/anim.gif")
    assert gif["status"] == "matched" and "--all-frames" in gif["reason"]
    assert not [r for r in read_records(out) if r.get("record") == "frame" and r["path"] == "multi/anim.gif"]


def test_resume_after_torn_interrupted_run(world, tmp_path):
    full = tmp_path / "full.jsonl"
    run(world, full)
    lines = full.read_bytes().splitlines(keepends=True)
    # keep the first 12 lines (some file lines, maybe a partial video), then half a line
    out = tmp_path / "r.jsonl"
    prefix = b"".join(lines[:12])
    out.write_bytes(prefix + lines[12][: len(lines[12]) // 2])
    before = {r["path"] for r in file_records(out)}
    stats = run(world, out)
    data = out.read_bytes()
    assert data.startswith(prefix)  # nothing already written was lost or rewritten
    counts = Counter(r["path"] for r in file_records(out))
    assert set(counts) == set(world["expected"]) and set(counts.values()) == {1}
    assert stats.resumed == len(before)
    # a third run has nothing left to do
    n_lines = len(out.read_bytes().splitlines())
    stats = run(world, out)
    assert stats.written == 0 and stats.resumed == len(world["expected"])
    new = out.read_bytes().splitlines()[n_lines:]
    assert [json.loads(x)["record"] for x in new] == ["run", "summary"]


def test_killed_run_resumes_without_loss(world, tmp_path):
    """SIGKILL a real run mid-way (matching slowed down), then resume with the same --out."""
    out = tmp_path / "r.jsonl"
    script = textwrap.dedent(
        f"""
        import sys, time
        from matcher.run import dump
        from matcher.api import Matcher
        real = dump._match_images
        def slow(*args):
            time.sleep(0.15)
            return real(*args)
        dump._match_images = slow
        if __name__ == "__main__":
            m = Matcher.open({str(world["index"])!r})
            dump.run_dump({str(world["dump"])!r}, m, out={str(out)!r}, every=1.0, all_frames=True,
                          workers=2, batch_size=1, quiet=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and len(file_records(out)) >= 8:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the run only: its decode workers must die with it
    finally:
        proc.wait(10)
    time.sleep(0.5)
    alive = []
    for pid_dir in Path("/proc").iterdir():
        try:
            fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == proc.pid and fields[0] != "Z":  # same process group, not a zombie
            alive.append(int(pid_dir.name))
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "decode workers outlived their killed parent"
    written = out.read_bytes()
    n_before = len(file_records(out))
    assert 8 <= n_before < len(world["expected"])
    run(world, out)
    assert out.read_bytes().startswith(written.rsplit(b"\n", 1)[0])
    counts = Counter(r["path"] for r in file_records(out))
    assert set(counts) == set(world["expected"]) and set(counts.values()) == {1}
    parts = Counter(
        (r["path"], r.get("timestamp"), r.get("frame"))
        for r in read_records(out)
        if r["record"] != "file" and r["record"] in ("still", "frame")
    )
    assert set(parts.values()) == {1}  # no still/frame written twice across the kill


def _crashy_process(task, lim, transform=None):
    name = task.rel.rsplit("/", 1)[-1]
    if name == "crash.png":
        os._exit(11)  # a decoder segfault kills the worker process
    if name == "hang.png":
        time.sleep(3600)
    return _REAL_DECODE(task, lim, transform)


_REAL_DECODE = pool.decode_file


def test_crashing_and_hanging_decoders_are_contained(world, tmp_path, monkeypatch):
    d = tmp_path / "dump"
    d.mkdir()
    png = _hostile.save_bytes(_hostile.cel(0, 1), "PNG")
    for n in ("a.png", "crash.png", "hang.png", "z.png"):
        (d / n).write_bytes(png)
    monkeypatch.setattr(pool, "decode_file", _crashy_process)
    m = Matcher.open(world["index"])
    out = tmp_path / "r.jsonl"
    t0 = time.monotonic()
    stats = dump.run_dump(d, m, out=out, workers=2, quiet=True, decode_timeout=2.0)
    assert time.monotonic() - t0 < 20
    by = {r["path"]: r for r in file_records(out)}
    assert by["a.png"]["status"] == by["z.png"]["status"] == "matched"
    assert by["crash.png"]["status"] == "error" and "crashed" in by["crash.png"]["reason"]
    assert by["hang.png"]["status"] == "error" and "longer than" in by["hang.png"]["reason"]
    assert stats.statuses["matched"] == 2


def test_cli_dump_mode(world, tmp_path):
    out, csv_path, html = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "r.html"
    cmd = [sys.executable, "-m", "matcher.cli", "match", str(world["dump"]), "--index", str(world["index"])]
    cmd += ["--out", str(out), "--csv", str(csv_path), "--html", str(html), "--every", "1", "--all-frames"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Alpha Squadron" in p.stdout and "matched" in p.stdout  # summary on the terminal
    assert "Traceback" not in p.stderr and "━" not in p.stderr  # no progress bar when not a TTY
    assert len(file_records(out)) == len(world["expected"]) and html.exists() and csv_path.exists()
    # a run that cannot proceed: one line, non-zero
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "matcher.cli",
            "match",
            str(tmp_path / "nope"),
            "--index",
            str(world["index"]),
            "--out",
            str(tmp_path / "x.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_copy_of_dump_with_changed_file_is_rematched(world, tmp_path):
    d = tmp_path / "dump"
    shutil.copytree(world["dump"] / "good", d)
    out = tmp_path / "r.jsonl"
    m = Matcher.open(world["index"])
    dump.run_dump(d, m, out=out, quiet=True, workers=1)
    (d / "a.png").write_bytes(_hostile.save_bytes(_hostile.cel(1, 1), "PNG"))  # same path, new content
    stats = dump.run_dump(d, m, out=out, quiet=True, workers=1)
    assert stats.written == 1
    a = [r for r in file_records(out) if r["path"] == "a.png"]
    assert [r["title"] for r in a] == ["Alpha Squadron", "Beta <Bros>"] and a[0]["sha256"] != a[1]["sha256"]
    n_files = sum(1 for _ in d.iterdir())
    assert stats.summary["totals"]["files"] == n_files  # counted once, as it is now


def test_plain_match_of_a_hostile_directory_never_follows_links(world):
    """`matcher match DIR` without --out (Matcher.match_many over sources.walk) is hardened too."""
    from matcher.decode.decoder import iter_stills
    from matcher.decode.sources import InputError, RefusedPath, walk

    paths = list(walk([world["dump"]]))
    refused = {
        str(p.relative_to(world["dump"])): p.refused_reason for p in paths if isinstance(p, RefusedPath)
    }
    assert "outside the dump" in refused["links/outside.png"] and "FIFO" in refused["links/pipe.png"]
    assert "loop" in refused["links/parent_loop"]
    with pytest.raises(InputError, match="text file despite its .png extension"):
        list(iter_stills(world["dump"] / "bad" / "text.png"))
    m = Matcher.open(world["index"])
    try:
        results = list(m.match_many([world["dump"]], every=1.0))
    finally:
        m.close()
    by_path = Counter(r.path for r in results)
    assert by_path[str(world["dump"] / "video" / "clip.mp4")] == 3
    assert by_path[str(world["dump"] / "links" / "outside.png")] == 1
    secret = next(r for r in results if r.path.endswith("links/outside.png"))
    assert secret.status == "skipped" and secret.sha256 is None and "not followed" in secret.error


def test_report_inside_the_dump_is_listed_not_matched(world, tmp_path):
    d = tmp_path / "dump"
    shutil.copytree(world["dump"] / "good", d)
    m = Matcher.open(world["index"])
    try:
        dump.run_dump(d, m, out=d / "report.jsonl", csv=d / "report.csv", quiet=True, workers=1)
        stats = dump.run_dump(d, m, out=d / "report.jsonl", csv=d / "report.csv", quiet=True, workers=1)
    finally:
        m.close()
    by = {r["path"]: r for r in file_records(d / "report.jsonl")}
    assert by["report.jsonl"]["status"] == "skipped" and "own output" in by["report.jsonl"]["reason"]
    assert by["report.csv"]["status"] == "skipped"
    assert stats.written == 0  # the second run found everything, its own files included, reported


def test_long_inputs_are_decoded_in_segments(world, tmp_path):
    """Videos and animations are decoded a few stills per worker task (bounded memory): with
    2-still segments the 3 s clip sampled every 0.5 s takes 3 tasks and still yields 6 stills once."""
    out = tmp_path / "r.jsonl"
    run(world, out, every=0.5, segment=2)
    parts = [r for r in read_records(out) if r.get("record") in ("still", "frame")]
    ts = sorted(r["timestamp"] for r in parts if r["path"] == "video/clip.mp4")
    assert ts == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert sorted(r["frame"] for r in parts if r["path"] == "multi/pages.tiff") == [0, 1, 2]
    clip = next(r for r in file_records(out) if r["path"] == "video/clip.mp4")
    assert clip["stills"] == 6 and clip["title"] == "Beta <Bros>"


def _stderr_on_a_tty(cmd: list[str]) -> tuple[int, str]:
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave, env=os.environ | {"COLUMNS": "100"}
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(60), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_tty_unless_quiet(world, tmp_path):
    base = [sys.executable, "-m", "matcher.cli", "match", str(world["dump"]), "--index", str(world["index"])]
    rc, err = _stderr_on_a_tty(base + ["--out", str(tmp_path / "a.jsonl")])
    assert rc == 0 and "matching" in err and "files/s" in err and f"{len(world['expected'])}/" in err, err
    rc, err = _stderr_on_a_tty(base + ["--out", str(tmp_path / "b.jsonl"), "--quiet"])
    assert rc == 0 and "files/s" not in err, err


def test_cli_json_streams_one_verdict_per_file(world, tmp_path):
    from typer.testing import CliRunner

    from matcher.cli import app

    res = CliRunner().invoke(
        app,
        [
            "match",
            str(world["dump"]),
            "--index",
            str(world["index"]),
            "--out",
            str(tmp_path / "r.jsonl"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["path"] for r in lines) == sorted(world["expected"])
    assert all(r["record"] == "file" for r in lines)
