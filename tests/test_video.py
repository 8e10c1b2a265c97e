"""Video ingestion and matching: stills sampled every N seconds, each with its timestamp."""

from __future__ import annotations

import pytest
from conftest import draw_frame, write_video

from matcher import Matcher
from matcher.decode.decoder import iter_stills


def iter_video_stills(path, every):
    return [(s.timestamp, s.image) for s in iter_stills(path, every=every)]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "episode.mkv"
    write_video(path, "Night Patrol", seconds=4.0)
    return path


def test_stills_are_sampled_every_n_seconds(video):
    stamps = [t for t, _ in iter_video_stills(video, every=1.0)]
    assert stamps == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.11)
    assert len(list(iter_video_stills(video, every=2.0))) == 2


def test_video_references_carry_timestamps(tmp_path, video, library):
    m = Matcher.create(tmp_path / "idx")
    assert m.add([video], title="Night Patrol", episode="E01", every=1.0) == 4
    m.add(library["Sunny Farm"][:10], title="Sunny Farm")
    # The shot that starts at 2 s was drawn with seed 1002: a clean copy of it finds that still.
    r = m.match(draw_frame("Night Patrol", 1002, size=(160, 120)))
    assert r.title == "Night Patrol"
    assert r.evidence[0].timestamp == pytest.approx(2.0, abs=0.11)
    assert r.evidence[0].reference == str(video)


def test_matching_a_video_reports_each_still(tmp_path, video, built_index):
    results = list(Matcher.open(built_index).match_many([video], every=2.0))
    assert [r.timestamp for r in results] == pytest.approx([0.0, 2.0], abs=0.11)
    assert all(r.sha256 == results[0].sha256 and r.path == str(video) for r in results)


def test_truncated_video_is_an_error_not_a_crash(tmp_path, video, built_index):
    bad = tmp_path / "cut.mkv"
    bad.write_bytes(video.read_bytes()[:300])
    results = list(Matcher.open(built_index).match_many([bad]))
    assert len(results) == 1 and results[0].path == str(bad)
    assert results[0].error.startswith("corrupt or unsupported video")


def test_a_held_shot_is_one_reference_covering_its_time_range(tmp_path, library):
    video = tmp_path / "static.mkv"
    write_video(video, "Ice Kingdom", seconds=4.0, shot=2.0)  # two shots of 2 s each
    m = Matcher.create(tmp_path / "idx")
    assert m.add([video], title="Ice Kingdom", every=1.0) == 2  # near-identical stills dropped
    m.add(library["Sunny Farm"][:10], title="Sunny Farm")
    r = m.match(draw_frame("Ice Kingdom", 1001, size=(160, 120)))  # the second shot
    best = r.evidence[0]
    assert best.timestamp == pytest.approx(2.0, abs=0.11)
    assert 3.0 <= best.timestamp_end < 4.0  # the shot is still showing until the video ends
    assert r.to_dict()["evidence"][0]["timestamp_end"] == best.timestamp_end
