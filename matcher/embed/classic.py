"""`classic`: a weights-free animation descriptor computed from pixels (numpy + Pillow only, never torch).

Leaked files are rarely clean frames: sketches, flat cels, crops, frames with notes drawn on, re-encoded,
letterboxed, grey or mirrored copies. Every part below was kept because it measurably helped on the
accuracy benchmark (scripts/bench_accuracy.py, docs/BENCHMARKS.md "Accuracy (issue 3)").

1. Preparation: uniform borders are trimmed (letterbox / pillarbox / scanner margins), then the still is
   shrunk to 128x128 (BOX filter).
2. Blocks, each L2-normalised and weighted (`WEIGHTS`):
   - luminance: an 8x8 thumbnail (centred) and an 8-bin histogram;
   - colour: a chroma (Cb, Cr) 8x8 thumbnail and a hue x saturation x value palette histogram (the
     production's colour "look", robust to crops);
   - structure: structure-tensor orientation of the strongest 25% of edges, as 8-bin histograms over a
     4x4 grid and globally, plus the edge density on an 8x8 grid. The tensor orientation is polarity-free and
     merges both sides of a drawn line, so an inked sketch and its coloured frame agree;
   - texture: log gradient-magnitude spectrum and a rotation-invariant local-binary-pattern histogram
     (flat cel shading vs painted vs rendered).
   Coarse 2x2/4x4 colour layouts were measured too and dropped (the thumbnails do their job better).
3. Flip invariance by construction: grids are pooled with their mirror image (orientation bins mirrored
   too), global histograms are mirror-invariant anyway. The orientation bins are centred on the axes:
   classic-v3 had its bin edges there, so the horizontal and vertical edges of pixel art and cels fell
   into a bin by floating-point noise and a sprite and its mirror could differ by 0.08 in a coordinate
   (classic-v4: within 0.01, the rest is rounding; its box blurs are plain running sums, ~2x faster than
   v3's float32 summed-area tables; docs/BENCHMARKS.md, "Exact mirror, faster descriptor").
4. Missing evidence is "unknown", not "absent": a grey image has no colour blocks and a line-art sketch
   (achromatic, mostly white paper, some dark lines) keeps only its structure blocks. Those blocks are
   zero and the vector is NOT renormalised: every still has the same scale (1 / the norm of all the
   weights), so a vector's squared norm is the share of the descriptor its still provides (`coverage`)
   and a block missing on either side adds nothing to a similarity. Renormalising would inflate a grey
   still's luminance blocks and make grey queries prefer grey references; the scorer divides a query's
   similarities by its coverage instead (scoring.evidence_scale).
   classic-v2 kept unit norm by putting the missing weight on seeded random "spare" dimensions (448 of
   its 727). Their chance overlaps added +-0.02 of noise to every grey-to-grey similarity (a new seed
   alone moved unseen grey top-1 by 3 points); without them unseen grey rose 62.6 -> 67.6% (best still)
   and the vector has 279 dimensions (docs/BENCHMARKS.md, "Without spare dimensions").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

_SIDE = 128  # working resolution: large enough for line structure, small enough to be fast
_VERSION = "classic-v4"
_PREPARED = "matcher.classic.prepared"  # marker in Image.info: already trimmed and shrunk

WEIGHTS = {  # tuned on half of the benchmark's queries (coordinate search), checked on the other half
    "palette": 2.0,
    "lum": 0.3,
    "hog": 1.4,
    "hog_g": 1.5,
    "edens": 0.6,
    "texture": 1.5,
    "thumb_y": 0.8,
    "thumb_c": 0.8,
}
ORDER = tuple(WEIGHTS)
CENTRE: dict[str, float] = {}  # measured: taking the flat direction out of histograms did not help
_CHROMA = {"palette", "thumb_c"}
_LUMA_ONLY_SKETCH = ("lum", "texture", "thumb_y")
EDGE_PERCENTILE = 75.0  # the strongest quarter of the tensor energy counts as "edge / line"
LBP_T = 0.02  # a neighbour counts as brighter above this luminance step
EDENS_N = 8  # edge density grid: 8x8 lets a sketch's lines find their frame (4x4: seen line-art -16 pts)


def _trim_box(
    a: np.ndarray, tolerance: float = 10.0, max_fraction: float = 0.35
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) inside uniform bars (letterbox / pillarbox / margins) of an HxWx3 array."""
    h, w = a.shape[:2]
    if h < 8 or w < 8:
        return 0, 0, w, h
    planes = np.ascontiguousarray(a.transpose(2, 0, 1))  # channel-first: reductions run 3-10x faster
    rows = planes.std(axis=2).max(axis=0) < tolerance  # a row of one colour
    cols = planes.std(axis=1).max(axis=0) < tolerance
    top, bottom, left, right = 0, h, 0, w
    while top < h * max_fraction and rows[top]:
        top += 1
    while h - bottom < h * max_fraction and rows[bottom - 1]:
        bottom -= 1
    while left < w * max_fraction and cols[left]:
        left += 1
    while w - right < w * max_fraction and cols[right - 1]:
        right -= 1
    if bottom - top < 8 or right - left < 8:
        return 0, 0, w, h
    return left, top, right, bottom


def trim_borders(im: Image.Image, tolerance: float = 10.0, max_fraction: float = 0.35) -> Image.Image:
    """Crop uniform bars (letterbox / pillarbox / scanner margins) from each side of an RGB image."""
    small = im.copy()
    small.thumbnail((192, 192))
    box = _trim_box(np.asarray(small, dtype=np.float32), tolerance, max_fraction)
    if box == (0, 0, small.size[0], small.size[1]):
        return im
    sx, sy = im.size[0] / small.size[0], im.size[1] / small.size[1]
    return im.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """Box blur of radius r (edge-padded), as two 1-D running sums: 2r+1 shifted adds per axis beat a
    summed-area table at this size (and carry no cumulative rounding)."""
    k = 2 * r + 1
    h, w = x.shape
    p = np.pad(x, r, mode="edge")
    rows = p[:, 0:w].copy()
    for i in range(1, k):
        rows += p[:, i : i + w]
    out = rows[0:h].copy()
    for i in range(1, k):
        out += rows[i : i + h]
    out *= 1.0 / (k * k)
    return out


def _cells(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of each cell of an n x n grid over a (h, w) plane."""
    h, w = x.shape
    return x.reshape(n, h // n, n, w // n).mean(axis=(1, 3))


def _mirror_pool(grid: np.ndarray) -> np.ndarray:
    """A (n, n, ...) grid summed with its left-right mirror; the left half (plus middle) is kept."""
    n = grid.shape[1]
    return (grid + grid[:, ::-1])[:, : (n + 1) // 2]


def _features(img: Image.Image) -> dict[str, np.ndarray | None]:
    """Raw blocks of a prepared (128x128 RGB) still; None marks a block the still cannot provide."""
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    mx = np.maximum(np.maximum(r, g), b)  # per-channel ufuncs: max(axis=2) over 3 values is ~25x slower
    chroma = mx - np.minimum(np.minimum(r, g), b)
    achromatic = float(np.percentile(chroma, 99.5)) < 0.03
    dark = float((y < 0.45).mean())
    sketch = achromatic and float((y > 0.85).mean()) > 0.5 and 0.005 < dark < 0.4  # dark lines, white paper
    f: dict[str, np.ndarray | None] = {}

    # structure
    ys = _blur(y, 1)
    gx = np.zeros_like(ys)
    gy = np.zeros_like(ys)
    gx[:, 1:-1] = ys[:, 2:] - ys[:, :-2]
    gy[1:-1, :] = ys[2:, :] - ys[:-2, :]
    jxx, jyy, jxy = _blur(gx * gx, 2), _blur(gy * gy, 2), _blur(gx * gy, 2)
    energy = jxx + jyy
    edge = energy > max(1e-3, float(np.percentile(energy, EDGE_PERCENTILE)))
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # orientation across the line, polarity-free
    nb, n = 8, 4
    # bins centred on the axes (bin 0: theta = 0, bin nb/2: +-pi/2): drawn and pixel-art edges are mostly
    # horizontal or vertical, and on a bin boundary rounding would decide their bin and break the mirror
    ob = np.floor(theta * (nb / np.pi) + 0.5).astype(int) % nb
    flip = (-np.arange(nb)) % nb  # a mirror maps orientation bin k to -k
    h, w = y.shape
    cy = (np.arange(h) * n // h)[:, None]
    cx = (np.arange(w) * n // w)[None, :]
    hog = np.bincount(((cy * n + cx) * nb + ob)[edge], minlength=n * n * nb).reshape(n, n, nb)
    hog = hog + hog[:, ::-1][:, :, flip]  # mirror: cell (i, j) <-> (i, n-1-j), orientation k <-> -k
    hog = hog[:, : n // 2].astype(np.float32)
    f["hog"] = np.sqrt(hog / max(1.0, float(hog.sum()))).ravel()
    hg = np.bincount(ob[edge], minlength=nb).astype(np.float32)
    hg = hg + hg[flip]
    f["hog_g"] = np.sqrt(hg / max(1.0, float(hg.sum())))
    f["edens"] = _mirror_pool(_cells(edge.astype(np.float32), EDENS_N)).ravel() - float(edge.mean())
    if sketch:
        for k in _LUMA_ONLY_SKETCH + tuple(_CHROMA):
            f[k] = None
        return f

    # luminance
    ty = _mirror_pool(_cells(y, 8))
    f["thumb_y"] = (ty - ty.mean()).ravel()
    lh = np.bincount(np.minimum((y * 8).astype(int), 7).ravel(), minlength=8).astype(np.float32)
    f["lum"] = np.sqrt(lh / lh.sum())

    # colour
    if achromatic:
        for k in _CHROMA:
            f[k] = None
    else:
        cc = np.stack([_cells((b - y) * 0.564, 8), _cells((r - y) * 0.713, 8)], axis=-1)  # Cb, Cr
        f["thumb_c"] = _mirror_pool(cc).ravel()
        sat = chroma / np.maximum(mx, 1e-3)
        hue = (np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) + 360.0) % 360.0
        hb = np.minimum((hue / 30.0).astype(int), 11)
        pidx = np.where(
            sat > 0.2,
            (hb * 2 + (sat > 0.6)) * 2 + (mx > 0.6),  # 12 hues x 2 saturations x 2 values
            48 + np.minimum((mx * 4).astype(int), 3),  # 4 grey levels
        )
        ph = np.bincount(pidx.ravel(), minlength=52).astype(np.float32)
        f["palette"] = np.sqrt(ph / ph.sum())  # Hellinger: rare colours still count

    # texture
    mag = np.hypot(gx, gy)
    th = np.bincount(np.clip((np.log2(mag + 1e-4) + 9).astype(int), 0, 9).ravel(), minlength=10)
    c0 = y[1:-1, 1:-1]
    pop = np.zeros(c0.shape, dtype=np.int32)  # rotation-invariant LBP: how many neighbours are brighter
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)):
        pop += (y[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] - c0) > LBP_T
    lb = np.bincount(pop.ravel(), minlength=9).astype(np.float32)
    f["texture"] = np.concatenate([np.sqrt(th / th.sum()), np.sqrt(lb / lb.sum())]).astype(np.float32)
    return f


def _dims() -> dict[str, int]:
    probe = Image.fromarray((np.random.default_rng(0).random((_SIDE, _SIDE, 3)) * 255).astype(np.uint8))
    f = _features(probe)
    return {k: int(np.asarray(f[k]).size) for k in ORDER}  # only the weighted blocks take dimensions


class ClassicEmbedder:
    """Weights-free animation descriptor; see the module docstring for what it measures."""

    spec = "classic"
    pretrained = None

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(WEIGHTS, **(weights or {}))
        self._dims = _dims()
        self.dim = sum(self._dims.values())
        self._norm = float(np.sqrt(sum(w * w for w in self.weights.values())))
        key = f"{_VERSION}:{_SIDE}:{self.dim}:{sorted(self.weights.items())}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]

    device = "cpu"
    uses_torch = False

    def prepare(self, image: Image.Image) -> Image.Image:
        """Decode-side work: trim borders and shrink to the working size (cheap, picklable result)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        # shrink first (integer box reduction is cheap), trim the bars on the small copy, then resize
        k = min(image.size) // (2 * _SIDE)
        if k >= 2:
            image = image.reduce(k)
        k = max(image.size) // 160  # the bars are found on a ~160 px probe
        probe = image.reduce(k) if k >= 2 else image
        box = _trim_box(np.asarray(probe, dtype=np.float32))
        sx, sy = image.size[0] / probe.size[0], image.size[1] / probe.size[1]
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        out = image.resize((_SIDE, _SIDE), Image.Resampling.BOX, box=box)
        out.info[_PREPARED] = True
        return out

    def _vector(self, small: Image.Image) -> np.ndarray:
        f = _features(small)
        parts = []
        for k in ORDER:
            v = f[k]
            nv = float(np.linalg.norm(v)) if v is not None else 0.0
            if nv < 1e-4:  # a block this still cannot provide: no evidence either way
                parts.append(np.zeros(self._dims[k], np.float32))
                continue
            v = np.asarray(v, np.float32).ravel()
            if k in CENTRE:
                # histograms share a large common component (all bins >= 0): take out the flat
                # direction so that the block's similarity spans more than 0.9..1.0
                v = v - CENTRE[k] * v.mean()
                nv = float(np.linalg.norm(v))
                if nv < 1e-4:
                    v, nv = np.ones_like(v), float(np.sqrt(v.size))
            parts.append((self.weights[k] / nv) * v)
        # the same scale for every still, never a per-still normalisation (module docstring, 4)
        return np.concatenate(parts) / self._norm

    def coverage(self, vectors: np.ndarray) -> np.ndarray:
        """Share of the descriptor a vector carries evidence for: its squared norm (module docstring, 4).
        ~0.98 for colour frames, ~0.6 grey, ~0.4 line-art sketches, ~0.2 near-blank stills. The scorer
        divides a query's similarities by it to compare grey and sketch queries on the scale of colour
        ones (see scoring.evidence_scale)."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return np.clip(np.einsum("ij,ij->i", v, v), 0.0, 1.0)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images (raw, or already passed through `prepare`) into float32 rows of norm <= 1
        (squared norm = `coverage`; 1 when the still provides every block)."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            small = im if im.info.get(_PREPARED) and im.size == (_SIDE, _SIDE) else self.prepare(im)
            out[i] = self._vector(small)
        return out

    embed_prepared = embed  # embed() takes raw or prepared stills
