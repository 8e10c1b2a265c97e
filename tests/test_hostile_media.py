"""Media that lies or does not fit 8-bit RGB: video frames larger than their header, 16-bit and
float images, AVIF. Real files, decoded by the real paths (`match`, `index add`, dump mode)."""

from __future__ import annotations

import fractions
import io
import os

import av
import numpy as np
import pytest
from PIL import Image

from matcher import Matcher
from matcher.decode import decoder
from matcher.run import dump

GIANT = 12000  # 144 Mpx: over the 80 Mpx limit; one decoded grey frame is 144 MB


@pytest.fixture(scope="module")
def giant_video(tmp_path_factory):
    """An AVI whose first frame (all the header and stream probing see) is 64x64 and whose next
    frames are 12000x12000 MJPEG: only checking each decoded frame catches it."""

    def jpeg(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (side, side), 128).save(buf, "JPEG", quality=50)
        return buf.getvalue()

    path = tmp_path_factory.mktemp("giant") / "giant.avi"
    small, big = jpeg(64), jpeg(GIANT)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.time_base = fractions.Fraction(1, 1)
        stream.width, stream.height = 64, 64
        stream.pix_fmt = "yuvj420p"
        for i, data in enumerate([small, big, big]):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = i
            out.mux(packet)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.width == 64  # the header's claim
    return path


def _in_child(fn) -> tuple[float, str]:
    """Run fn in a forked child: (the child's peak RSS in MB, what fn returned or raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest, whatever happens
        try:
            os.close(r)
            try:
                msg = str(fn())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
                msg = f"raised {type(exc).__name__}: {exc}"
            os.write(w, msg.encode()[:2000])
        finally:
            os._exit(0)
    os.close(w)
    _, _, usage = os.wait4(pid, 0)
    with os.fdopen(r, "rb") as f:
        return usage.ru_maxrss / 1024, f.read().decode()


def _dump_decode(path):
    out = decoder.decode_file(decoder.Task(idx=0, rel=path.name, abspath=os.fsencode(path)), decoder.Limits())
    return out["status"], out["reason"], len(out["parts"])


@pytest.mark.parametrize(
    "decode",
    [
        _dump_decode,  # dump mode's worker
        lambda p: [s.timestamp for s in decoder.iter_stills(p, every=1.0)],  # the Python API
        lambda p: [s.timestamp for s in decoder.iter_stills(p, every=1.0, distinct=True)],  # `index add`
    ],
    ids=["dump", "match", "index-add"],
)
def test_video_frames_larger_than_the_header_are_refused_before_conversion(giant_video, decode):
    base, _ = _in_child(lambda: 0)
    peak, said = _in_child(lambda: decode(giant_video))
    assert "12000x12000" in said and "limit" in said and "the header said 64x64" in said, said
    # one decoded grey frame (144 MB) is the most it costs; converting frames cost 2-2.7 GB before
    assert peak - base < 320, f"{peak - base:.0f} MB over the baseline"


# ------------------------------------------------------------------------------ deep images, AVIF
@pytest.fixture(scope="module")
def index(built_index):
    m = Matcher.open(built_index)
    yield m
    m.close()


def _grey_copies(tmp_path, frame_path):
    """The same picture as 8-bit grey PNG, 16-bit grey PNG and 32-bit float TIFF (0..1)."""
    grey = np.asarray(Image.open(frame_path).convert("L"))
    paths = {"8-bit": tmp_path / "grey8.png", "16-bit": tmp_path / "grey16.png", "float": tmp_path / "f.tif"}
    Image.fromarray(grey, "L").save(paths["8-bit"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["16-bit"])
    Image.fromarray(grey.astype(np.float32) / 255.0, "F").save(paths["float"])
    assert Image.open(paths["16-bit"]).mode.startswith("I") and Image.open(paths["float"]).mode == "F"
    return paths


def test_16_bit_and_float_images_match_like_their_8_bit_copy(tmp_path, index, library):
    paths = _grey_copies(tmp_path, library["Night Patrol"][3])
    ref = index.match(paths["8-bit"])
    assert ref.error is None and ref.title == "Night Patrol"
    for kind in ("16-bit", "float"):
        got = index.match(paths[kind])
        assert got.error is None, got.error
        assert got.title == ref.title and abs(got.confidence - ref.confidence) < 0.02, (kind, got)


def test_16_bit_images_in_a_dump_match_like_their_8_bit_copy(tmp_path, index, library):
    d = tmp_path / "dump"
    d.mkdir()
    _grey_copies(d, library["Night Patrol"][3])
    out = tmp_path / "r.jsonl"
    dump.run_dump(d, index, out=out, workers=1, quiet=True)
    from matcher.write.report import read_records

    by = {r["path"]: r for r in read_records(out) if r["record"] == "file"}
    assert by["grey8.png"]["title"] == "Night Patrol"
    for name in ("grey16.png", "f.tif"):
        assert by[name]["title"] == by["grey8.png"]["title"], by[name]
        assert abs(by[name]["confidence"] - by["grey8.png"]["confidence"]) < 0.02


def test_avif_is_decoded_when_pillow_can(tmp_path, index, library):
    Image.init()
    assert "AVIF" in Image.OPEN  # the Pillow wheels matcher installs decode AVIF
    path = tmp_path / "cel.avif"
    Image.open(library["Ice Kingdom"][2]).convert("RGB").save(path, quality=90)
    assert index.match(path).title == "Ice Kingdom"
    d = tmp_path / "dump"
    d.mkdir()
    (d / "cel.avif").write_bytes(path.read_bytes())
    out = tmp_path / "r.jsonl"
    dump.run_dump(d, index, out=out, workers=1, quiet=True)
    from matcher.write.report import read_records

    (rec,) = [r for r in read_records(out) if r["record"] == "file"]
    assert rec["status"] == "matched" and rec["title"] == "Ice Kingdom", rec
