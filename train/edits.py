"""The leaks' edits as batched torch ops: two views of a frame for the copy-detection objective.

A leaked frame is rarely the clean still: it is a crop (10-100% of the area), mirrored, letterboxed, grey,
re-encoded as JPEG, an inked line-art drawing of it (strokes of varied width, pencil colours), a flat cel
with ink lines, or carries red correction notes and text. `views(frames, gen)` draws one such edit chain
per frame. Frames are uint8 (B, 3, S, S) tensors (S = the stored side, 160); views are float (B, 3, 128,
128) in [0, 1]. Everything runs on whole batches (roi_align crops, conv2d filters), so the two CPU cores
spend their time in the network, not in Pillow.

The line-art and cel edits follow matcher.calibration.make_sketch (difference of Gaussians, ink above a
percentile) and scripts/bench_transforms.py (posterised flat colours, dark ink on strong gradients), with
wider ranges (stroke width, ink tone and colour, percentile) so that the model does not learn one
drawing; the benchmark's own queries are never seen here (train/build_dataset.py).
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.ops import roi_align

OUT = 128


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(round(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect-padded."""
    k = _gauss_kernel(sigma)
    c = x.shape[1]
    r = (k.numel() - 1) // 2
    kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), ky, groups=c)


def luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def random_crops(frames: torch.Tensor, gen: random.Random) -> torch.Tensor:
    """A random window per frame (10-100% of the area, aspect 3:4-4:3) resized to OUT x OUT."""
    b, _, h, w = frames.shape
    boxes = []
    for i in range(b):
        r = gen.random()
        area = gen.uniform(0.5, 1.0) if r < 0.55 else gen.uniform(0.1, 0.5) if r < 0.9 else 1.0
        aspect = float(np.exp(gen.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = min(w, np.sqrt(area * w * h * aspect))
        ch = min(h, np.sqrt(area * w * h / aspect))
        x0, y0 = gen.uniform(0, w - cw), gen.uniform(0, h - ch)
        boxes.append([i, x0, y0, x0 + cw, y0 + ch])
    return roi_align(frames, torch.tensor(boxes, dtype=torch.float32), OUT, 1.0, 2, aligned=True)


def lineart(x: torch.Tensor, gen: random.Random) -> torch.Tensor:
    """Inked drawing of a view: DoG lines above a random percentile, on paper, in a pencil colour."""
    y = luma(x)
    s = gen.uniform(0.7, 1.4)
    resp = (blur(y, 1.6 * s) - blur(y, s)).abs()
    q = gen.uniform(0.78, 0.93)
    thr = torch.quantile(resp.flatten(1), q, dim=1).clamp_min(0.008).view(-1, 1, 1, 1)
    ink = (resp > thr).float()
    if gen.random() < 0.35:  # thicker strokes
        ink = F.max_pool2d(ink, 3, 1, 1)
    if gen.random() < 0.3:  # soft pencil edges
        ink = blur(ink, 0.6).clamp(0, 1)
    tone = gen.uniform(0.0, 0.4)
    colour = torch.full((3,), tone)
    r = gen.random()
    if r < 0.15:  # blue pencil
        colour = torch.tensor([tone * 0.5, tone * 0.7 + 0.2, min(1.0, tone + 0.6)])
    elif r < 0.25:  # red pencil
        colour = torch.tensor([min(1.0, tone + 0.6), tone * 0.5, tone * 0.5])
    paper = torch.tensor([1.0, 1.0, 1.0]) - (gen.uniform(0, 0.08) if gen.random() < 0.4 else 0.0)
    return paper.view(1, 3, 1, 1) * (1 - ink) + colour.view(1, 3, 1, 1) * ink


def cel(x: torch.Tensor, gen: random.Random) -> torch.Tensor:
    """Flat cel: smoothed, posterised to a few levels per channel, dark ink on strong edges."""
    levels = gen.randint(3, 6)
    flat = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    flat = torch.round(flat * (levels - 1)) / (levels - 1)
    y = luma(x)
    gx = F.pad(y[..., :, 2:] - y[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(y[..., 2:, :] - y[..., :-2, :], (0, 0, 1, 1))
    mag = torch.sqrt(gx * gx + gy * gy)
    thr = torch.quantile(mag.flatten(1), gen.uniform(0.85, 0.92), dim=1).clamp_min(0.09).view(-1, 1, 1, 1)
    ink = (mag > thr).float()
    return flat * (1 - ink) + gen.uniform(0.0, 0.15) * ink


def grey(x: torch.Tensor) -> torch.Tensor:
    return luma(x).expand(-1, 3, -1, -1).contiguous()


def letterbox(x: torch.Tensor, gen: random.Random) -> torch.Tensor:
    """Bars left over after trimming (thin, or not quite uniform after re-encoding)."""
    out = x.clone()
    t = gen.randint(1, 12)
    if gen.random() < 0.5:
        out[..., :t, :] = 0
        out[..., -t:, :] = 0
    else:
        out[..., :, :t] = 0
        out[..., :, -t:] = 0
    return out


def colour_jitter(x: torch.Tensor, gen: random.Random) -> torch.Tensor:
    b = gen.uniform(-0.12, 0.12)
    c = gen.uniform(0.75, 1.25)
    s = gen.uniform(0.6, 1.4)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * c + m + b
    y = luma(x.clamp(0, 1))
    return (y + (x - y) * s).clamp(0, 1)


def jpeg(x: torch.Tensor, gen: random.Random) -> torch.Tensor:
    out = []
    for im in (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=gen.randint(15, 70))
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0


_NOTES_TEXT = [
    "FIX HAND",
    "redo eyes!",
    "timing 2s",
    "more shadow",
    "KEY POSE",
    "check BG",
    "sc 12",
    "OK",
    "x3",
]


def note_overlays(n: int, seed: int = 1) -> torch.Tensor:
    """n RGBA overlays (n, 4, OUT, OUT): red boxes, scribbles and scaled-up text, as a director marks."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        layer = Image.new("L", (OUT, OUT), 0)
        d = ImageDraw.Draw(layer)
        lw = rng.randint(1, 3)
        for _ in range(rng.randint(0, 2)):
            bw, bh = rng.uniform(0.2, 0.5) * OUT, rng.uniform(0.2, 0.5) * OUT
            x, y = rng.uniform(0, OUT - bw), rng.uniform(0, OUT - bh)
            d.rectangle([x, y, x + bw, y + bh], outline=255, width=lw)
        for _ in range(rng.randint(1, 3)):
            x, y = rng.uniform(0, OUT), rng.uniform(0, OUT)
            pts = [(x, y)]
            for _ in range(rng.randint(4, 10)):
                x, y = x + rng.uniform(-12, 12), y + rng.uniform(-8, 8)
                pts.append((x, y))
            d.line(pts, fill=255, width=lw)
        txt = rng.choice(_NOTES_TEXT)
        t = Image.new("L", (7 * len(txt) + 4, 13), 0)
        ImageDraw.Draw(t).text((2, 1), txt, fill=255)
        s = rng.uniform(1.0, 2.5)
        t = t.resize((round(t.width * s), round(t.height * s)), Image.NEAREST)
        layer.paste(t, (rng.randint(0, max(0, OUT - t.width)), rng.randint(0, max(0, OUT - t.height))), t)
        a = torch.from_numpy(np.asarray(layer, np.float32) / 255.0)
        red = torch.tensor([rng.uniform(0.8, 0.95), rng.uniform(0.0, 0.15), rng.uniform(0.05, 0.2)])
        out.append(torch.cat([red.view(3, 1, 1).expand(3, OUT, OUT), a[None]]))
    return torch.stack(out)


class Editor:
    """Draws a random chain of the leaks' edits per view (see the module docstring)."""

    def __init__(self, seed: int = 0, notes: int = 256):
        self.gen = random.Random(seed)
        self.notes = note_overlays(notes, seed + 1)

    def views(self, frames_u8: torch.Tensor) -> torch.Tensor:
        g = self.gen
        x = random_crops(frames_u8.float() / 255.0, g)
        out = []
        for i in range(x.shape[0]):
            v = x[i : i + 1]
            if g.random() < 0.5:
                v = v.flip(-1)
            r = g.random()
            if r < 0.22:
                v = lineart(v, g)
            elif r < 0.36:
                v = cel(v, g)
            elif r < 0.5:
                v = grey(v)
            elif r < 0.75:
                v = colour_jitter(v, g)
            if g.random() < 0.15:
                o = self.notes[g.randrange(len(self.notes))]
                a = o[3:4][None]
                v = v * (1 - a) + o[:3][None] * a
            if g.random() < 0.1:
                v = letterbox(v, g)
            if g.random() < 0.1:
                v = blur(v, g.uniform(0.5, 1.2))
            if g.random() < 0.3:  # PIL's JPEG: ~0.3 ms a view
                v = jpeg(v, g)
            out.append(v)
        return torch.cat(out).clamp(0, 1)
