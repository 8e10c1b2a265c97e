"""ReferenceStore: the reference library on disk. FAISS holds the vectors, SQLite the metadata.

Layout of an index directory::

    manifest.json            the commit point: format, embedder, dim, generation, calibration, threshold
    metadata.sqlite          one row per reference still (title, episode, source, sha256, timestamp)
    vectors-<gen>.faiss      FAISS index, ids = SQLite row ids
    probes-<gen>.npz         pseudo-query vectors the scorer calibrates on (see scoring.py)

Saves are atomic: a new generation's files are written under new names, then `manifest.json` is
replaced in one rename. SQLite rows carry the generation that added/removed them, so a crash at any
point leaves the previous generation intact and the half-written rows are ignored (and purged on the
next open). No pickle anywhere: an index may travel between investigators.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher import ann

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "metadata.sqlite"


class StoreError(Exception):
    """The index directory is missing, corrupt, or incompatible; str() is a one-line reason."""


@dataclass
class Reference:
    """Metadata of one reference still."""

    title: str
    source: str
    sha256: str | None = None
    timestamp: float | None = None
    episode: str | None = None
    id: int | None = None
    timestamp_end: float | None = (
        None  # a video still stands for [timestamp, timestamp_end] (duplicates dropped)
    )


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    episode TEXT,
    source TEXT NOT NULL,
    sha256 TEXT,
    timestamp REAL,
    timestamp_end REAL,
    added_gen INTEGER NOT NULL,
    removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS refs_title ON refs(title);
"""


class ReferenceStore:
    """Reference stills of known productions: vectors for search, metadata for evidence."""

    def __init__(self, root: Path, manifest: dict, index, db: sqlite3.Connection, probes: dict | None):
        self.root = root
        self.manifest = manifest
        self.index = index
        self.db = db
        # {"vectors": (m, d) float32, "ref_ids": (m,) int64, "titles": (m,) str, "kinds": (m,) str};
        # None: not read yet (see `probes`)
        self._probes = probes
        self._dirty = False
        self._mapped = False  # True while the index is a read-only memory map of its file

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, root: str | os.PathLike, embedder: dict) -> ReferenceStore:
        """A new empty store; ``embedder`` is {spec, pretrained, fingerprint, dim}."""

        root = Path(root)
        if (root / MANIFEST).exists():
            raise StoreError(f"{root}: an index already exists here")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": dict(embedder),
            "dim": int(embedder["dim"]),
            "generation": 0,
            "count": 0,
            "vectors": None,
            "probes": None,
            "search": {"kind": "exact"},
            "calibration": None,
            "threshold": None,
        }
        db = cls._connect(root)
        index = ann.exact_index(manifest["dim"])
        store = cls(root, manifest, index, db, _empty_probes(manifest["dim"]))
        store._dirty = True
        store.save()
        return store

    @classmethod
    def open(cls, root: str | os.PathLike, read_only: bool = False) -> ReferenceStore:
        """``read_only``: SQLite opened with mode=ro and nothing on disk touched (a server reading
        beside `index add`); the connection may then be used from any thread (callers serialise)."""
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise StoreError(
                f"{root}: no index here (missing {MANIFEST}); build one with 'matcher index add'"
            )
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{mpath}: corrupt manifest ({exc})") from None
        if not isinstance(manifest, dict) or "format_version" not in manifest:
            raise StoreError(f"{mpath}: not a matcher index manifest")
        if manifest["format_version"] != FORMAT_VERSION:
            raise StoreError(
                f"{root}: index format {manifest['format_version']} is not supported by this version "
                f"(reads format {FORMAT_VERSION})"
            )
        dim = int(manifest["dim"])
        mapped = False
        if manifest.get("vectors"):
            vpath = root / manifest["vectors"]
            try:
                # Large indexes open memory-mapped (read-only, shared page cache); `_writable`
                # reloads them into memory before the first add/remove.
                mapped = vpath.stat().st_size >= ann.MMAP_MIN_BYTES
                index = ann.read_index(vpath, mmap=mapped)
            except Exception as exc:
                raise StoreError(f"{vpath}: corrupt or missing vector file ({exc})") from None
            if index.d != dim or index.ntotal != manifest["count"]:
                raise StoreError(f"{vpath}: vector file does not match the manifest (dim/count differ)")
        else:
            index = ann.exact_index(dim)
        try:
            db = cls._connect_read_only(root) if read_only else cls._connect(root)
            db.execute("SELECT count(*) FROM refs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{root / DATABASE}: corrupt metadata database ({exc})") from None
        store = cls(root, manifest, index, db, None)
        store._mapped = mapped
        if not read_only:
            store._recover()  # read-only: rows of a half-written generation are filtered by _visible
        return store

    @property
    def probes(self) -> dict:
        """The calibration probes, read from disk on first use: matching never needs them, and a
        large index holds many (1000 titles x 64 probes of 727 dims, classic-v2: 190 MB, up to 0.5 s
        to read)."""
        if self._probes is None:
            probes = _empty_probes(self.dim)
            name = self.manifest.get("probes")
            if name:
                ppath = self.root / name
                try:
                    with np.load(ppath, allow_pickle=False) as z:
                        probes = {k: z[k] for k in ("vectors", "ref_ids", "titles")}
                        # indexes written before sketch probes existed hold altered copies only
                        probes["kinds"] = z["kinds"] if "kinds" in z else np.full(len(z["titles"]), "altered")
                except Exception as exc:
                    raise StoreError(f"{ppath}: corrupt calibration probes ({exc})") from None
            self._probes = probes
        return self._probes

    @probes.setter
    def probes(self, value: dict) -> None:
        self._probes = value

    def _writable(self) -> None:
        """Load a memory-mapped index into memory so that it can be changed."""
        if self._mapped:
            self.index = ann.read_index(self.root / self.manifest["vectors"], mmap=False)
            self._mapped = False

    @staticmethod
    def _connect_read_only(root: Path) -> sqlite3.Connection:
        path = (root / DATABASE).resolve()
        if not path.is_file():
            raise sqlite3.DatabaseError("no metadata database")
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    @staticmethod
    def _connect(root: Path) -> sqlite3.Connection:
        db = sqlite3.connect(root / DATABASE)
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(refs)")}
        if "timestamp_end" not in columns:  # indexes written before the time range was kept
            try:
                db.execute("ALTER TABLE refs ADD COLUMN timestamp_end REAL")
            except sqlite3.OperationalError:
                pass  # read-only: the column reads as missing (None) below
        return db

    def _recover(self) -> None:
        """Undo what a crashed save left behind; finish clean-up a completed save left for later."""
        gen = self.manifest["generation"]
        try:
            with self.db:
                self.db.execute("DELETE FROM refs WHERE added_gen > ?", (gen,))
                self.db.execute("UPDATE refs SET removed_gen = NULL WHERE removed_gen > ?", (gen,))
                self.db.execute("DELETE FROM refs WHERE removed_gen <= ?", (gen,))
        except sqlite3.OperationalError:
            pass  # read-only index (e.g. evidence on write-protected media): queries filter by generation
        keep = {self.manifest.get("vectors"), self.manifest.get("probes")}
        for stale in list(self.root.glob("vectors-*.faiss*")) + list(self.root.glob("probes-*.npz*")):
            if stale.name not in keep:
                try:
                    stale.unlink()
                except OSError:
                    pass

    # ---------------------------------------------------------------- reading
    @functools.cached_property
    def _end_column(self) -> str:
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(refs)")}
        return "timestamp_end" if "timestamp_end" in columns else "NULL"

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def _visible(self) -> str:
        g = int(self.manifest["generation"]) + (1 if self._dirty else 0)
        return f"added_gen <= {g} AND (removed_gen IS NULL OR removed_gen > {g})"

    def titles(self) -> dict[str, int]:
        """Reference still count per title."""
        rows = self.db.execute(
            f"SELECT title, count(*) FROM refs WHERE {self._visible()} GROUP BY title ORDER BY title"
        )
        return dict(rows.fetchall())

    def ids_of_title(self, title: str) -> np.ndarray:
        rows = self.db.execute(f"SELECT id FROM refs WHERE title = ? AND {self._visible()}", (title,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def references(self, ids: Sequence[int]) -> dict[int, Reference]:
        ids = [int(i) for i in ids if i >= 0]
        out: dict[int, Reference] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT id, title, episode, source, sha256, timestamp, {self._end_column} FROM refs"
                f" WHERE id IN ({marks})",
                chunk,
            ):
                out[row[0]] = Reference(
                    title=row[1],
                    episode=row[2],
                    source=row[3],
                    sha256=row[4],
                    timestamp=row[5],
                    id=row[0],
                    timestamp_end=row[6],
                )
        return out

    def title_array(self, ids: np.ndarray) -> np.ndarray:
        """Titles for an array of ids (any shape), '' for -1 (no neighbour)."""
        flat = ids.reshape(-1)
        refs = self.references(np.unique(flat[flat >= 0]))
        return np.array([refs[i].title if i in refs else "" for i in flat], dtype=object).reshape(ids.shape)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for the given ids."""
        return ann.reconstruct(self.index, ids)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: np.ndarray | None = None,
        only_ids: np.ndarray | None = None,
    ):
        """k nearest references by inner product: (similarities, ids), both (n, k); missing = -1.

        ``exclude_ids`` / ``only_ids`` restrict the search (calibration uses them for leave-one-out)."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.count))
        if self.count == 0:
            n = len(queries)
            return np.full((n, 1), -1.0, np.float32), np.full((n, 1), -1, np.int64)
        if only_ids is not None:
            allowed = np.ascontiguousarray(only_ids, dtype=np.int64)
            inner = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            # Few eligible vectors: an IVF index probes 4x the lists to find them.
            return ann.search(self.index, queries, k, sel=inner, widen=4)
        if exclude_ids is not None and len(exclude_ids):
            excluded = np.ascontiguousarray(exclude_ids, dtype=np.int64)
            inner = faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded))  # kept alive: sel uses it
            sel = faiss.IDSelectorNot(inner)
            return ann.search(self.index, queries, k, sel=sel)
        return ann.search(self.index, queries, k)

    # ---------------------------------------------------------------- writing
    def add(self, vectors: np.ndarray, refs: Sequence[Reference]) -> np.ndarray:
        """Append references (visible at once in this process; durable after `save`)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise StoreError(f"vectors of shape {vectors.shape} do not fit an index of dim {self.dim}")
        if len(vectors) != len(refs):
            raise ValueError("one reference per vector")
        self._writable()
        gen = self.manifest["generation"] + 1
        with self.db:
            ids = [
                self.db.execute(
                    "INSERT INTO refs (title, episode, source, sha256, timestamp, timestamp_end, added_gen)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (r.title, r.episode, r.source, r.sha256, r.timestamp, r.timestamp_end, gen),
                ).lastrowid
                for r in refs
            ]
        ids_arr = np.asarray(ids, dtype=np.int64)
        if len(ids_arr):
            self.index.add_with_ids(vectors, ids_arr)
        self._dirty = True
        return ids_arr

    def remove_title(self, title: str) -> int:
        ids = self.ids_of_title(title)
        if len(ids) == 0:
            return 0
        self._writable()
        gen = self.manifest["generation"] + 1
        with self.db:
            self.db.execute(
                "UPDATE refs SET removed_gen = ? WHERE title = ? AND removed_gen IS NULL", (gen, title)
            )
        ann.remove(self.index, ids)
        keep = self.probes["titles"] != title
        self.probes = {k: v[keep] for k, v in self.probes.items()}
        self._dirty = True
        return len(ids)

    def set_probes(
        self, vectors: np.ndarray, ref_ids: np.ndarray, titles: np.ndarray, kinds: np.ndarray
    ) -> None:
        self.probes = {
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
            "ref_ids": np.asarray(ref_ids, dtype=np.int64),
            "titles": np.asarray(titles, dtype=str),
            "kinds": np.asarray(kinds, dtype=str),  # "altered" (make_probe) or "sketch" (make_sketch)
        }
        self._dirty = True

    def save(self, **manifest_updates) -> None:
        """Write a new generation atomically (files first, manifest rename last)."""

        if not self._dirty and not manifest_updates:
            return
        gen = self.manifest["generation"] + 1
        manifest = dict(self.manifest, **manifest_updates)
        if ann.should_rebuild(self.index, manifest.get("search")):
            # Grown past exact search (or an IVF index's size changed 4x since it was trained):
            # rebuild the kind that fits, with recall@10 measured (see ann.build).
            vectors, ids = ann.all_vectors(self.index)
            self.index = None  # free the old index first: peak 2x the vectors, not 3x
            self.index, manifest["search"] = ann.build(vectors, ids)
            del vectors, ids
        elif ann.describe(self.index)["kind"] == "exact":  # keep a fallback's note and size
            manifest["search"] = {**(manifest.get("search") or {}), **ann.describe(self.index)}
        manifest.update(generation=gen, count=int(self.index.ntotal), vectors=f"vectors-{gen}.faiss")
        vpath = self.root / manifest["vectors"]
        tmp = vpath.with_name(vpath.name + ".tmp")
        ann.write_index(self.index, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, vpath)
        manifest["probes"] = f"probes-{gen}.npz"
        ppath = self.root / manifest["probes"]
        with open(ppath.with_name(ppath.name + ".tmp"), "wb") as f:
            np.savez(f, **self.probes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(ppath.with_name(ppath.name + ".tmp"), ppath)
        _fsync_dir(self.root)
        _fsync_write(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        _fsync_dir(self.root)
        self.manifest = manifest
        self._dirty = False
        self._recover()  # the new generation is committed: purge rows/files the old one needed

    def info(self) -> dict:
        """Titles, counts, model, search kind, calibration and size: what `index info` shows.
        Needs no model load, so it works where the weights are not available."""
        m = self.manifest
        cal = m.get("calibration") or {}
        return {
            "index": str(self.root),
            "model": m["embedder"]["spec"],
            "pretrained": m["embedder"].get("pretrained"),
            "fingerprint": m["embedder"]["fingerprint"],
            "dim": m["dim"],
            "references": self.count,
            "titles": self.titles(),
            "search": m.get("search", {}),
            "threshold": m.get("threshold"),
            # grey and line-art queries have their own thresholds (scoring.py), when the index could fit them
            "grey_threshold": cal.get("grey_threshold"),
            "sketch_threshold": (cal.get("sketch") or {}).get("threshold"),
            "calibrated": bool(cal.get("fitted")),
            "unknown_share": cal.get("unknown_share", 0.5),
            "size_bytes": self.size_on_disk(),
            "format_version": m["format_version"],
            "generation": m["generation"],
        }

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def close(self) -> None:
        self.db.close()


def _empty_probes(dim: int) -> dict:
    return {
        "vectors": np.zeros((0, dim), np.float32),
        "ref_ids": np.zeros(0, np.int64),
        "titles": np.zeros(0, dtype="<U1"),
        "kinds": np.zeros(0, dtype="<U1"),
    }
