"""The background set: images known to be from none of the indexed productions.

Copy-detection systems normalise a query's scores against such a set. matcher ships one
(``matcher/data/background.zip``: openly licensed thumbnails of many drawn and rendered styles, built by
``scripts/build_background.py``; sources and licences in ``matcher/data/BACKGROUND-NOTICE.md``). Every
index embeds it with its own model when it is created (or first written by a version that has it) and
keeps the vectors as a file of its generation (``background-<gen>.npz``, listed in the manifest like the
vectors and probes). Calibration uses them as unknown probes, and as part of every title's background
spread: so an index of one title can still tell its production from everything else.

Embedding the set takes seconds; the vectors are cached per (set, embedder fingerprint) in memory and
in ``$MATCHER_CACHE/background`` (default ``~/.cache/matcher``), keyed by content, so a cached file
from another set or model is never used.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "background.zip"
# Variants that give the grey and line-art bands unknown probes of their own: every GREY_EVERY-th image
# is also embedded grey, every SKETCH_EVERY-th as a sketch (embedders that report coverage only).
GREY_EVERY = 3
SKETCH_EVERY = 3


@functools.cache
def set_sha256() -> str:
    """sha256 of the shipped archive: names the set in the manifest and in run headers."""
    return hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()


@functools.cache
def _images() -> tuple[Image.Image, ...]:
    with zipfile.ZipFile(ARCHIVE) as z:
        entries = json.loads(z.read("manifest.json"))
        out = []
        for e in entries:
            with Image.open(io.BytesIO(z.read(e["file"]))) as im:
                out.append(im.convert("RGB"))
    return tuple(out)


def size() -> int:
    return len(_images())


def _variants(images, with_sketch: bool) -> tuple[list[Image.Image], list[str]]:
    from PIL import ImageOps

    from matcher.score.calibration import make_sketch

    rng = np.random.default_rng(0)  # fixed: the same set gives the same probes
    out, kinds = list(images), ["plain"] * len(images)
    for i, im in enumerate(images):
        if i % GREY_EVERY == 0:
            out.append(ImageOps.grayscale(im).convert("RGB"))
            kinds.append("grey")
        if with_sketch and i % SKETCH_EVERY == 1:
            out.append(make_sketch(im, rng))
            kinds.append("sketch")
    return out, kinds


def _cache_dir() -> Path:
    return Path(os.environ.get("MATCHER_CACHE") or Path.home() / ".cache" / "matcher") / "background"


_MEMO: dict[str, dict] = {}


def embed(embedder) -> dict:
    """{"vectors": (n, dim) float32, "kinds": (n,) str} of the background set under ``embedder``."""
    with_sketch = getattr(embedder, "coverage", None) is not None
    key = hashlib.sha256(
        f"{set_sha256()}|{embedder.spec}|{embedder.fingerprint}|{embedder.dim}|{with_sketch}".encode()
    ).hexdigest()[:32]
    if key in _MEMO:
        return _MEMO[key]
    cached = _cache_dir() / f"{key}.npz"
    out = None
    try:
        with np.load(cached, allow_pickle=False) as z:
            out = {"vectors": z["vectors"], "kinds": z["kinds"]}
        if out["vectors"].shape[1] != embedder.dim:
            out = None
    except (OSError, ValueError, KeyError):
        out = None
    if out is None:
        images, kinds = _variants(_images(), with_sketch)
        vectors = np.concatenate(
            [embedder.embed(images[i : i + 256]) for i in range(0, len(images), 256)]
        ).astype(np.float32)
        out = {"vectors": vectors, "kinds": np.asarray(kinds, dtype=str)}
        try:  # a cache only: an unwritable home costs the seconds again next time, nothing else
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **out)
            os.replace(tmp, cached)
        except OSError:
            pass
    _MEMO[key] = out
    return out
