"""Query transforms for the accuracy benchmark: how leaked files differ from clean frames.

Every transform is a pure function ``f(img: PIL.Image, seed: int) -> PIL.Image`` (RGB in, RGB out) and is
deterministic for a given seed.  numpy + PIL only.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps


def clean(img: Image.Image, seed: int = 0) -> Image.Image:
    return img


def jpeg25(img: Image.Image, seed: int = 0) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=25)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop60(img: Image.Image, seed: int = 0) -> Image.Image:
    """A 60% x 60% window (36% of the area) at a seeded position."""
    rng = random.Random(seed)
    w, h = img.size
    cw, ch = max(1, round(0.6 * w)), max(1, round(0.6 * h))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def letterbox(img: Image.Image, seed: int = 0) -> Image.Image:
    """Black bars: top/bottom bars of 15% of the height each and side bars of 5% of the width each."""
    w, h = img.size
    bh, bw = round(0.15 * h), round(0.05 * w)
    out = Image.new("RGB", (w + 2 * bw, h + 2 * bh), (0, 0, 0))
    out.paste(img, (bw, bh))
    return out


def hflip(img: Image.Image, seed: int = 0) -> Image.Image:
    return ImageOps.mirror(img)


def gray(img: Image.Image, seed: int = 0) -> Image.Image:
    return img.convert("L").convert("RGB")


def small320(img: Image.Image, seed: int = 0) -> Image.Image:
    """Re-scaled so the long side is 320 px (upscaled when smaller, as a re-encoded copy would be)."""
    w, h = img.size
    s = 320 / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def _ink(img: Image.Image) -> np.ndarray:
    """Boolean ink mask: strong luminance gradients, as a tracer would ink the drawing's outlines."""
    g = np.asarray(img.convert("L").filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1, :] = g[2:, :] - g[:-2, :]
    mag = np.hypot(gx, gy)
    thr = max(24.0, float(np.percentile(mag, 88)))
    return mag > thr


def lineart(img: Image.Image, seed: int = 0) -> Image.Image:
    """An inked sketch of the frame: dark lines on white paper, no colour, no shading."""
    ink = _ink(img)
    rng = np.random.default_rng(seed)
    # pencil-like: lines slightly grey and uneven
    tone = rng.integers(0, 60, size=ink.shape, dtype=np.int16)
    out = np.where(ink, tone, 255).astype(np.uint8)
    return Image.fromarray(out, "L").convert("RGB")


def cel(img: Image.Image, seed: int = 0) -> Image.Image:
    """A flat-coloured cel: smoothed, posterised to a few flat colours, with black ink lines on top."""
    # smoothing at half size (a 5x5 median at full size costs 0.3 s on a 640 px frame)
    w, h = img.size
    half = img.resize((max(1, w // 2), max(1, h // 2)), Image.BOX).filter(ImageFilter.MedianFilter(3))
    flat = half.resize((w, h), Image.NEAREST)
    q = flat.quantize(colors=8, method=Image.Quantize.MEDIANCUT).convert("RGB")
    arr = np.asarray(q).copy()
    arr[_ink(img)] = (20, 20, 20)
    return Image.fromarray(arr)


def notes(img: Image.Image, seed: int = 0) -> Image.Image:
    """Correction notes: red boxes, red scribbles and handwritten-ish text over part of the frame."""
    rng = random.Random(seed)
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    lw = max(2, round(min(w, h) / 100))
    red = (225, 20, 30)
    for _ in range(2):
        bw, bh = rng.uniform(0.2, 0.4) * w, rng.uniform(0.2, 0.4) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        d.rectangle([x, y, x + bw, y + bh], outline=red, width=lw)
    # scribbles: a few jagged polylines
    for _ in range(3):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        pts = [(x, y)]
        for _ in range(8):
            x = min(w - 1, max(0, x + rng.uniform(-0.08, 0.08) * w))
            y = min(h - 1, max(0, y + rng.uniform(-0.05, 0.05) * h))
            pts.append((x, y))
        d.line(pts, fill=red, width=lw)
    # text, drawn at 1x and scaled up so it reads as a hand note
    txt = rng.choice(["FIX HAND", "redo eyes!", "timing 2s", "more shadow", "KEY POSE", "check BG"])
    layer = Image.new("L", (8 * len(txt) + 4, 14), 0)
    ImageDraw.Draw(layer).text((2, 1), txt, fill=255)
    scale = max(1.0, 0.35 * w / layer.width)
    layer = layer.resize((round(layer.width * scale), round(layer.height * scale)), Image.NEAREST)
    tx = round(rng.uniform(0, max(1, w - layer.width)))
    ty = round(rng.uniform(0, max(1, h - layer.height)))
    out.paste(Image.new("RGB", layer.size, red), (tx, ty), layer)
    return out


TRANSFORMS = {
    "clean": clean,
    "jpeg25": jpeg25,
    "crop60": crop60,
    "letterbox": letterbox,
    "hflip": hflip,
    "gray": gray,
    "small320": small320,
    "lineart": lineart,
    "cel": cel,
    "notes": notes,
}
