"""The Python API a pipeline uses: create, add, match, match_many, reopen and append."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import draw_frame, write_frames
from PIL import Image

from matcher import Matcher, MatcherError, MatchResult


def test_held_out_frames_are_attributed_to_their_production(built_index):
    m = Matcher.open(built_index)
    for title in ("Sunny Farm", "Night Patrol", "Ice Kingdom"):
        for seed in (500, 501, 502):
            r = m.match(draw_frame(title, seed))
            assert isinstance(r, MatchResult)
            assert r.title == title, (title, r.candidates)
            assert 0.5 <= r.confidence <= 1.0
            assert r.candidates[0].title == title
            assert r.evidence and r.evidence[0].title == title
            assert -1.0 <= r.evidence[0].similarity <= 1.0


def test_candidates_are_ranked_and_scores_are_probabilities(built_index):
    r = Matcher.open(built_index).match(draw_frame("Night Patrol", 777))
    scores = [c.score for c in r.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert r.confidence == scores[0]
    assert sum(scores) <= 1.0 + 1e-6


def test_unrelated_image_is_unknown(built_index):
    photo = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))
    r = Matcher.open(built_index).match(photo)
    assert r.title is None
    assert r.status == "unknown"
    assert r.candidates, "even an unknown keeps its nearest candidates as evidence"


def test_min_confidence_overrides_the_threshold(built_index):
    m = Matcher.open(built_index)
    frame = draw_frame("Ice Kingdom", 321)
    assert m.match(frame, min_confidence=0.0).title == "Ice Kingdom"
    assert m.match(frame, min_confidence=1.0).title is None


def test_match_many_streams_files_directories_and_errors(tmp_path, built_index):
    write_frames(tmp_path / "dump" / "sub", "Sunny Farm", [900, 901])
    (tmp_path / "dump" / "notes.txt").write_text("not an image")
    results = list(Matcher.open(built_index).match_many([tmp_path / "dump", tmp_path / "missing.png"]))
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in results}
    assert len(results) == 4
    assert by_name["sunny_farm_0900.png"].title == "Sunny Farm"
    assert by_name["sunny_farm_0900.png"].sha256 and len(by_name["sunny_farm_0900.png"].sha256) == 64
    assert "not an image or video" in by_name["notes.txt"].error
    assert by_name["missing.png"].error == "no such file or directory"


def test_reopen_and_append_without_rebuild(tmp_path, library):
    root = tmp_path / "idx"
    m = Matcher.create(root, model="classic")
    m.add(library["Sunny Farm"][:20], title="Sunny Farm")
    m.add(library["Night Patrol"], title="Night Patrol", episode="S01E01")
    gen = m.store.manifest["generation"]
    m.close()
    m = Matcher.open(root)
    assert m.info()["titles"] == {"Night Patrol": 12, "Sunny Farm": 20}
    m.add(library["Ice Kingdom"], title="Ice Kingdom")
    m.close()
    m = Matcher.open(root)
    assert m.info()["references"] == 44
    assert m.store.manifest["generation"] > gen
    r = m.match(draw_frame("Night Patrol", 4242))
    assert r.title == "Night Patrol"
    assert {e.episode for e in r.evidence if e.title == "Night Patrol"} == {"S01E01"}


def test_remove_title(tmp_path, library):
    root = tmp_path / "idx"
    m = Matcher.create(root)
    for title in ("Sunny Farm", "Night Patrol", "Ice Kingdom"):
        m.add(library[title][:12], title=title)
    assert m.remove("Night Patrol") == 12
    m.close()
    m = Matcher.open(root)
    assert "Night Patrol" not in m.info()["titles"]
    r = m.match(draw_frame("Night Patrol", 555))
    assert r.title != "Night Patrol"
    assert all(c.title != "Night Patrol" for c in r.candidates)


def test_pil_images_with_names_are_indexed(tmp_path):
    m = Matcher.create(tmp_path / "idx")
    imgs = [draw_frame("Ice Kingdom", s) for s in range(8)]
    assert m.add(imgs, title="Ice Kingdom", names=[f"frame{i}" for i in range(8)]) == 8
    m.add([draw_frame("Sunny Farm", s) for s in range(8)], title="Sunny Farm")
    r = m.match(draw_frame("Ice Kingdom", 3))
    assert r.evidence[0].reference == "frame3"
    assert r.evidence[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_open_missing_index_is_one_clear_error(tmp_path):
    with pytest.raises(MatcherError, match="no index here"):
        Matcher.open(tmp_path / "nothing")


def test_every_user_facing_error_is_exported_and_derives_from_one_base():
    import matcher

    for name in ("StoreError", "EmbedderError", "InputError", "ReportError", "DuplicateInput"):
        assert issubclass(getattr(matcher, name), matcher.MatcherError), name
    with pytest.raises(matcher.MatcherError):
        matcher.Matcher.open("/nonexistent/index")
    with pytest.raises(matcher.MatcherError):
        matcher.Matcher.create("/tmp/x", model="no-such-model")


def test_dump_mode_is_callable_from_python(built_index, tmp_path):
    from conftest import draw_frame

    import matcher
    from matcher.write.report import read_records

    dump_dir = tmp_path / "dump"
    dump_dir.mkdir()
    draw_frame("Sunny Farm", 4242).save(dump_dir / "a.png")
    (dump_dir / "notes.txt").write_text("not media")
    with matcher.Matcher.open(built_index) as m:
        stats = m.match_dump(dump_dir, out=tmp_path / "r.jsonl", html=tmp_path / "r.html")
        with pytest.raises(matcher.MatcherError):
            m.match_dump(tmp_path / "missing", out=tmp_path / "x.jsonl")
    files = {r["path"]: r for r in read_records(tmp_path / "r.jsonl") if r["record"] == "file"}
    assert files["a.png"]["title"] == "Sunny Farm" and files["notes.txt"]["status"] == "skipped"
    assert stats.files == 2 and (tmp_path / "r.html").is_file()
