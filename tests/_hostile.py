"""Builders for a small reference library and a hostile dump (used by test_dump / test_html_chromium).

Every file is generated here, deterministically; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TITLES = ("Alpha Squadron", "Beta <Bros>", "Gamma & Co")


def cel(title_idx: int, variant: int, size=(320, 240)) -> Image.Image:
    """A flat-colour 'animation cel': a title-specific palette and layout, a variant-specific pose."""
    rng = np.random.default_rng(1000 * title_idx + variant)
    palettes = [
        [(230, 60, 50), (250, 220, 80), (40, 40, 90)],
        [(40, 160, 80), (200, 240, 255), (120, 60, 20)],
        [(150, 60, 200), (255, 160, 200), (20, 120, 140)],
    ]
    pal = palettes[title_idx]
    im = Image.new("RGB", size, pal[1])
    d = ImageDraw.Draw(im)
    w, h = size
    if title_idx == 0:
        for i in range(6):
            x = int(rng.integers(0, w - 60))
            d.rectangle([x, 20 + i * 30, x + 60, 40 + i * 30], fill=pal[0])
        d.ellipse([w // 3, h // 3, w // 3 + 80, h // 3 + 80], fill=pal[2])
    elif title_idx == 1:
        for i in range(0, w, 40):
            d.line([i, 0, i + int(rng.integers(-30, 30)), h], fill=pal[0], width=8)
        d.polygon([(w // 2, 20), (w - 40, h - 30), (40, h - 30)], fill=pal[2])
    else:
        for _ in range(12):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            d.ellipse([x, y, x + 40, y + 40], fill=pal[0])
        d.rectangle([20, h - 60, w - 20, h - 20], fill=pal[2])
    return im


def noise(seed: int = 7, size=(200, 150)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_references(root: Path) -> dict[str, list[Path]]:
    """Reference stills: 4 per title."""
    out: dict[str, list[Path]] = {}
    for ti, title in enumerate(TITLES):
        d = root / f"t{ti}"
        d.mkdir(parents=True, exist_ok=True)
        out[title] = []
        for v in range(4):
            p = d / f"ref{v}.png"
            cel(ti, v).save(p)
            out[title].append(p)
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header claiming 10 Gpx; only a tiny IDAT follows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def psd_bytes(im: Image.Image) -> bytes:
    """A minimal RGB PSD (no layers, raw composite image data)."""
    im = im.convert("RGB")
    w, h = im.size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    planes = b"".join(im.getchannel(c).tobytes() for c in "RGB")
    return header + struct.pack(">I", 0) + struct.pack(">I", 0) + struct.pack(">I", 0) + b"\x00\x00" + planes


def save_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_video(
    path: Path, frames: list[Image.Image], fps: int = 10, seconds_each: float = 1.0, codec: str = "mpeg4"
) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].size
        s.pix_fmt = "yuv420p"
        for im in frames:
            for _ in range(int(fps * seconds_each)):
                for pkt in s.encode(av.VideoFrame.from_image(im)):
                    c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def make_dump(root: Path, outside: Path) -> dict[str, tuple[str, str | None]]:
    """Build the hostile dump; returns {report path: (expected status, expected title or None)}.

    Paths that are not valid UTF-8 are keyed by their report form (undecodable bytes as \\xNN).
    """
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    exp: dict[str, tuple[str, str | None]] = {}

    def put(rel: str, data: bytes, status: str, title: str | None = None) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = (status, title)
        return p

    A, B, C = TITLES
    # good images, one per format, recognised by content (some with misleading extensions)
    put("good/a.png", save_bytes(cel(0, 1).resize((300, 225)), "PNG"), "matched", A)
    put("good/b.jpg", save_bytes(cel(1, 2), "JPEG", quality=90), "matched", B)
    put("good/c.webp", save_bytes(cel(2, 0), "WEBP", quality=90), "matched", C)
    put("good/d.bmp", save_bytes(cel(0, 3), "BMP"), "matched", A)
    put("good/e.tga", save_bytes(cel(1, 0), "TGA"), "matched", B)
    put("good/f.psd", psd_bytes(cel(2, 3)), "matched", C)
    put("good/really_a_jpeg.txt", save_bytes(cel(2, 1), "JPEG", quality=90), "matched", C)
    put("good/grey.png", save_bytes(Image.new("RGB", (200, 150), (128, 128, 128)), "PNG"), "unknown")
    # multi-page TIFF: 2 pages of A, 1 of B -> verdict A
    tif = io.BytesIO()
    cel(0, 0).save(tif, format="TIFF", save_all=True, append_images=[cel(0, 2), cel(1, 1)])
    put("multi/pages.tiff", tif.getvalue(), "matched", A)
    # animated GIF: 3 frames of C
    gif = io.BytesIO()
    frames = [cel(2, i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("multi/anim.gif", gif.getvalue(), "matched", C)
    # video: 3 s of B
    (root / "video").mkdir(parents=True, exist_ok=True)
    write_video(root / "video" / "clip.mp4", [cel(1, 1), cel(1, 2), cel(1, 3)])
    exp["video/clip.mp4"] = ("matched", B)
    # the other containers an investigator meets, each recognised by content
    for name, codec, ti in (
        ("clip.webm", "libvpx", 0),
        ("clip.mkv", "mpeg4", 2),
        ("clip.avi", "mpeg4", 0),
        ("clip.mov", "mpeg4", 2),
    ):
        write_video(root / "video" / name, [cel(ti, 1), cel(ti, 2)], seconds_each=0.5, codec=codec)
        exp[f"video/{name}"] = ("matched", TITLES[ti])
    clip = (root / "video" / "clip.mp4").read_bytes()
    put("bad/truncated.mp4", clip[: len(clip) // 2], "error")  # moov atom at the end: cut off
    # broken things
    good_png = save_bytes(cel(0, 0), "PNG")
    put("bad/corrupt.png", good_png[:40] + bytes(range(256)) * 8, "error")
    put("bad/truncated.jpg", save_bytes(cel(1, 0), "JPEG")[:900], "error")
    put("bad/bomb.png", bomb_png(), "error")  # 10 Gpx: refused by Pillow's own guard at open
    tiny = bytearray(save_bytes(Image.new("P", (1, 1)), "GIF"))
    tiny[6:10] = struct.pack("<HH", 12000, 12000)  # 144 Mpx: under Pillow's hard limit, over ours
    put("bad/bomb_small.gif", bytes(tiny), "error")
    put("bad/text.png", b"this is not a png, it is a note\n" * 10, "skipped")
    put("bad/empty.png", b"", "error")
    put("bad/fake.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(0) + b"\x00" * 200, "error")
    put("notes/readme.txt", "meeting notes: ünïcödé\n".encode(), "skipped")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("inner.png", good_png)
    put("notes/archive.zip", zbuf.getvalue(), "skipped")
    # links
    (outside / "secret.png").write_bytes(good_png)
    ln = root / "links"
    ln.mkdir()
    os.symlink(outside / "secret.png", ln / "outside.png")
    os.symlink("..", ln / "parent_loop")
    os.symlink("loop_b", ln / "loop_a")
    os.symlink("loop_a", ln / "loop_b")
    os.symlink("../good/a.png", ln / "inside.png")
    os.symlink("missing.png", ln / "dangling.png")
    for n in ("outside.png", "parent_loop", "loop_a", "loop_b", "inside.png", "dangling.png"):
        exp[f"links/{n}"] = ("skipped", None)
    # a FIFO named like an image: opening it would block forever
    os.mkfifo(root / "links" / "pipe.png")
    exp["links/pipe.png"] = ("skipped", None)
    # a 20-deep tree
    deep = "/".join(f"d{i}" for i in range(20))
    put(f"{deep}/deep.png", save_bytes(cel(2, 2), "PNG"), "matched", C)
    # hostile names
    put("names/ユニコード 名前.png", save_bytes(cel(0, 2), "PNG"), "matched", A)
    put("names/new\nline.png", save_bytes(cel(1, 3), "PNG"), "matched", B)
    put("names/<script>document.title='pwned'</script>.png", save_bytes(cel(2, 1), "PNG"), "matched", C)
    put('names/"><img src=x onerror=alert(1)>.png', b"not an image", "skipped")
    bad = os.fsencode(str(root / "names")) + b"/bad\xffbyte.png"
    with open(bad, "wb") as fh:
        fh.write(save_bytes(cel(0, 1), "PNG"))
    exp["names/bad\\xffbyte.png"] = ("matched", A)
    return exp


def build_world(base: Path) -> dict:
    """References, a tiny real classic index over them, and the hostile dump."""
    from matcher.api import Matcher

    refs = make_references(base / "refs")
    index = base / "index"
    m = Matcher.create(index, model="classic")
    for title, paths in refs.items():
        m.add(paths, title=title)
    m.close()
    expected = make_dump(base / "dump", base / "outside")
    return {"base": base, "index": index, "dump": base / "dump", "expected": expected}
