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


def test_registry_accepts_new_families_that_keep_the_protocol():
    class Mean:
        spec, dim, fingerprint, pretrained = "mean", 3, "m1", None
        device, uses_torch, coverage = "cpu", False, None

        def prepare(self, image):
            return np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) + 1e-3

        def embed_prepared(self, batch):
            v = np.array(batch)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        def embed(self, images):
            return self.embed_prepared([self.prepare(i) for i in images])

    register_embedder("mean", lambda variant, **_: Mean())
    assert create_embedder("mean").embed([Image.new("RGB", (4, 4), "red")]).shape == (1, 3)

    class Incomplete:
        spec, dim, fingerprint, pretrained = "half", 3, "h1", None

        def embed(self, images):
            return np.ones((len(images), 3), np.float32)

    register_embedder("half", lambda variant, **_: Incomplete())
    with pytest.raises(EmbedderError, match="half: Incomplete lacks device, uses_torch, coverage, prepare"):
        create_embedder("half")


@pytest.mark.parametrize("spec", ["classic", "anim", "anim+classic"])
def test_shipped_embedders_keep_the_protocol(spec):
    from matcher.embed import Embedder

    e = create_embedder(spec)
    assert isinstance(e, Embedder)
    ims = [draw_frame("Sunny Farm", 3), draw_frame("Night Patrol", 4)]
    prepared = [e.prepare(im) for im in ims]  # what the decode workers hand the main process
    assert np.allclose(e.embed_prepared(prepared), e.embed(ims), atol=1e-6)


def test_classic_never_imports_torch():
    code = (
        "import sys; from matcher.embed import create_embedder; from PIL import Image;"
        "create_embedder('classic').embed([Image.new('RGB', (64, 64))]);"
        "import matcher.api, matcher.cli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
