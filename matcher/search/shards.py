"""Embeddings as shards on disk, and an index built from them with bounded memory.

A worker (a local process, a Ray task) embeds a batch of reference stills and calls
`write_shard(dir, shard_id, vectors, records)`; one process then calls `build_from_shards(dir, index)`,
which commits one index generation. A shard is four files, the last one written its commit point::

    shard-<id>.npy         float32 (n, dim) vectors: memory-mapped when read, never all loaded
    shard-<id>.jsonl       one reference record a line (title, source, sha256, timestamp, episode, ...)
    shard-<id>.probes.npz  calibration probes made from this shard's stills (optional)
    shard-<id>.json        count, dim and the sha256 of each file above: a shard without it is not done

Why not parquet for the records: they are a few short strings a still, read once, in order; JSON
lines need no new dependency (pyarrow is ~40 MB of wheels) and the vectors, the bulk, are `.npy`,
which numpy memory-maps (parquet would have to be decoded into memory).

The build is the same whoever wrote which shard and in what order: shards are taken in shard-id
order, reference ids are given in that order, and the probes of a shard are made with a random
generator seeded from the shard's id and content (`shard_rng`), not from the process or its position
in a run, so a distributed build calibrates exactly as a local one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from matcher.decode.sources import file_sha256
from matcher.errors import MatcherError
from matcher.search import ann
from matcher.search.store import Reference, ReferenceStore, StoreError, write_durably

SHARD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RECORD_FIELDS = ("title", "source", "sha256", "timestamp", "episode", "timestamp_end")


class ShardError(MatcherError):
    """A shard directory or file is missing, incomplete or damaged; str() is one line naming it."""


def shard_rng(shard_id: str, vectors: np.ndarray) -> np.random.Generator:
    """The random generator for a shard's probes: seeded from its id and vectors, so any worker
    (and any order of workers) makes the same probes for it."""
    h = hashlib.sha256(str(shard_id).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


def write_shard(
    directory: str | os.PathLike,
    shard_id: str | int,
    vectors: np.ndarray,
    records: Sequence[Reference | dict],
    probes: dict | None = None,
) -> Path:
    """Write one shard (see the module doc); returns its commit file. `probes`, when given, is
    {"vectors": (m, dim), "rows": (m,) positions in this shard of the stills they were made from,
    "kinds": (m,) "altered" / "sketch"}. Writing a shard id again replaces that shard."""
    shard_id = f"{shard_id:06d}" if isinstance(shard_id, int) else str(shard_id)
    if not SHARD_ID.fullmatch(shard_id):
        raise ShardError(f"shard id {shard_id!r}: use letters, digits, '-' and '_' (at most 64)")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ShardError(f"shard {shard_id}: {len(records)} records for vectors of shape {vectors.shape}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f"shard-{shard_id}"
    marker = base.with_suffix(".json")
    marker.unlink(missing_ok=True)  # not done until written again
    files = {}
    npy = base.with_suffix(".npy")
    write_durably(npy, lambda f: np.save(f, vectors, allow_pickle=False))
    files[npy.name] = file_sha256(npy)
    lines = []
    for r in records:
        row = asdict(r) if isinstance(r, Reference) else dict(r)
        lines.append(json.dumps({k: row.get(k) for k in _RECORD_FIELDS}, ensure_ascii=True))
    jsonl = base.with_suffix(".jsonl")
    write_durably(jsonl, lambda f: f.write(("\n".join(lines) + "\n" if lines else "").encode()))
    files[jsonl.name] = file_sha256(jsonl)
    if probes is not None:
        pz = directory / f"shard-{shard_id}.probes.npz"
        arrays = {
            "vectors": np.ascontiguousarray(probes["vectors"], np.float32).reshape(-1, vectors.shape[1]),
            "rows": np.asarray(probes["rows"], np.int64),
            "kinds": np.asarray(probes["kinds"], dtype=str),
        }
        write_durably(pz, lambda f: np.savez(f, **arrays))
        files[pz.name] = file_sha256(pz)
    doc = {"shard": shard_id, "count": len(vectors), "dim": int(vectors.shape[1]), "files": files}
    write_durably(marker, lambda f: f.write(json.dumps(doc, indent=1, sort_keys=True).encode()))
    return marker


class Shard:
    """A verified shard: its vectors memory-mapped, its records and probes read on demand."""

    def __init__(self, directory: Path, doc: dict):
        self.directory, self.id, self.count, self.dim = directory, doc["shard"], doc["count"], doc["dim"]
        self.files = doc["files"]

    def path(self, suffix: str) -> Path:
        return self.directory / f"shard-{self.id}{suffix}"

    def vectors(self) -> np.ndarray:
        path = self.path(".npy")
        try:
            v = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: unreadable shard vectors ({exc})") from None
        if v.dtype != np.float32 or v.shape != (self.count, self.dim):
            raise ShardError(
                f"{path}: shard vectors are {v.dtype} {v.shape}, its marker says ({self.count}, {self.dim})"
            )
        return v

    def records(self) -> list[Reference]:
        path = self.path(".jsonl")
        out = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("title"), str):
                        raise ValueError(f"line {n} is not a record with a title")
                    out.append(Reference(**{k: row.get(k) for k in _RECORD_FIELDS}))
        except (OSError, ValueError, TypeError) as exc:
            raise ShardError(f"{path}: unreadable shard records ({exc})") from None
        if len(out) != self.count:
            raise ShardError(f"{path}: {len(out)} records, its marker says {self.count}")
        return out

    def probes(self) -> dict | None:
        path = self.path(".probes.npz")
        if path.name not in self.files:
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("vectors", "rows", "kinds")}
        except (OSError, ValueError, KeyError) as exc:
            raise ShardError(f"{path}: unreadable shard probes ({exc})") from None


def read_shards(directory: str | os.PathLike, verify: bool = True) -> list[Shard]:
    """The committed shards of a directory in shard-id order, each file checked against the sha256
    its marker recorded (`verify`). A shard whose marker is missing was not finished: ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardError(f"{directory}: no shard directory here")
    shards = []
    for marker in sorted(directory.glob("shard-*.json")):
        try:
            doc = json.loads(marker.read_bytes())
            ok = (
                isinstance(doc, dict)
                and isinstance(doc.get("shard"), str)
                and marker.name == f"shard-{doc['shard']}.json"
                and isinstance(doc.get("count"), int)
                and isinstance(doc.get("dim"), int)
                and isinstance(doc.get("files"), dict)
            )
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise ShardError(f"{marker}: damaged shard marker")
        shard = Shard(directory, doc)
        if verify:
            for name, digest in shard.files.items():
                path = directory / name
                if not path.is_file():
                    raise ShardError(f"{path}: missing shard file (named by {marker.name})")
                if file_sha256(path) != digest:
                    raise ShardError(f"{path}: shard file damaged: its sha256 differs from {marker.name}")
        shards.append(shard)
    if not shards:
        raise ShardError(f"{directory}: holds no finished shard (shard-*.json)")
    dims = {s.dim for s in shards}
    if len(dims) != 1:
        raise ShardError(f"{directory}: shards of different dimensions {sorted(dims)}")
    return shards


def build_from_shards(
    directory: str | os.PathLike,
    index: str | os.PathLike,
    embedder: dict | None = None,
    *,
    memory_budget: int | str | None = None,
    seed: int = 0,
) -> int:
    """Build the ANN index of the reference library `index` from the shards in `directory`, and
    commit it as one new generation (returned). The index is created (``embedder``: {spec,
    pretrained, fingerprint, dim}) or must be empty. The ANN index is trained on a sample, the
    shards are added one at a time and their lists merged on disk (ann.build_from_chunks): peak
    memory is one shard plus the trained index. `memory_budget` (bytes or '4G') picks IVF-PQ when
    the vectors would not fit; it and the measured recall@10 are recorded in the manifest."""
    budget = ann.parse_bytes(memory_budget)
    shards = read_shards(directory)
    dim = shards[0].dim
    root = Path(index)
    if (root / "manifest.json").exists():
        store = ReferenceStore.open(root, writable=True)
    else:
        if embedder is None:
            raise StoreError(f"{root}: no index here; give the embedder to create one")
        store = ReferenceStore.create(root, embedder)
        store._acquire(implicit=False)  # keep the lock past create's first save
    try:
        if store.dim != dim:
            raise StoreError(f"{root}: index of dim {store.dim}, shards of dim {dim}")
        if store.count:
            raise StoreError(f"{root}: holds {store.count} references; build from shards into a new index")
        ids_of = []
        probe_vecs, probe_ids, probe_titles, probe_kinds = [], [], [], []
        for shard in shards:
            refs = shard.records()
            ids = store.add_references(refs)
            ids_of.append(ids)
            p = shard.probes()
            if p is not None and len(p["rows"]):
                if p["rows"].min() < 0 or p["rows"].max() >= shard.count:
                    raise ShardError(f"{shard.path('.probes.npz')}: probe rows outside the shard")
                probe_vecs.append(p["vectors"])
                probe_ids.append(ids[p["rows"]])
                probe_titles += [refs[int(r)].title for r in p["rows"]]
                probe_kinds.append(p["kinds"].astype(str))
        if probe_vecs:
            store.set_probes(
                np.concatenate(probe_vecs),
                np.concatenate(probe_ids),
                np.asarray(probe_titles, dtype=str),
                np.concatenate(probe_kinds),
            )
        n = sum(s.count for s in shards)
        starts = np.cumsum([0] + [s.count for s in shards])

        def chunks():
            for shard, ids in zip(shards, ids_of, strict=True):
                yield shard.vectors(), ids

        def take(rows):
            out = []
            for k, shard in enumerate(shards):
                sel = rows[(rows >= starts[k]) & (rows < starts[k + 1])] - starts[k]
                if len(sel):
                    out.append(np.asarray(shard.vectors()[sel], np.float32))
            return np.concatenate(out)

        store.build_index(chunks, n, take, memory_budget=budget, seed=seed)
        store.save(memory_budget=budget)
        return int(store.manifest["generation"])
    finally:
        store.close()
