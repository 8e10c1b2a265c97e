"""The embedding pipeline: decode in worker processes, embed in batches, both at once.

    for e in embed_stills(paths, embedder):          # in input order
        e.still (path, sha256, timestamp...), e.vector (float32, norm <= 1) or e.error

Decoding a 1080p PNG costs ~10x more CPU than the classic descriptor and about as much as a
ViT-B-32 forward pass on CPU, so decoding runs in `workers` processes (one per core by default)
while the main process embeds the previous batch; at most `workers * 4` files are in flight, which
bounds memory. Workers do all the per-image work that needs only Pillow: decode, and the embedder's
decode-side preparation (`Embedder.prepare`: classic trims the borders and shrinks to 128x128; clip
resizes and crops to the model's input, handing back uint8 arrays that the main process turns into
one normalised tensor batch in `embed_prepared`). Workers never run torch, so forking after torch has
started its thread pool is safe.

Decoding is matcher.decode.decoder's (the one decoder, also dump mode's and serve's), in the one
pool (matcher.run.pool). A single file (`match cel.png`) is decoded inline: starting worker
processes would cost more than it saves. A worker that crashes (a hostile file can kill a decoder) or
hangs past `decode_timeout` fails only its own file (run.pool.decode_in_order).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from matcher import config
from matcher.decode.decoder import Limits, Task, decode_image
from matcher.decode.sources import InputError, Still, walk
from matcher.run.pool import DecodePool, decode_in_order
from matcher.run.stages import stills_of

DEFAULT_BATCH = config.BATCH
DEFAULT_DECODE_TIMEOUT = config.DECODE_TIMEOUT_ADD


@dataclass
class Embedded:
    """One result, in input order: a still and its vector, or an input that could not be used."""

    still: Still | None
    vector: np.ndarray | None = None
    error: InputError | None = None


def default_workers(embedder=None) -> int:
    """Decode processes for this embedder (config.default_workers)."""
    return config.default_workers(embedder is not None and embedder.uses_torch and embedder.device == "cpu")


# ------------------------------------------------------------------------------------------ driver
def _tasks(items, names):
    """(item, Task | None) in input order; item is ('file', path) | ('image', PIL image, label) |
    ('error', InputError). Only files are decoded in the pool."""
    from PIL import Image

    for n, item in enumerate(items):
        if isinstance(item, Image.Image):
            yield ("image", item, names[n] if names is not None else f"<image {n}>"), None
            continue
        try:
            for path in walk([item]):
                refused = getattr(path, "refused_reason", None)
                if refused:  # a link, a FIFO, a directory that cannot be listed: said, not opened
                    yield ("error", InputError(path, refused, path.refused_status)), None
                else:
                    yield ("file", path), Task(idx=n, rel=str(path), abspath=os.fsencode(path))
        except InputError as exc:
            yield ("error", exc), None


def embed_stills(
    items: Iterable,
    embedder,
    *,
    every: float = 1.0,
    distinct: bool = False,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    keep_images: bool = False,
    names: Sequence[str] | None = None,
    decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
    engine: str = "local",
    address: str | None = None,
) -> Iterator[Embedded]:
    """Embed every still of `items` (image/video files, directories walked recursively, PIL images).

    Yields one `Embedded` per still, and one with `error` set per unusable input, in input order.
    `distinct` samples videos at scene changes too and drops near-duplicates (reference ingestion);
    `keep_images` keeps a copy of each still (longest side <= 512) in `still.image`, else it is None.
    `workers=0` decodes inline. `engine="ray"` runs decode and embed of the files on Ray
    (run.ray_engine; `address` names the cluster) and yields the same results in the same order.
    """
    transform, embed = embedder.prepare, embedder.embed_prepared
    limits = Limits(every=every, distinct=distinct, keep=keep_images)
    if engine == "ray":
        yield from _embed_on_ray(
            list(_tasks(items, names)), embedder, transform, embed, limits, batch_size, address, workers
        )
        return
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r}: local or ray")
    workers = default_workers(embedder) if workers is None else max(0, int(workers))
    tasks = _tasks(items, names)
    # Peek: a single file is decoded inline (no pool start-up for `match cel.png`).
    head = []
    for t in tasks:
        head.append(t)
        if len(head) >= 2:
            break
    if sum(1 for _, task in head if task is not None) < 2:
        workers = 0
    pool = DecodePool(workers, limits, decode_timeout, transform)
    batch: list[tuple[Still, object]] = []

    def flush() -> Iterator[Embedded]:
        if not batch:
            return
        vectors = embed([p for _, p in batch])
        for (still, _), vec in zip(batch, vectors, strict=True):
            yield Embedded(still, vec)
        batch.clear()

    try:
        for item, task, result in decode_in_order(pool, itertools.chain(head, tasks), max(2, workers * 4)):
            if item[0] == "error":
                yield from flush()  # keep input order: earlier stills first
                yield Embedded(None, None, item[1])
                continue
            if item[0] == "image":
                result = decode_image(item[1], item[2], limits, transform)
            stills, error = stills_of(result, task.rel if task is not None else item[2])
            for path, sha, ts, ts_end, prepared, kept, frame in stills:
                batch.append((Still(kept, path, sha, ts, ts_end, frame), prepared))
                if len(batch) >= batch_size:
                    yield from flush()
            if error is not None:
                yield from flush()
                yield Embedded(None, None, error)
        yield from flush()
    finally:
        pool.close()


def _embed_on_ray(tasks, embedder, transform, embed, limits, batch_size, address, workers):
    """The ray engine: files are decoded and embedded on the cluster (run.ray_engine, the same
    stages), streamed back in input order; in-memory images and walk errors (cheap, and their
    reason lives in this process) are handled here, in their place."""
    from matcher.run import ray_engine

    files = [(n, task) for n, (_item, task) in enumerate(tasks) if task is not None]
    done = ray_engine.decode_and_embed(
        files, embedder, limits, batch_size=batch_size, address=address, workers=workers
    )
    pending = next(done, None)
    for n, (item, task) in enumerate(tasks):
        if item[0] == "error":
            yield Embedded(None, None, item[1])
            continue
        results = []
        if task is None:  # an in-memory image: decoded and embedded here
            result = decode_image(item[1], item[2], limits, transform)
            for k, (meta, prepared, err) in enumerate(result["parts"]):
                if err is None:
                    result["parts"][k] = (meta, np.asarray(embed([prepared]), np.float32)[0], err)
            results.append(result)
        while pending is not None and pending[0] == n:  # every segment of this file
            results.append(pending[1])
            pending = next(done, None)
        for result in results:
            stills, error = stills_of(result, task.rel if task is not None else item[2])
            for path, sha, ts, ts_end, vector, kept, frame in stills:
                yield Embedded(Still(kept, path, sha, ts, ts_end, frame), vector)
            if error is not None:
                yield Embedded(None, None, error)
