"""matcher.run.pipeline: parallel decode + batched embed gives the same vectors, in input order."""

from __future__ import annotations

import os

import numpy as np
from conftest import draw_frame, write_frames, write_video

from matcher.embed.classic import ClassicEmbedder
from matcher.run.pipeline import embed_stills


def test_parallel_matches_inline_in_input_order(tmp_path):
    paths = write_frames(tmp_path / "a", "Sunny Farm", range(7)) + write_frames(
        tmp_path / "b", "Ice Kingdom", [1, 2]
    )
    bad = tmp_path / "a" / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    items = [tmp_path / "a", draw_frame("Night Patrol", 5), tmp_path / "missing.png", tmp_path / "b"]
    emb = ClassicEmbedder()
    par = list(embed_stills(items, emb, workers=2, batch_size=3))
    inline = list(embed_stills(items, emb, workers=0))
    assert [(e.still.path if e.still else e.error.path) for e in par] == [
        (e.still.path if e.still else e.error.path) for e in inline
    ]
    order = [e.still.path if e.still else "ERR:" + os.path.basename(e.error.path) for e in par]
    assert order == [str(p) for p in paths[:7]] + ["ERR:zz_bad.png", "<image 1>", "ERR:missing.png"] + [
        str(p) for p in paths[7:]
    ]
    vec_par = np.stack([e.vector for e in par if e.vector is not None])
    vec_inline = np.stack([e.vector for e in inline if e.vector is not None])
    assert np.array_equal(vec_par, vec_inline)
    assert np.allclose(vec_par[0], emb.embed([draw_frame("Sunny Farm", 0)])[0], atol=1e-6)
    assert all(e.still.sha256 for e in par if e.still and not e.still.path.startswith("<"))
    assert all(e.still.image is None for e in par if e.still)


def test_keep_images_and_video_ranges(tmp_path):
    video = tmp_path / "ep.mkv"
    write_video(video, "Night Patrol", seconds=3.0)
    paths = write_frames(tmp_path / "f", "Sunny Farm", range(2))
    out = list(embed_stills([video, *paths], ClassicEmbedder(), workers=2, distinct=True, keep_images=True))
    stills = [e.still for e in out]
    assert [s.timestamp for s in stills[:3]] == [0.0, 1.0, 2.0]
    assert all(s.timestamp_end is not None and s.timestamp_end >= s.timestamp for s in stills[:3])
    assert all(s.image is not None and max(s.image.size) <= 512 for s in stills)


class _CrashOn:
    """An embedder whose decode-side transform kills its worker on one image size."""

    dim = 3
    spec, fingerprint, pretrained, device, uses_torch, coverage = "crash-on", "0", None, "cpu", False, None

    def prepare(self, image):
        if image.size == (321, 240):
            os._exit(3)
        return np.asarray(image.resize((4, 4)), dtype=np.float32).mean(axis=(0, 1))

    def embed(self, arrays):
        return np.stack(arrays)

    embed_prepared = embed


def test_a_crashing_decoder_fails_only_its_file(tmp_path):
    paths = write_frames(tmp_path, "Sunny Farm", range(6))
    draw_frame("Sunny Farm", 99, size=(321, 240)).save(tmp_path / "sunny_farm_0003.png")  # the killer
    out = list(embed_stills([tmp_path], _CrashOn(), workers=2, batch_size=2))
    assert len(out) == 6
    errors = [e for e in out if e.error is not None]
    assert len(errors) == 1 and errors[0].error.path.endswith("0003.png")
    assert "crashed" in errors[0].error.reason
    assert [e.still.path for e in out if e.still] == [
        str(p) for p in paths if not str(p).endswith("0003.png")
    ]
