"""`classic`: a weights-free descriptor computed from pixels, so matcher works on a fresh offline machine.

Numpy + Pillow only (never torch): it must load instantly for `match cel.png`. Three parts, each
L2-normalised, weighted and concatenated, then L2-normalised again:
- colour layout: mean YCbCr over 1x1, 2x2 and 4x4 grids (where things are, and in which colours);
- palette: a coarse hue/saturation/grey histogram (the production's colour "look", robust to crops);
- structure: gradient-orientation histograms over a 4x4 grid (lines and edges, so an inked sketch
  and its coloured frame agree).
The image is trimmed of uniform borders first (letterboxing), and every part is pooled with its mirror
image so that a horizontally flipped copy gives the same vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from matcher.embedders import l2_normalise

_SIDE = 64  # working resolution: large enough for line structure, small enough to be fast
_VERSION = "classic-v1"


def trim_borders(im: Image.Image, tolerance: float = 12.0, max_fraction: float = 0.3) -> Image.Image:
    """Crop uniform bars (letterbox / pillarbox / scanner margins) from each side of an RGB image."""
    small = im if max(im.size) <= 256 else im.copy()
    if small is not im:
        small.thumbnail((256, 256))
    a = np.asarray(small, dtype=np.float32)
    h, w = a.shape[:2]
    if h < 8 or w < 8:
        return im

    def flat(line: np.ndarray) -> bool:
        return float(line.std(axis=0).max()) < tolerance

    top, bottom, left, right = 0, h, 0, w
    while top < h * max_fraction and flat(a[top]):
        top += 1
    while h - bottom < h * max_fraction and flat(a[bottom - 1]):
        bottom -= 1
    while left < w * max_fraction and flat(a[top:bottom, left]):
        left += 1
    while w - right < w * max_fraction and flat(a[top:bottom, right - 1]):
        right -= 1
    if (top, bottom, left, right) == (0, h, 0, w) or bottom - top < 8 or right - left < 8:
        return im
    sx, sy = im.size[0] / w, im.size[1] / h
    return im.crop((round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)))


def _grid_means(x: np.ndarray, cells: int) -> np.ndarray:
    h, w = x.shape[:2]
    return x.reshape(cells, h // cells, cells, w // cells, -1).mean(axis=(1, 3)).reshape(-1)


def _colour_layout(ycc: np.ndarray) -> np.ndarray:
    return np.concatenate([_grid_means(ycc, c) for c in (1, 2, 4)])


def _palette(rgb: np.ndarray) -> np.ndarray:
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = (np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) + 360.0) % 360.0
    chroma = sat > 0.2
    hue_bin = np.minimum((hue / 30.0).astype(int), 11)  # 12 hues
    sat_bin = np.where(sat > 0.6, 1, 0)
    val_bin = np.minimum((mx * 4).astype(int), 3)  # 4 grey levels for achromatic pixels
    idx = np.where(chroma, hue_bin * 2 + sat_bin, 24 + val_bin)
    hist = np.bincount(idx.reshape(-1), minlength=28).astype(np.float32)
    return np.sqrt(hist / hist.sum())  # Hellinger: rare colours still count


def _structure(grey: np.ndarray, cells: int = 4, bins: int = 8) -> np.ndarray:
    gy, gx = np.gradient(grey)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation: ink edges of either polarity agree
    b = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
    h, w = grey.shape
    cy = np.repeat(np.arange(cells), h // cells)[:, None]
    cx = np.repeat(np.arange(cells), w // cells)[None, :]
    idx = (cy * cells + cx) * bins + b
    hist = np.bincount(idx.reshape(-1), weights=mag.reshape(-1), minlength=cells * cells * bins)
    hist = hist.reshape(cells * cells, bins)
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6  # per-cell: contrast-invariant
    return np.sqrt(np.minimum(hist, 0.5)).reshape(-1)


def _describe(rgb_img: Image.Image) -> np.ndarray:
    rgb = np.asarray(rgb_img, dtype=np.float32) / 255.0
    ycc = np.asarray(rgb_img.convert("YCbCr"), dtype=np.float32) / 255.0
    parts = (
        (_colour_layout(ycc), 1.0),
        (_palette(rgb), 0.8),
        (_structure(ycc[..., 0]), 1.2),
    )
    return np.concatenate([w * p / (np.linalg.norm(p) + 1e-9) for p, w in parts])


class ClassicEmbedder:
    """Weights-free animation descriptor; see the module docstring for what it measures."""

    spec = "classic"
    pretrained = None

    def __init__(self) -> None:
        probe = Image.new("RGB", (_SIDE, _SIDE))
        self.dim = int(_describe(probe).shape[0])
        self.fingerprint = hashlib.sha256(f"{_VERSION}:{_SIDE}:{self.dim}".encode()).hexdigest()[:16]

    def prepare(self, image: Image.Image) -> Image.Image:
        """Decode-side work: trim borders and shrink to the working size (cheap, picklable result)."""
        image = trim_borders(image.convert("RGB"))
        return image.resize((_SIDE, _SIDE), Image.Resampling.BOX, reducing_gap=2.0)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            small = self.prepare(im) if im.size != (_SIDE, _SIDE) or im.mode != "RGB" else im
            mirrored = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            # Pooling with the mirror makes a flipped copy embed identically.
            out[i] = _describe(small) + _describe(mirrored)
        return l2_normalise(out)
