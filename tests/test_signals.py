"""Signals and processes: an interrupted dump exits and frees its report; no decode worker outlives
a `match` or `index add` that was killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from matcher.write.report import JsonlReport, read_records

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(cond, timeout: float, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(step)
    return cond()


@pytest.fixture()
def many_frames(tmp_path, library):
    d = tmp_path / "dump"
    d.mkdir()
    for i in range(40):
        shutil.copyfile(library["Sunny Farm"][i % 60], d / f"{i:03d}.png")
    return d


def test_sigterm_mid_dump_exits_and_releases_the_report_even_when_clean_up_hangs(
    tmp_path, built_index, many_frames
):
    """A SIGTERM that lands inside the process pool's own locks left the run waiting forever while
    it held the report lock (4 of 24 trials). Here the pool's clean-up is made to hang on purpose:
    the run must still exit within its grace period, with every line written intact."""
    out = tmp_path / "r.jsonl"
    script = textwrap.dedent(
        f"""
        import time
        from matcher.run import dump
        from matcher.api import Matcher

        from matcher import cli
        cli.TERM_GRACE = 1.0
        from matcher.run import pool
        pool.DecodePool.close = lambda self, graceful=True: time.sleep(3600)  # a wedged pool
        real = pool.decode_file
        def slow(*a, **k):
            time.sleep(0.2)
            return real(*a, **k)
        pool.decode_file = slow
        m = Matcher.open({str(built_index)!r})
        raise SystemExit(cli.dump_mode([{str(many_frames)!r}], m, out={str(out)!r}, quiet=True, workers=1))
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= 3, 60)
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=15)
    finally:
        p.kill()
    assert code == 130
    assert "interrupted" in p.stderr.read()
    with JsonlReport(out) as report:  # the lock is free, the lines whole
        assert report.repaired_bytes == 0 and report.bad_lines == 0
    assert list(read_records(out))[0]["record"] == "run"


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("command", ["match", "index-add"])
def test_no_worker_outlives_a_killed_run(tmp_path, built_index, many_frames, command):
    if command == "match":
        args = ["match", "--index", str(built_index), str(many_frames)]
    else:
        index = tmp_path / "idx"
        shutil.copytree(built_index, index)
        args = ["index", "add", "--index", str(index), "--title", "Killed", str(many_frames)]
    # the decode pool has 2 workers even on a 1-core machine; slow decoding keeps them busy
    script = textwrap.dedent(
        """
        import sys, time
        from matcher.run import pipeline, pool
        pipeline.default_workers = lambda embedder=None: 2
        real = pool.decode_file
        def slow(*a, **k):
            time.sleep(0.5)
            return real(*a, **k)
        pool.decode_file = slow
        from matcher.cli import app
        sys.argv = ["matcher", *sys.argv[1:]]
        app()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        workers = _wait_for(lambda: _children(p.pid) if len(_children(p.pid)) >= 2 else set(), 60)
        assert len(workers) >= 2
        p.kill()
        p.wait(timeout=10)
        survivors = _wait_for(lambda: not any(_alive(w) for w in workers), 10)
        assert survivors, [w for w in workers if _alive(w)]
    finally:
        p.kill()
        for w in workers:  # never leave one behind, whatever the outcome
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass
