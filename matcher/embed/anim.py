"""`anim`: matcher's own learned embedder, and `anim+classic`, its fusion with the weights-free descriptor.

The network is an EfficientNet-Lite0 (ImageNet start, Apache-2.0 weights) trained here on frames composited
from openly licensed Debian game art (train/, train/MODEL_CARD.md): copy detection under the leaks' edits
(SSCD-style InfoNCE + KoLeo) plus a production-level SupCon term. It ends in GeM pooling and one affine map
(the projection and the PCA-whitening learned on training frames, folded together) to 256 L2-normalised
dimensions.

The shipped weights (`weights/anim-v1.safetensors`, fp16, batch norms folded into the convolutions) are
run by the small numpy interpreter below, not by torch: importing torch costs 2-3 s on this project's
machines, more than a whole `match cel.png` may take (docs/BENCHMARKS.md, "anim: start-up"). The file's
sha256 is checked on load; the fingerprint recorded in an index is derived from it.

Preparation is classic's (uniform borders trimmed, squashed to 128 x 128), so `anim+classic` prepares a
still once and both halves read the same 128 x 128 image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from matcher.embed import EmbedderError, l2_normalise
from matcher.embed.classic import _PREPARED, _SIDE, ClassicEmbedder

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "anim-v1.safetensors"
# sha256 of the shipped weights; train/export_anim.py prints it. A mismatch is a corrupt or altered file.
WEIGHTS_SHA256 = "8246145070d21a2804b3241f579ed526530772eabecc4aa3040cb79258aee319"
FORMAT = "matcher-anim-ops-v1"


def load_weights(path: Path, expected_sha256: str | None) -> tuple[list[dict], dict[str, np.ndarray], str]:
    """(ops, float32 tensors, sha256) of an exported weights file; EmbedderError with one line otherwise."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EmbedderError(f"{path}: cannot read the anim weights ({exc.strerror or exc})") from None
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise EmbedderError(
            f"{path}: corrupt anim weights file (sha256 {sha[:16]}..., expected {expected_sha256[:16]}...); "
            f"reinstall matcher"
        )
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        ops = json.loads(meta["ops"])
        raw = load(data)
        tensors = {}
        for k, v in raw.items():
            if k.endswith(".s"):
                continue
            v = v.astype(np.float32)
            scale = raw.get(k[:-2] + ".s") if k.endswith(".w") else None
            if scale is not None:  # fp16 kernels are stored divided by their channel's largest weight
                v = v * scale.astype(np.float32).reshape(-1, *([1] * (v.ndim - 1)))
            tensors[k] = v
    except (SafetensorError, ValueError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbedderError(f"{path}: not an anim weights file ({exc})") from None
    return ops, tensors, sha


# ------------------------------------------------------------------------------------ numpy network
_BLAS: list | None = None


def _blas_threads() -> list:
    """(get, set) pairs of the OpenBLAS libraries loaded in this process (numpy's own), found through
    /proc/self/maps; empty where there are none (other BLAS, other systems): then nothing is changed."""
    global _BLAS
    if _BLAS is not None:
        return _BLAS
    _BLAS = []
    try:
        import ctypes

        with open("/proc/self/maps") as f:
            paths = sorted(
                {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.rstrip().endswith(".so")}
            )
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        _BLAS.append((get, put))
                        break
                else:
                    continue
                break
    except OSError:
        pass
    return _BLAS


class _OneBlasThread:
    """One query's matrices are small: OpenBLAS splitting them over threads on 2 busy cores made the
    network 4-40x slower (measured 66-590 ms against 15 ms on one thread), so the numpy path runs on one
    BLAS thread and puts the count back afterwards."""

    def __enter__(self):
        self.saved = [(get(), put) for get, put in _blas_threads()]
        for _, put in self.saved:
            put(1)

    def __exit__(self, *exc):
        for n, put in self.saved:
            put(n)


def _pad(x: np.ndarray, p: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int, s: int) -> np.ndarray:
    """Dense convolution, NHWC; w is (k*k*C_in, C_out). 1x1 is a matmul, kxk goes through im2col."""
    n, h, wd, c = x.shape
    if k == 1:
        x = x[:, ::s, ::s] if s > 1 else x
        return (x.reshape(-1, c) @ w + b).reshape(x.shape[0], x.shape[1], x.shape[2], -1)
    p = k // 2
    xp = _pad(x, p)
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    cols = [xp[:, dy : dy + s * ho : s, dx : dx + s * wo : s] for dy in range(k) for dx in range(k)]
    return (np.concatenate(cols, axis=3).reshape(-1, k * k * c) @ w + b).reshape(n, ho, wo, -1)


def _dwconv(x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int, s: int) -> np.ndarray:
    """Depthwise convolution, NHWC; w is (k, k, C): k*k shifted multiply-adds."""
    n, h, wd, c = x.shape
    p = k // 2
    xp = _pad(x, p)
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    out = np.empty((n, ho, wo, c), np.float32)
    out[...] = b
    for dy in range(k):
        for dx in range(k):
            out += xp[:, dy : dy + s * ho : s, dx : dx + s * wo : s] * w[dy, dx]
    return out


def _act(x: np.ndarray, act: str) -> np.ndarray:
    if act == "relu6":
        np.clip(x, 0.0, 6.0, out=x)
    elif act == "relu":
        np.maximum(x, 0.0, out=x)
    return x


class AnimNet:
    """Runs an exported op list (train/export_anim.py) in numpy on NHWC float32 batches."""

    def __init__(self, ops: list[dict], tensors: dict[str, np.ndarray]):
        self.ops = ops
        self.t: dict[str, np.ndarray] = {}
        for op in ops:
            name = op.get("name")
            if op["op"] == "conv":
                w = tensors[name + ".w"]  # (C_out, C_in, k, k)
                self.t[name + ".w"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))
                self.t[name + ".b"] = tensors[name + ".b"]
            elif op["op"] == "dw":
                w = tensors[name + ".w"]  # (C, 1, k, k)
                self.t[name + ".w"] = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
                self.t[name + ".b"] = tensors[name + ".b"]
            elif op["op"] == "head":
                self.t[name + ".w"] = np.ascontiguousarray(tensors[name + ".w"].T)  # (C, dim)
                self.t[name + ".b"] = tensors[name + ".b"]
        self.dim = int(next(op["dim"] for op in ops if op["op"] == "head"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (n, H, W, 3) float32 in [0, 1] -> (n, dim) L2-normalised."""
        with _OneBlasThread():
            return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = x * 2.0 - 1.0  # the ImageNet start's input range
        saved: list[np.ndarray] = []
        for op in self.ops:
            kind = op["op"]
            if kind == "conv":
                x = _act(
                    _conv(x, self.t[op["name"] + ".w"], self.t[op["name"] + ".b"], op["k"], op["s"]),
                    op["act"],
                )
            elif kind == "dw":
                x = _act(
                    _dwconv(x, self.t[op["name"] + ".w"], self.t[op["name"] + ".b"], op["k"], op["s"]),
                    op["act"],
                )
            elif kind == "save":
                saved.append(x)
            elif kind == "add":
                x = x + saved.pop()
            elif kind == "drop":
                saved.pop()
            elif kind == "gem":
                p = float(op["p"])
                x = np.power(np.maximum(x, 1e-6), p).mean(axis=(1, 2)) ** (1.0 / p)
            elif kind == "head":
                x = x @ self.t[op["name"] + ".w"] + self.t[op["name"] + ".b"]
            else:
                raise EmbedderError(f"anim weights: unknown op {kind!r}")
        return l2_normalise(x)


class TorchAnimNet:
    """The same op list run by torch (conv2d with groups), for big batches: `index add` and dump runs
    embed hundreds of stills, where torch's 2-3 s import pays for itself (numpy: ~80 ms a still on 2
    busy cores, torch: several times faster). Results agree with AnimNet to float rounding."""

    def __init__(self, ops: list[dict], tensors: dict[str, np.ndarray]):
        import torch

        self.torch = torch
        self.ops = ops
        self.t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        F = torch.nn.functional
        with torch.inference_mode():
            h = torch.from_numpy(x).permute(0, 3, 1, 2) * 2.0 - 1.0
            saved = []
            for op in self.ops:
                kind = op["op"]
                if kind in ("conv", "dw"):
                    w, b = self.t[op["name"] + ".w"], self.t[op["name"] + ".b"]
                    h = F.conv2d(h, w, b, op["s"], op["k"] // 2, 1, w.shape[0] if kind == "dw" else 1)
                    if op["act"] == "relu6":
                        h = F.relu6(h)
                    elif op["act"] == "relu":
                        h = F.relu(h)
                elif kind == "save":
                    saved.append(h)
                elif kind == "add":
                    h = h + saved.pop()
                elif kind == "gem":
                    p = float(op["p"])
                    h = h.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
                elif kind == "head":
                    h = F.linear(h, self.t[op["name"] + ".w"], self.t[op["name"] + ".b"])
            return l2_normalise(h.numpy())


def _as_batch(images: Sequence[Image.Image], prepare) -> np.ndarray:
    arr = np.empty((len(images), _SIDE, _SIDE, 3), np.float32)
    for i, im in enumerate(images):
        small = im if im.info.get(_PREPARED) and im.size == (_SIDE, _SIDE) else prepare(im)
        arr[i] = np.asarray(small, np.float32)
    arr *= 1.0 / 255.0
    return arr


class AnimEmbedder:
    """The learned embedder; see the module docstring."""

    spec = "anim"
    device = "cpu"
    uses_torch = False  # numpy for small batches; torch (single-threaded) for large ones
    coverage = None  # unit vectors: every still is full evidence
    BATCH = 16  # numpy's working set stays in cache-friendly sizes
    TORCH_FROM = 16  # calls with at least this many images run on torch (a dependency anyway)
    TORCH_BATCH = 64  # ... in chunks: calibration embeds hundreds of probes in one call

    def __init__(self, weights: str | Path | None = None):
        path = Path(weights) if weights else WEIGHTS_FILE
        shipped = path.resolve() == WEIGHTS_FILE.resolve() if path.exists() else weights is None
        ops, tensors, sha = load_weights(path, WEIGHTS_SHA256 if shipped else None)
        self._ops, self._tensors = ops, tensors
        self.net = AnimNet(ops, tensors)
        self._torch_net: TorchAnimNet | None = None
        self.dim = self.net.dim
        # the shipped weights are part of this matcher version (like classic's algorithm): no pretrained
        # path to record; a retrained file given with --pretrained is recorded by its path
        self.pretrained = None if shipped else str(path)
        self.fingerprint = hashlib.sha256(f"anim:{sha}".encode()).hexdigest()[:16]
        self._classic = ClassicEmbedder()

    def prepare(self, image: Image.Image) -> Image.Image:
        """Decode-side work, as classic's: trim borders, shrink to 128 x 128 (runs in workers)."""
        return self._classic.prepare(image)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (raw or prepared) -> float32 (n, dim), unit rows."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        net, step = self.net, self.BATCH
        if len(images) >= self.TORCH_FROM:
            if self._torch_net is None:
                self._torch_net = TorchAnimNet(self._ops, self._tensors)
            net, step = self._torch_net, self.TORCH_BATCH
        out = [net(_as_batch(images[i : i + step], self.prepare)) for i in range(0, len(images), step)]
        return np.concatenate(out).astype(np.float32)

    embed_prepared = embed  # embed() takes raw or prepared stills


class FusedEmbedder:
    """`anim+classic`: both descriptors of one prepared still, concatenated so that the inner product is
    ``w * anim similarity + (1 - w) * classic similarity`` (w = FUSION_WEIGHT, set on the dev split of the
    training productions, train/devcheck.py --fusion).

    Classic's evidence share (`coverage`: ~0.6 grey, ~0.4 line-art) is kept: the scorer uses it to pick
    the grey threshold and the sketch parameters, and divides a query's similarities by it. The anim half is
    scaled by the coverage too, so that this division restores it: a query q and a (colour, coverage ~1)
    reference r give (w * c_q * a_q.a_r + (1 - w) * classic_q.classic_r) / c_q ~ w * a_q.a_r + (1 - w) *
    classic_q.classic_r / c_q, the classic rescaling and the anim similarity unchanged."""

    def __init__(self, anim: AnimEmbedder, weight: float, explicit: bool = False):
        self.anim, self.classic = anim, anim._classic
        self.weight = float(weight)
        self.spec = f"anim+classic:{self.weight:g}" if explicit else "anim+classic"
        self.dim = anim.dim + self.classic.dim
        self.pretrained = anim.pretrained
        key = f"fused:{anim.fingerprint}:{self.classic.fingerprint}:{self.weight:.4f}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._wa, self._wc = np.sqrt(self.weight), np.sqrt(1.0 - self.weight)
        self.device, self.uses_torch = "cpu", False

    def prepare(self, image: Image.Image) -> Image.Image:
        return self.classic.prepare(image)

    def coverage(self, vectors: np.ndarray) -> np.ndarray:
        """Classic's evidence share, read from the classic half (its squared norm / (1 - w))."""
        v = np.atleast_2d(np.asarray(vectors, np.float32))[:, self.anim.dim :]
        return np.clip(np.einsum("ij,ij->i", v, v) / (1.0 - self.weight), 0.0, 1.0)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        prepared = [
            im if im.info.get(_PREPARED) and im.size == (_SIDE, _SIDE) else self.prepare(im) for im in images
        ]
        c = self.classic.embed(prepared)
        cov = np.clip(np.einsum("ij,ij->i", c, c), 0.0, 1.0)
        a = self.anim.embed(prepared) * cov[:, None]
        return np.concatenate([self._wa * a, self._wc * c], axis=1).astype(np.float32)

    embed_prepared = embed


FUSION_WEIGHT = 0.15
