"""The pipeline's stages as small picklable callables over batches: an executor runs them in its own
workers (here: run.pool's decode_in_order, then the embedder in this process; on a cluster: Ray Data,
run.ray_engine) and the stage does not know which. A batch is a dict of equal-length lists (Ray
Data's "default" format); a row is one decode task (a file, or one segment of a long one).

    DecodeStage  {"key", "task"}   -> one row per segment: {"key", "segment", "result"}
    EmbedStage   those rows        -> the same rows, each prepared still replaced by its vector
                                      (float32, dim): only vectors travel back

`task` and `result` are pickled (decoder.Task, the decoder's result dict): Arrow has no column type
for a PIL image or a torch tensor, and bytes cross any executor unchanged. After EmbedStage the
prepared stills are replaced by their vectors.
"""

from __future__ import annotations

import pickle

import numpy as np

from matcher.decode.decoder import Limits, decode_segments
from matcher.decode.sources import InputError


def stills_of(result: dict, path: str) -> tuple[list[tuple], InputError | None]:
    """The decoder's result for one file (or segment) as still tuples (path, sha256, timestamp,
    timestamp_end, prepared, kept, frame) and the file's error, if it failed (after the stills it
    did yield). A frame of an animation that cannot be decoded fails alone."""
    stills, error = [], None
    for meta, prepared, part_error in result["parts"]:
        if part_error is not None:
            where = f" (frame {meta.get('frame')})" if meta.get("frame") is not None else ""
            error = error or InputError(path, f"{part_error}{where}")
            continue
        stills.append(
            (path, result["sha256"], meta.get("timestamp"), meta.get("timestamp_end"), prepared,
             meta.get("kept"), meta.get("frame"))
        )  # fmt: skip
    if result["status"] is not None and result["status"] != "resumed":
        error = InputError(path, result["reason"], result["status"])
    return stills, error


def embeddable(result: dict) -> list[int]:
    """Indices of the parts of a result that have a prepared still to embed."""
    return [n for n, (_m, image, err) in enumerate(result["parts"]) if err is None and image is not None]


class DecodeStage:
    """Decode each task's file, every segment, with the embedder's decode-side `prepare`."""

    def __init__(self, limits: Limits, prepare=None):
        self.limits, self.prepare = limits, prepare

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"key": [], "segment": [], "result": []}
        for key, task in zip(batch["key"], batch["task"], strict=True):
            for segment, result in enumerate(decode_segments(pickle.loads(task), self.limits, self.prepare)):
                out["key"].append(key)
                out["segment"].append(segment)
                out["result"].append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return out


class EmbedStage:
    """Embed the prepared stills of a batch of results. Constructed once per worker (a Ray actor
    holds the model), from the model spec and its options, so the model never crosses a process."""

    def __init__(self, spec: str, options: dict | None = None):
        from matcher.embed import create_embedder

        self.embedder = create_embedder(spec, **(options or {}))

    def __call__(self, batch: dict) -> dict:
        results = [pickle.loads(r) for r in batch["result"]]
        todo = [(k, n) for k, res in enumerate(results) for n in embeddable(res)]
        vectors = np.zeros((len(todo), self.embedder.dim), np.float32)
        if todo:
            vectors = np.asarray(
                self.embedder.embed_prepared([results[k]["parts"][n][1] for k, n in todo]), np.float32
            )
        for (k, n), vec in zip(todo, vectors, strict=True):  # the vector takes the prepared still's place
            meta, _image, err = results[k]["parts"][n]
            results[k]["parts"][n] = (meta, vec, err)
        return {
            "key": list(batch["key"]),
            "segment": list(batch["segment"]),
            "result": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results],
        }
