"""The accuracy benchmark's building blocks: query transforms, metrics and peer descriptors (fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_metrics as M  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402


def _frame(seed: int = 0, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        d.ellipse([x0, y0, x0 + 40, y0 + 30], fill=tuple(int(v) for v in rng.integers(0, 255, 3)), outline=0)
    return im


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transforms_are_deterministic_rgb(name):
    im = _frame(1)
    a, b = TRANSFORMS[name](im, 7), TRANSFORMS[name](im, 7)
    assert a.mode == "RGB" and a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_transform_shapes():
    im = _frame(2)
    assert TRANSFORMS["crop60"](im, 3).size == (96, 72)
    assert TRANSFORMS["letterbox"](im, 0).size == (176, 156)
    assert max(TRANSFORMS["small320"](im, 0).size) == 320
    g = np.asarray(TRANSFORMS["gray"](im, 0)).astype(int)
    assert np.array_equal(g[..., 0], g[..., 1])
    line = np.asarray(TRANSFORMS["lineart"](im, 0))
    assert (line == 255).mean() > 0.5 and (line < 80).any()  # ink on white paper
    notes = np.asarray(TRANSFORMS["notes"](im, 0)).astype(int)
    red = (notes[..., 0] > 200) & (notes[..., 1] < 60) & (notes[..., 2] < 60)
    assert red.any()
    assert np.array_equal(np.asarray(TRANSFORMS["hflip"](im, 0))[:, ::-1], np.asarray(im))


def test_metrics():
    assert M.top1(["a", "b"], ["a", None]) == 0.5
    # macro: title a 1/1, title b 0/3 -> 0.5 (overall would be 0.25)
    assert M.macro_top1(["a", "b", "b", "b"], ["a", "a", "a", "a"]) == 0.5
    assert M.auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert M.auroc([0.1], [0.9]) == 0.0
    assert M.auroc([0.5, 0.5], [0.5]) == 0.5
    assert M.ece([1.0, 1.0], [True, True]) == 0.0
    assert abs(M.ece([0.8] * 10, [True] * 5 + [False] * 5) - 0.3) < 1e-9
    rng = np.random.default_rng(0)
    conf = rng.random(20000)
    assert M.ece(conf, rng.random(20000) < conf) < 0.02  # calibrated by construction


def test_knn_vote_prefers_nearest_title():
    sims = np.array([[0.9, 0.5, 0.4, 0.3]])
    titles, conf, best = M.knn_vote(sims, np.array(["x", "y", "y", "y"]), k=4, temp=0.05)
    assert titles == ["x"] and conf[0] > 0.9 and best[0] == 0.9


def test_peers_give_unit_vectors_and_rank_like_hamming():
    pytest.importorskip("imagehash")
    import peers

    ims = [_frame(i) for i in range(3)]
    for name in peers.PEERS:
        e = peers.PeerEmbedder(name)
        v = e.embed(ims + [ims[0]])
        assert v.shape == (4, e.dim) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert np.allclose(v[0], v[3])
    import imagehash

    a, b = ims[0], ims[1]
    ham = imagehash.phash(a) - imagehash.phash(b)
    va, vb = peers.PeerEmbedder("peer-phash").embed([a, b])
    assert abs(float(va @ vb) - (1 - 2 * ham / 64)) < 1e-5


def test_cld_coefficients_of_flat_colour():
    import peers

    y, cb, cr = peers.cld_coefficients(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert y[0] == peers._quant_ydc(128) >> 1 and np.all(y[1:] == 16)  # AC zero -> mid code
    assert cb[0] == cr[0]
