"""What produced each verdict is in the record (issue 14): the run header, override marks, evidence
sha256, byte-identical copies, ties, a video's verdict and its candidates. Real classic indexes."""

from __future__ import annotations

import dataclasses
import getpass
import json
import shutil
import socket

import pytest
from conftest import draw_frame, write_frames

from matcher import Matcher
from matcher.decode.sources import file_sha256
from matcher.run import dump
from matcher.write.report import read_records


@pytest.fixture(scope="module")
def two_titles(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    refs = {t: write_frames(root / t.replace(" ", "_"), t, range(20)) for t in ("Sunny Farm", "Night Patrol")}
    m = Matcher.create(root / "idx")
    for title, paths in refs.items():
        m.add(paths, title=title)
    m.close()
    return root, refs


def test_evidence_carries_the_reference_sha256_and_a_byte_copy_is_reported_identical(two_titles, tmp_path):
    root, refs = two_titles
    copy = tmp_path / "leak.png"
    shutil.copyfile(refs["Sunny Farm"][3], copy)
    with Matcher.open(root / "idx") as m:
        d = m.match(copy).to_dict()
    sha = file_sha256(refs["Sunny Farm"][3])
    assert d["identical"] == {"reference": str(refs["Sunny Farm"][3]), "sha256": sha, "title": "Sunny Farm"}
    assert d["title"] == "Sunny Farm" and d["confidence"] == 1.0
    by_ref = {e["reference"]: e["sha256"] for e in d["evidence"]}
    assert by_ref[str(refs["Sunny Farm"][3])] == sha
    assert all(len(e["sha256"]) == 64 for e in d["evidence"])


def test_a_verdict_changed_by_the_override_is_marked(two_titles):
    root, _ = two_titles
    with Matcher.open(root / "idx") as m:
        plain = m.match(draw_frame("Sunny Farm", 700))
        strict = m.match(draw_frame("Sunny Farm", 700), min_confidence=0.99999)
        threshold = m.info()["threshold"]
    assert plain.title == "Sunny Farm" and not plain.override_changed
    assert plain.threshold == pytest.approx(threshold)
    assert strict.title is None and strict.override_changed and strict.threshold == 0.99999
    assert strict.to_dict()["override_changed"] is True


def test_the_same_picture_under_two_titles_is_a_tie_not_a_coin_flip(tmp_path):
    m = Matcher.create(tmp_path / "idx")
    shared = draw_frame("Ice Kingdom", 5)
    m.add([shared, *(draw_frame("Ice Kingdom", s) for s in range(10, 20))], title="A")
    m.add([shared, *(draw_frame("Sunny Farm", s) for s in range(10, 20))], title="B")
    r = m.match(shared)
    assert r.title is None and sorted(r.tie) == ["A", "B"]
    assert r.to_dict()["tie"] == r.tie


def test_results_serialise_with_json_and_asdict(two_titles):
    root, refs = two_titles
    with Matcher.open(root / "idx") as m:
        r = m.match(refs["Night Patrol"][0])
    assert json.loads(json.dumps(r.to_dict()))["title"] == "Night Patrol"
    assert json.loads(json.dumps(dataclasses.asdict(r)))["evidence"][0]["sha256"]


def test_run_header_says_what_produced_the_verdicts(two_titles, tmp_path):
    root, refs = two_titles
    leak = tmp_path / "dump"
    leak.mkdir()
    shutil.copyfile(refs["Sunny Farm"][1], leak / "copy.png")
    draw_frame("Night Patrol", 900).save(leak / "new.png")
    out = tmp_path / "r.jsonl"
    with Matcher.open(root / "idx") as m:
        dump.run_dump(leak, m, out=out, quiet=True, workers=1, min_confidence=0.99999)
        info = m.info()
    recs = list(read_records(out))
    run = next(r for r in recs if r["record"] == "run")
    assert run["index_path"] == str((root / "idx").resolve())
    assert run["threshold"] == info["threshold"] and run["unknown_share"] == info["unknown_share"]
    assert run["min_confidence_override"] == 0.99999
    assert run["host"] == socket.gethostname() and run["user"] == getpass.getuser()
    assert run["command_line"] and "calibration_warning" in run and "grey_threshold" in run
    assert run["background_set"] == info["background_set"]["sha256"]
    files = {r["path"]: r for r in recs if r["record"] == "file"}
    assert files["copy.png"]["identical"]["sha256"] == file_sha256(refs["Sunny Farm"][1])
    assert "byte-identical" in files["copy.png"]["reason"]
    assert files["new.png"]["status"] == "unknown" and files["new.png"]["override_changed"] is True
    assert "--min-confidence" in files["new.png"]["reason"]


def test_a_videos_verdict_and_candidates_use_the_same_numbers(two_titles, tmp_path):
    root, _ = two_titles
    leak = tmp_path / "dump"
    leak.mkdir()
    _mixed_video(leak / "clip.mp4", ["Night Patrol"] * 2 + ["Sunny Farm"] + ["Night Patrol"] * 2)
    out = tmp_path / "r.jsonl"
    with Matcher.open(root / "idx") as m:
        dump.run_dump(leak, m, out=out, quiet=True, workers=1)
    rec = next(r for r in read_records(out) if r["record"] == "file")
    assert rec["title"] == rec["candidates"][0]["title"] == "Night Patrol"
    assert rec["confidence"] == rec["candidates"][0]["score"]


def _mixed_video(path, styles, fps: int = 10, size=(160, 120)) -> None:
    """One second per style: a leak whose stills do not all agree (one is not in the index)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for second, style in enumerate(styles):
            frame = np.asarray(draw_frame(style, 1000 + second, size=size))
            for _ in range(fps):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
