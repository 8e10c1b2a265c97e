"""Shared fixtures: synthetic 'productions' with distinct drawing styles, small videos, tiny indexes.

Images are drawn, not random noise: each style has its own palette, background and line weight, so
the classic descriptor has real structure to find, like shows with different art direction.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

# verified index-file checksums are memoised per user; the tests keep theirs apart (subprocesses inherit)
os.environ.setdefault("MATCHER_HASH_CACHE", os.path.join(tempfile.mkdtemp(prefix="matcher-test-"), "h.json"))

STYLES = {
    "Sunny Farm": {"bg": (250, 238, 196), "fg": [(214, 60, 40), (60, 120, 200), (70, 160, 60)], "ink": 4},
    "Night Patrol": {"bg": (24, 26, 60), "fg": [(250, 200, 0), (0, 200, 210), (240, 240, 240)], "ink": 2},
    "Ice Kingdom": {"bg": (190, 225, 255), "fg": [(255, 140, 0), (110, 70, 30), (240, 240, 255)], "ink": 6},
}


def draw_frame(style: str, seed: int, size=(320, 240)) -> Image.Image:
    """A cartoon-like frame in one of STYLES: flat background, inked flat-colour shapes."""
    st = STYLES[style]
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, st["bg"])
    d = ImageDraw.Draw(im)
    w, h = size
    d.rectangle([0, int(h * 0.75), w, h], fill=tuple(int(c * 0.8) for c in st["bg"]))  # ground
    for _ in range(7):
        x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        bw, bh = int(rng.integers(25, 110)), int(rng.integers(25, 110))
        colour = st["fg"][int(rng.integers(0, len(st["fg"])))]
        shape = d.ellipse if rng.random() < 0.6 else d.rectangle
        shape([x, y, x + bw, y + bh], fill=colour, outline=(10, 10, 10), width=st["ink"])
    return im


def write_frames(directory, style: str, seeds) -> list:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        p = directory / f"{style.replace(' ', '_').lower()}_{s:04d}.png"
        draw_frame(style, s).save(p)
        paths.append(p)
    return paths


def write_video(
    path, style: str, seconds: float = 3.0, fps: int = 10, size=(160, 120), shot: float = 1.0
) -> None:
    """A small MPEG-4 video: a new shot every ``shot`` seconds (default: each 1 s still differs)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.asarray(draw_frame(style, 1000 + int(i / fps / shot), size=size))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    """Reference stills on disk: an unbalanced library (60 / 12 / 12 stills)."""
    root = tmp_path_factory.mktemp("library")
    counts = {"Sunny Farm": 60, "Night Patrol": 12, "Ice Kingdom": 12}
    return {title: write_frames(root / title, title, range(n)) for title, n in counts.items()}


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, library):
    """A classic index over `library`, built once per session (tests must not modify it)."""
    from matcher import Matcher

    root = tmp_path_factory.mktemp("index") / "idx"
    m = Matcher.create(root, model="classic")
    for title, paths in library.items():
        m.add(paths, title=title)
    m.close()
    return root


@pytest.fixture(scope="session")
def hostile_world(tmp_path_factory):
    """A tiny classic index and the hostile dump of tests/_hostile.py, built once per session
    (test_dump.py, test_html_chromium.py; tests must not modify it)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _hostile

    return _hostile.build_world(tmp_path_factory.mktemp("hostile"))
