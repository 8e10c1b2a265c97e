"""The clip path, exercised with a tiny randomly initialised open_clip model saved to a checkpoint
file and loaded back through `--pretrained FILE`, exactly as a user's real weights are."""

from __future__ import annotations

import json

import pytest
from conftest import draw_frame
from typer.testing import CliRunner

from matcher import Matcher, MatcherError
from matcher.cli import app

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A models dir holding an architecture JSON (architectures are data) and two checkpoints."""
    d = tmp_path_factory.mktemp("models")
    (d / "matcher-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(d)
    for name, seed in (("tiny.pt", 0), ("other.pt", 1)):
        torch.manual_seed(seed)
        model = open_clip.create_model("matcher-tiny")
        torch.save(model.state_dict(), d / name)
    return d


def test_clip_index_and_match_through_a_checkpoint_file(tmp_path, tiny_models, library):
    idx = tmp_path / "idx"
    env = {"MATCHER_MODELS": str(tiny_models)}
    runner = CliRunner()
    for title in ("Sunny Farm", "Night Patrol"):
        res = runner.invoke(
            app,
            [
                "index",
                "add",
                "--index",
                str(idx),
                "--model",
                "clip:matcher-tiny",
                "--pretrained",
                str(tiny_models / "tiny.pt"),
                "--title",
                title,
                *map(str, library[title][:10]),
            ],
            env=env,
        )
        assert res.exit_code == 0, res.output
    info = json.loads(runner.invoke(app, ["index", "info", "--index", str(idx), "--json"]).output)
    assert info["model"] == "clip:matcher-tiny" and info["dim"] == 32
    assert info["pretrained"] == str(tiny_models / "tiny.pt")

    m = Matcher.open(idx, models_dir=tiny_models)
    assert m.embedder.spec == "clip:matcher-tiny"
    v = m.embedder.embed([draw_frame("Sunny Farm", 1)])
    assert v.shape == (1, 32) and abs(float((v**2).sum()) - 1.0) < 1e-4
    r = m.match(library["Sunny Farm"][3])  # an indexed still finds itself even with random weights
    assert r.evidence[0].reference == str(library["Sunny Farm"][3])
    assert r.evidence[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_other_weights_are_refused(tmp_path, tiny_models, library):
    idx = tmp_path / "idx"
    m = Matcher.create(
        idx, model="clip:matcher-tiny", pretrained=str(tiny_models / "tiny.pt"), models_dir=tiny_models
    )
    m.add(library["Ice Kingdom"][:4], title="Ice Kingdom")
    with pytest.raises(MatcherError, match="model mismatch"):
        Matcher.open(idx, pretrained=str(tiny_models / "other.pt"), models_dir=tiny_models)


def test_missing_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_OFFLINE", "1")  # never touch the network in tests
    with pytest.raises(MatcherError) as err:
        Matcher.create(tmp_path / "idx", model="clip", models_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "--pretrained" in msg and str(tmp_path / "empty" / "ViT-B-32-laion2b_s34b_b79k.safetensors") in msg
    assert "\n" not in msg


def test_missing_checkpoint_file_and_unknown_arch(tmp_path, tiny_models):
    with pytest.raises(MatcherError, match="checkpoint file not found"):
        Matcher.create(
            tmp_path / "a",
            model="clip:matcher-tiny",
            pretrained=str(tmp_path / "nope.pt"),
            models_dir=tiny_models,
        )
    with pytest.raises(MatcherError, match="unknown open_clip architecture"):
        Matcher.create(tmp_path / "b", model="clip:No-Such-Arch", pretrained="x.pt", models_dir=tiny_models)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MatcherError, match="cannot load"):
        Matcher.create(
            tmp_path / "c",
            model="clip:matcher-tiny",
            pretrained=str(tmp_path / "junk.pt"),
            models_dir=tiny_models,
        )


def test_clip_without_network_fails_fast_naming_the_file_and_leaving_no_models_dir(tmp_path, library):
    import time

    models = tmp_path / "models"
    # port 9 on this host refuses connections: the hub is unreachable, as on an offline machine
    env = {"MATCHER_MODELS": str(models), "HF_ENDPOINT": "http://127.0.0.1:9"}
    t0 = time.monotonic()
    res = CliRunner().invoke(
        app,
        ["index", "add", "--index", str(tmp_path / "idx"), "--model", "clip", "--title", "T"]
        + [str(library["Sunny Farm"][0])],
        env=env,
    )
    assert time.monotonic() - t0 < 15
    assert res.exit_code == 2
    msg = res.stderr
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors" in msg
    assert str(models.absolute() / "ViT-B-32-laion2b_s34b_b79k.safetensors") in msg
    assert "--pretrained" in msg and "--model" not in msg  # `match` has --pretrained, not --model
    assert not models.exists()
