"""The embedding pipeline: decode in worker processes, embed in batches, both at once.

    for e in embed_stills(paths, embedder):          # in input order
        e.still (path, sha256, timestamp...), e.vector (float32, norm <= 1) or e.error

Decoding a 1080p PNG costs ~10x more CPU than the classic descriptor and about as much as a
ViT-B-32 forward pass on CPU, so decoding runs in `workers` processes (one per core by default)
while the main process embeds the previous batch; at most `workers * 4` files are in flight, which
bounds memory. Workers do all the per-image work that needs only Pillow: decode, and the embedder's
decode-side preparation (classic's `prepare` trims the borders and shrinks to 128x128; clip's
`decode_transform` resizes and crops to the model's input, handing back uint8 arrays that the main
process turns into one normalised tensor batch). Workers never run torch, so forking after torch has
started its thread pool is safe.

A single file (`match cel.png`) is decoded inline: starting worker processes would cost more than
it saves. A worker that crashes (a hostile file can kill a decoder) or hangs past `decode_timeout`
fails only its own file: the pool is rebuilt and the other files in flight are resubmitted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from matcher import config
from matcher.decode.sources import InputError, Still, iter_stills, to_rgb, walk
from matcher.run.pool import WorkerPool, worker_transform

DEFAULT_BATCH = config.BATCH
DEFAULT_DECODE_TIMEOUT = config.DECODE_TIMEOUT_ADD
#: Longest side of the copy of each still handed back with `keep_images` (calibration probes).
KEEP_SIDE = config.STILL_SIDE


@dataclass
class Embedded:
    """One result, in input order: a still and its vector, or an input that could not be used."""

    still: Still | None
    vector: np.ndarray | None = None
    error: InputError | None = None


def default_workers(embedder=None) -> int:
    """Decode processes for this embedder (config.default_workers)."""
    torch_on_cpu = (
        embedder is not None and getattr(embedder, "device", None) == "cpu" and hasattr(embedder, "_torch")
    )
    return config.default_workers(torch_on_cpu)


# ------------------------------------------------------------------------------------------ workers
def _reduce(image, side: int):
    if max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side), reducing_gap=2.0)
    return small


def _decode(path: str, every: float, distinct: bool, keep: bool, transform=None):
    """Decode one file into prepared stills. Returns (stills, error): stills are tuples
    (path, sha256, timestamp, timestamp_end, prepared, kept_image_or_None); error is (path, reason)
    for a file that failed (after any stills it did yield)."""
    transform = transform or worker_transform()
    out = []
    try:
        for s in iter_stills(path, every=every, distinct=distinct):
            prepared = transform(s.image) if transform is not None else s.image
            kept = _reduce(s.image, KEEP_SIDE) if keep else None
            out.append((s.path, s.sha256, s.timestamp, s.timestamp_end, prepared, kept))
    except InputError as exc:
        return out, (exc.path, exc.reason)
    except MemoryError:
        return out, (str(path), "out of memory while decoding")
    except Exception as exc:  # a decoder bug must fail one file, not the run
        return out, (str(path), f"decoding failed ({type(exc).__name__}: {exc})")
    return out, None


# ------------------------------------------------------------------------------------------ driver
def _tasks(items, names):
    """('file', path) | ('image', PIL image, label) | ('error', InputError), in input order."""
    from PIL import Image

    for n, item in enumerate(items):
        if isinstance(item, Image.Image):
            yield ("image", item, names[n] if names is not None else f"<image {n}>")
            continue
        try:
            for path in walk([item]):
                yield ("file", path)  # keep the Path object: a RefusedPath carries its reason
        except InputError as exc:
            yield ("error", exc)


def _prep_fns(embedder):
    """(decode-side transform for workers, batch embed function for its outputs)."""
    transform = getattr(embedder, "decode_transform", None)
    if transform is not None:
        return transform, getattr(embedder, "embed_prepared", embedder.embed)
    prepare = getattr(embedder, "prepare", None)  # classic: embed() accepts what prepare() returns
    if prepare is not None:
        return prepare, embedder.embed
    return None, embedder.embed


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
    transform, embed = _prep_fns(embedder)
    if engine == "ray":
        yield from _embed_on_ray(
            list(_tasks(items, names)), embedder, transform, embed, every, distinct, keep_images,
            batch_size, address, workers,
        )  # fmt: skip
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
    if sum(1 for t in head if t[0] == "file") < 2:
        workers = 0

    def all_tasks():
        yield from head
        yield from tasks

    pool = WorkerPool(workers, transform) if workers else None
    max_in_flight = max(2, workers * 4)
    inflight: deque = deque()  # [task, future | None, result | None]
    batch: list[tuple[Still, object]] = []

    def flush() -> Iterator[Embedded]:
        if not batch:
            return
        vectors = embed([p for _, p in batch])
        for (still, _), vec in zip(batch, vectors, strict=True):
            yield Embedded(still, vec)
        batch.clear()

    def submit(task) -> list:
        if task[0] == "file" and pool is not None:
            return [task, pool.run(_decode, task[1], every, distinct, keep_images), None]
        return [task, None, None]

    def resolve(entry) -> tuple[list, tuple | None]:
        task, fut = entry[0], entry[1]
        if task[0] == "image":
            _, image, label = task
            try:
                rgb = to_rgb(image, label)
            except InputError as exc:
                return [], (exc.path, exc.reason)
            prepared = transform(rgb) if transform is not None else rgb
            kept = _reduce(rgb, KEEP_SIDE) if keep_images else None
            return [(label, None, None, None, prepared, kept)], None
        if task[0] == "error":
            return [], (task[1].path, task[1].reason)
        if fut is None:
            return _decode(task[1], every, distinct, keep_images, transform)
        try:
            return fut.result(timeout=decode_timeout)
        except FutureTimeout:
            pool._kill()
            _resubmit()
            return [], (task[1], f"decoding timed out after {decode_timeout:.0f} s")
        except BrokenProcessPool:
            # Some file in flight killed its worker. Retry this one alone to see if it is the one.
            pool._kill()
            alone = pool.run(_decode, task[1], every, distinct, keep_images)
            try:
                result = alone.result(timeout=decode_timeout)
            except (BrokenProcessPool, FutureTimeout):
                pool._kill()
                result = ([], (task[1], "the decoder crashed on this file"))
            _resubmit()
            return result

    def _resubmit() -> None:
        for entry in inflight:
            if entry[1] is not None:
                entry[1] = pool.run(_decode, entry[0][1], every, distinct, keep_images)

    try:
        source = all_tasks()
        exhausted = False
        while True:
            while not exhausted and len(inflight) < max_in_flight:
                try:
                    inflight.append(submit(next(source)))
                except StopIteration:
                    exhausted = True
            if not inflight:
                break
            entry = inflight.popleft()
            stills, error = resolve(entry)
            for path, sha, ts, ts_end, prepared, kept in stills:
                batch.append((Still(kept, path, sha, ts, ts_end), prepared))
                if len(batch) >= batch_size:
                    yield from flush()
            if error is not None:
                yield from flush()  # keep input order: earlier stills first
                yield Embedded(None, None, InputError(*error))
        yield from flush()
    finally:
        if pool is not None:
            pool.close()


def _embed_on_ray(tasks, embedder, transform, embed, every, distinct, keep, batch_size, address, workers):
    """The ray engine: files go to the cluster; in-memory images, walk errors and refused paths
    (cheap, and their reason lives in this process) are handled here, in input order."""
    from matcher.decode.sources import RefusedPath
    from matcher.run import ray_engine

    files = {
        n: str(t[1]) for n, t in enumerate(tasks) if t[0] == "file" and not isinstance(t[1], RefusedPath)
    }
    done = ray_engine.embed_files(
        files, embedder, transform, every=every, distinct=distinct, keep=keep, batch_size=batch_size,
        address=address, workers=workers,
    )  # fmt: skip
    for n, task in enumerate(tasks):
        if n in files:
            results = done.get(n, [])
        elif task[0] == "image":
            _, image, label = task
            try:
                rgb = to_rgb(image, label)
            except InputError as exc:
                yield Embedded(None, None, exc)
                continue
            prepared = transform(rgb) if transform is not None else rgb
            kept = _reduce(rgb, KEEP_SIDE) if keep else None
            vec = np.asarray(embed([prepared]), dtype=np.float32)[0]
            results = [((label, None, None, None, prepared, kept), vec, None)]
        elif task[0] == "error":
            results = [(None, None, (task[1].path, task[1].reason))]
        else:  # a refused path: decoding it inline turns it into its InputError
            stills, error = _decode(task[1], every, distinct, keep, transform)
            results = [(None, None, error)] if error is not None else []
        for still, vec, error in results:
            if error is not None:
                yield Embedded(None, None, InputError(*error))
            else:
                path, sha, ts, ts_end, _prepared, kept = still
                yield Embedded(Still(kept, path, sha, ts, ts_end), vec)
