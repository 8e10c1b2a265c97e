"""`anim` and `anim+classic`: the shipped learned embedder loads offline, is checked, and sees what it should.

No training here: the tests run the weights shipped in the package (matcher/embed/weights/) on a few
public-domain images (tests/data/cc0, NOTICE.md there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_frame
from PIL import Image, ImageOps
from typer.testing import CliRunner

from matcher import Matcher
from matcher.api import MatcherError
from matcher.cli import app
from matcher.embed import EmbedderError, anim, create_embedder
from matcher.score.calibration import make_sketch

CC0 = Path(__file__).parent / "data" / "cc0"


def frame(name: str, bg=(128, 128, 128), size=(240, 200)) -> Image.Image:
    """A public-domain character composited on a flat background, as a frame of it would look."""
    art = Image.open(CC0 / f"{name}.png").convert("RGBA")
    canvas = Image.new("RGB", size, bg)
    canvas.paste(art, ((size[0] - art.width) // 2, (size[1] - art.height) // 2), art)
    return canvas


@pytest.fixture(scope="module")
def emb():
    return create_embedder("anim")


def test_shipped_weights_load_offline_and_embed(emb):
    assert anim.WEIGHTS_FILE.is_file() and anim.WEIGHTS_FILE.stat().st_size < 12_000_000
    v = emb.embed([frame("bison"), frame("alien")])
    assert v.dtype == np.float32 and v.shape == (2, emb.dim) == (2, 256)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, emb.embed([frame("bison"), frame("alien")]))  # deterministic
    assert emb.embed([]).shape == (0, 256)
    assert emb.pretrained is None  # part of this matcher version, nothing to fetch
    assert emb.fingerprint == create_embedder("anim").fingerprint


def test_prepared_and_raw_images_embed_alike(emb):
    im = frame("boy")
    assert np.allclose(emb.embed([im]), emb.embed([emb.prepare(im)]), atol=1e-6)


def test_numpy_and_torch_runners_agree(emb):
    """One query runs on numpy (no torch import), big batches on torch: the index must not care."""
    ims = [frame(n, bg=bg) for n in ("bison", "alien", "boy") for bg in ((128, 128, 128), (250, 250, 250))]
    ims = (ims * 3)[: emb.TORCH_FROM]
    batch = emb.embed(ims)  # torch
    single = np.concatenate([emb.embed([im]) for im in ims[:6]])  # numpy
    assert np.allclose(batch[:6], single, atol=1e-4)


def test_a_frame_is_nearer_its_edits_than_another_production(emb):
    rng = np.random.default_rng(0)
    for name, other in (("bison", "alien"), ("alien", "boy"), ("boy", "bison")):
        im = frame(name)
        edits = [
            make_sketch(im, rng),  # line-art
            ImageOps.grayscale(im).convert("RGB"),
            ImageOps.mirror(im),
            ImageOps.expand(im, border=(0, 30, 0, 30), fill=(0, 0, 0)),  # letterbox
        ]
        v = emb.embed([im, frame(other), *edits])
        different = float(v[0] @ v[1])
        for k, e in enumerate(v[2:]):
            assert float(v[0] @ e) > different, (name, k, float(v[0] @ e), different)


def test_fused_is_the_weighted_sum_and_keeps_classic_coverage():
    fused = create_embedder("anim+classic")
    a, c = create_embedder("anim"), create_embedder("classic")
    assert fused.dim == a.dim + c.dim and 0 < fused.weight < 1
    im, other = frame("bison"), frame("alien", bg=(230, 210, 160))
    f = fused.embed([im, other])
    va, vc = a.embed([im, other]), c.embed([im, other])
    w = fused.weight
    want = w * (va[0] @ va[1]) * c.coverage(vc[:1])[0] * c.coverage(vc[1:])[0] + (1 - w) * (vc[0] @ vc[1])
    assert f[0] @ f[1] == pytest.approx(want, abs=1e-5)
    sketch = make_sketch(im, np.random.default_rng(1))
    assert np.allclose(fused.coverage(fused.embed([sketch])), c.coverage(c.embed([sketch])), atol=1e-5)
    assert create_embedder("anim+classic:0.3").spec == "anim+classic:0.3"
    with pytest.raises(EmbedderError, match="between 0 and 1"):
        create_embedder("anim+classic:1.5")
    with pytest.raises(EmbedderError, match="unknown anim variant"):
        create_embedder("anim:v9")


def test_corrupt_weights_file_is_one_clear_line(tmp_path, monkeypatch, library):
    bad = tmp_path / "anim-v1.safetensors"
    data = bytearray(anim.WEIGHTS_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(anim, "WEIGHTS_FILE", bad)
    with pytest.raises(EmbedderError, match=r"corrupt anim weights file .*reinstall matcher"):
        create_embedder("anim")
    res = CliRunner().invoke(
        app, ["index", "add", "--index", str(tmp_path / "idx"), "--model", "anim", "--title", "A",
              str(library["Sunny Farm"][0])],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and "corrupt anim weights file" in res.output
    assert str(bad) in res.output and "Traceback" not in res.output


def test_not_a_weights_file_is_one_clear_line(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(EmbedderError, match="not an anim weights file"):
        create_embedder("anim", pretrained=str(junk))


def test_index_built_with_other_weights_is_refused(tmp_path, library):
    """A retrained weights file (here: the shipped one with its head nudged) is another model: an index
    built with it is refused with the shipped weights, and the other way round."""
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "retrained.safetensors"
    shutil.copyfile(anim.WEIGHTS_FILE, other)
    tensors = load_file(str(other))
    tensors["head.b"] = tensors["head.b"] + np.float32(0.01)
    from safetensors import safe_open

    with safe_open(str(anim.WEIGHTS_FILE), "np") as f:
        meta = f.metadata()
    save_file(tensors, str(other), metadata=meta)

    idx = tmp_path / "idx"
    m = Matcher.create(idx, model="anim")
    m.add(library["Sunny Farm"][:3], title="Sunny Farm")
    assert Matcher.open(idx).embedder.fingerprint == m.embedder.fingerprint
    with pytest.raises(MatcherError, match="model mismatch"):
        Matcher.open(idx, pretrained=str(other))

    idx2 = tmp_path / "idx2"
    Matcher.create(idx2, model="anim", pretrained=str(other)).add(library["Night Patrol"][:2], title="NP")
    assert Matcher.open(idx2).embedder.pretrained == str(other)  # recorded, found again
    Path(other).unlink()
    with pytest.raises(MatcherError, match="cannot read the anim weights"):
        Matcher.open(idx2)


def test_anim_index_matches_through_the_cli(tmp_path, library):
    idx = tmp_path / "idx"
    run = CliRunner().invoke
    for title in ("Sunny Farm", "Night Patrol"):
        res = run(app, ["index", "add", "--index", str(idx), "--model", "anim+classic", "--title", title,
                        *[str(p) for p in library[title][:8]]])  # fmt: skip
        assert res.exit_code == 0, res.output
    q = tmp_path / "q.png"
    draw_frame("Night Patrol", 500).save(q)
    res = run(app, ["match", "--index", str(idx), "--json", str(q)])
    assert res.exit_code == 0, res.output
    assert '"candidates": [{"title": "Night Patrol"' in res.output


def test_anim_never_imports_torch():
    code = (
        "import sys; from matcher.embed import create_embedder; from PIL import Image;"
        "create_embedder('anim+classic').embed([Image.new('RGB', (64, 64))]);"
        "import matcher.api, matcher.cli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
