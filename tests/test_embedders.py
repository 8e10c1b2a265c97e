"""The embedder registry and the classic descriptor's contract."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import draw_frame
from PIL import Image, ImageOps

from matcher.embed import EmbedderError, create_embedder, register_embedder


def test_classic_contract():
    e = create_embedder("classic")
    v = e.embed([draw_frame("Sunny Farm", 1), draw_frame("Night Patrol", 1)])
    assert v.dtype == np.float32 and v.shape == (2, e.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, e.embed([draw_frame("Sunny Farm", 1), draw_frame("Night Patrol", 1)]))
    assert e.embed([]).shape == (0, e.dim)
    assert e.fingerprint == create_embedder("classic").fingerprint


def test_classic_is_robust_to_flip_letterbox_and_grey():
    e = create_embedder("classic")
    im = draw_frame("Ice Kingdom", 7)
    boxed = ImageOps.expand(im, border=(0, 40, 0, 40), fill=(0, 0, 0))
    v = e.embed([im, ImageOps.mirror(im), boxed, draw_frame("Night Patrol", 7)])
    assert v[0] @ v[1] > 0.98
    assert v[0] @ v[2] > 0.98
    assert v[0] @ v[3] < v[0] @ v[2]


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(EmbedderError, match="unknown model spec"):
        create_embedder("resnet:50")
    with pytest.raises(EmbedderError, match="unknown classic variant"):
        create_embedder("classic:v9")


def test_registry_accepts_new_families():
    class Mean:
        spec, dim, fingerprint, pretrained = "mean", 3, "m1", None

        def embed(self, images):
            v = np.array([np.asarray(i, dtype=np.float32).mean(axis=(0, 1)) + 1e-3 for i in images])
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    register_embedder("mean", lambda variant, **_: Mean())
    assert create_embedder("mean").embed([Image.new("RGB", (4, 4), "red")]).shape == (1, 3)


def test_classic_never_imports_torch():
    code = (
        "import sys; from matcher.embed import create_embedder; from PIL import Image;"
        "create_embedder('classic').embed([Image.new('RGB', (64, 64))]);"
        "import matcher.api, matcher.cli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
