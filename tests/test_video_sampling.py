"""matcher.decode.video: scene-change + interval sampling with near-duplicate dropping."""

from __future__ import annotations

import numpy as np
import pytest

av = pytest.importorskip("av")

from matcher.decode.decoder import iter_stills  # noqa: E402


def _write(path, frames, fps=12):
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 128, 72, "yuv420p"
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def _scene(seed, shift=0):
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (9, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return np.roll(base, shift, axis=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 3 s hold of A, cut, 3 s hold of B, cut, 3 s pan over C (fps 12).
    frames = [_scene(1)] * 36 + [_scene(2)] * 36 + [_scene(3, shift=i) for i in range(36)]
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    _write(path, frames)
    return path


def test_holds_collapse_to_one_still_with_their_range(clip):
    stills = list(iter_stills(clip, every=1.0, distinct=True))
    starts = [s.timestamp for s in stills]
    # A and B are held 3 s each: one still each, covering ~[0, 2.9] and ~[3, 5.9].
    assert starts[0] == 0.0 and stills[0].timestamp_end >= 2.5
    assert any(abs(t - 3.0) < 0.2 for t in starts)
    b = next(s for s in stills if abs(s.timestamp - 3.0) < 0.2)
    assert b.timestamp_end >= 5.5
    # The pan changes every frame: sampled at the interval (~1 s), none dropped.
    assert len([t for t in starts if t >= 6.0]) >= 3
    assert all(s.timestamp_end >= s.timestamp for s in stills) and starts == sorted(starts)
    assert stills[0].image.size == (128, 72)


def test_interval_only_keeps_every_sample(clip):
    stills = list(iter_stills(clip, every=1.0))
    assert len(stills) == 9
    assert [round(s.timestamp) for s in stills] == list(range(9))


def test_cut_is_caught_between_interval_samples(clip):
    stills = list(iter_stills(clip, every=10.0, distinct=True))
    # Interval alone would give one still; the two cuts add two.
    assert len(stills) == 3 and abs(stills[1].timestamp - 3.0) < 0.2 and abs(stills[2].timestamp - 6.0) < 0.2


def test_unreadable_video_is_an_input_error(tmp_path):
    from matcher.decode.sources import InputError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(InputError):
        list(iter_stills(bad, distinct=True))
