"""Peer descriptors for the accuracy benchmark, as matcher embedders (same store, scorer and calibration).

* ``peer-phash``, ``peer-dhash``: ImageHash 64-bit perceptual / difference hash.
* ``peer-colorhash``: ImageHash colour hash (binbits=3, 42 bits).
* ``peer-cld``: the MPEG-7 Colour Layout Descriptor as trace.moe uses it (through LIRE): the image is
  reduced to 8x8 representative (mean) colours, converted to YCbCr, each channel is 8x8-DCT'd, zigzag
  scanned and quantised; 6 Y + 3 Cb + 3 Cr coefficients are kept and compared with LIRE's weights
  (Y 2,2,2,1,1,1; Cb 2,1,1; Cr 4,2,2).

A B-bit hash becomes a +-1/sqrt(B) vector, so the inner product is 1 - 2 * Hamming / B and ranks exactly
like the Hamming distance.  The CLD becomes sqrt(weight)-scaled coefficients divided by a fixed radius R,
plus one padding coordinate sqrt(1 - |x|^2) so every vector has unit norm; the inner product then falls
monotonically with the weighted Euclidean distance whenever the padding terms are equal, and stays close to
it otherwise (the usual Euclidean-to-inner-product reduction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image


def _bits_to_vec(bits: np.ndarray) -> np.ndarray:
    b = np.asarray(bits, dtype=bool).ravel()
    return np.where(b, 1.0, -1.0).astype(np.float32) / np.sqrt(b.size, dtype=np.float32)


def phash(img: Image.Image) -> np.ndarray:
    import imagehash

    return _bits_to_vec(imagehash.phash(img).hash)


def dhash(img: Image.Image) -> np.ndarray:
    import imagehash

    return _bits_to_vec(imagehash.dhash(img).hash)


def colorhash(img: Image.Image) -> np.ndarray:
    import imagehash

    return _bits_to_vec(imagehash.colorhash(img, binbits=3).hash)


# --- MPEG-7 colour layout -------------------------------------------------------------------------------

_ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)  # fmt: skip
_N = 8
_C = np.array(
    [[np.sqrt((1 if k == 0 else 2) / _N) * np.cos((2 * n + 1) * k * np.pi / (2 * _N)) for n in range(_N)]
     for k in range(_N)]
)  # fmt: skip
CLD_WEIGHTS = (np.array([2, 2, 2, 1, 1, 1.0]), np.array([2, 1, 1.0]), np.array([4, 2, 2.0]))
CLD_RADIUS = 260.0


def _quant_ydc(i: int) -> int:
    if i > 191:
        return 112 + ((i - 192) >> 2)
    if i > 159:
        return 96 + ((i - 160) >> 1)
    if i > 95:
        return 32 + (i - 96)
    if i > 63:
        return 16 + ((i - 64) >> 1)
    return i >> 2


def _quant_cdc(i: int) -> int:
    if i > 191:
        return 63
    if i > 159:
        return 56 + ((i - 160) >> 2)
    if i > 143:
        return 48 + ((i - 144) >> 1)
    if i > 111:
        return 16 + (i - 112)
    if i > 95:
        return 8 + ((i - 96) >> 1)
    if i > 63:
        return (i - 64) >> 2
    return 0


def _quant_ac(i: int) -> int:
    i = min(255, max(-256, i))
    a = abs(i)
    j = 64 + (a >> 2) if a > 127 else 32 + (a >> 1) if a > 63 else a
    return (-j if i < 0 else j) + 128


def cld_coefficients(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y[6], Cb[3], Cr[3]) quantised CLD coefficients, with the MPEG-7 / LIRE quantisers."""
    small = img.convert("RGB").resize((_N, _N), Image.BOX)  # representative colour = block mean
    ycc = np.asarray(small.convert("YCbCr"), dtype=np.float64)
    out = []
    for ch, keep in ((0, 6), (1, 3), (2, 3)):
        z = (_C @ ycc[..., ch] @ _C.T).ravel()[_ZIGZAG][:keep]  # orthonormal DCT: DC = 8 x mean
        dc = int(z[0]) >> 3
        q = [(_quant_ydc(dc) >> 1) if ch == 0 else _quant_cdc(dc)]
        q += [_quant_ac(int(v) >> 1) >> 3 for v in z[1:]]
        out.append(np.array(q, dtype=np.float64))
    return out[0], out[1], out[2]


def cld(img: Image.Image) -> np.ndarray:
    y, cb, cr = cld_coefficients(img)
    w = np.concatenate([np.sqrt(x) for x in CLD_WEIGHTS])
    x = np.concatenate([y, cb, cr]) * w / CLD_RADIUS
    n2 = float(x @ x)
    pad = np.sqrt(max(0.0, 1.0 - n2))
    v = np.concatenate([x, [pad]]).astype(np.float32)
    return v / np.linalg.norm(v)


PEERS = {"peer-phash": phash, "peer-dhash": dhash, "peer-colorhash": colorhash, "peer-cld": cld}


class PeerEmbedder:
    """A matcher embedder wrapping one peer descriptor (matcher.embed.Embedder)."""

    pretrained = None
    device = "cpu"
    uses_torch = False
    coverage = None

    def __init__(self, spec: str, **kwargs):
        if spec not in PEERS:
            raise ValueError(f"unknown peer {spec!r}; known: {sorted(PEERS)}")
        self.spec = spec
        self._fn = PEERS[spec]
        self.dim = int(self._fn(Image.new("RGB", (32, 32))).size)
        self.fingerprint = hashlib.sha1(f"{spec}-v1".encode()).hexdigest()[:16]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._fn(im.convert("RGB")) for im in images]).astype(np.float32)

    def prepare(self, image: Image.Image) -> Image.Image:
        return image

    embed_prepared = embed


def register_peers() -> list[str]:
    """Register every peer with matcher's embedder registry; returns the spec names."""
    from matcher.embed import register_embedder

    for name in PEERS:
        register_embedder(name, lambda variant=None, _name=name, **_kw: PeerEmbedder(_name))
    return list(PEERS)
