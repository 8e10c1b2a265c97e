"""The pipeline's stages as small picklable callables over batches (issue 16): an executor runs
them in its own workers, here (run.pipeline's pool) or on a Ray cluster (run.ray_engine), and the
stage does not know which. A batch is a dict of equal-length lists (Ray Data's "default" format).

    DecodeStage  {"i", "path"} -> one row per still, and one per failed file (after its stills):
                                  {"i", "j", "still", "error_path", "error"}
    EmbedStage   those rows    -> the same rows plus "vector" (float32 bytes; b"" on an error row)

`still` is a pickled (path, sha256, timestamp, timestamp_end, prepared, kept_image) tuple: Arrow
has no column type for a PIL image or a torch tensor, and bytes cross any executor unchanged.
"""

from __future__ import annotations

import pickle

import numpy as np

from matcher.run.pipeline import _decode, _prep_fns


class DecodeStage:
    """Decode files into prepared stills with the embedder's decode-side transform; a file that
    fails gives one row with `error` set, after the stills it did yield (the order is kept by j)."""

    def __init__(self, every: float, distinct: bool, keep: bool, transform=None):
        self.every, self.distinct, self.keep, self.transform = every, distinct, keep, transform

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"i": [], "j": [], "still": [], "error_path": [], "error": []}
        for i, path in zip(batch["i"], batch["path"], strict=True):
            stills, error = _decode(str(path), self.every, self.distinct, self.keep, self.transform)
            for j, still in enumerate(stills):
                out["i"].append(int(i))
                out["j"].append(j)
                out["still"].append(pickle.dumps(still, protocol=pickle.HIGHEST_PROTOCOL))
                out["error_path"].append("")
                out["error"].append("")
            if error is not None:
                out["i"].append(int(i))
                out["j"].append(len(stills))
                out["still"].append(b"")
                out["error_path"].append(str(error[0]))
                out["error"].append(error[1])
        return out


class EmbedStage:
    """Embed the prepared stills of a batch. Constructed once per worker (a Ray actor holds the
    model), from the model spec and its options, so the model itself never crosses a process."""

    def __init__(self, spec: str, options: dict | None = None):
        from matcher.embed import create_embedder

        self.embed = _prep_fns(create_embedder(spec, **(options or {})))[1]

    def __call__(self, batch: dict) -> dict:
        rows = [k for k, err in enumerate(batch["error"]) if not err]
        vectors = [b""] * len(batch["error"])
        if rows:
            prepared = [pickle.loads(batch["still"][k])[4] for k in rows]
            for k, vec in zip(rows, np.asarray(self.embed(prepared), dtype=np.float32), strict=True):
                vectors[k] = vec.tobytes()
        return {
            **{key: list(batch[key]) for key in ("i", "j", "still", "error_path", "error")},
            "vector": vectors,
        }
