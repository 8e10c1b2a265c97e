"""ReferenceStore: the reference library on disk. FAISS holds the vectors, SQLite the metadata.

Layout of an index directory::

    manifest.json            the commit point: format, embedder, dim, generation, calibration, threshold,
                             and the sha256 and size of every file below
    metadata-<gen>.sqlite    one row per reference still (title, episode, source, sha256, timestamp)
    vectors-<gen>.faiss      FAISS index, ids = SQLite row ids
    probes-<gen>.npz         pseudo-query vectors the scorer calibrates on (see scoring.py)
    index.lock               held by the one process writing (`filelock`); readers never take it
    background-<gen>.npz     the shipped background set embedded with the index's model (background.py)
    vectors-<gen>.ivfdata    the inverted lists of an IVF index (format 3), memory-mapped by readers;
                             vectors-<gen>.faiss then holds only the quantizer and the list offsets

Every file of a generation is written once under a new name and never changed afterwards; the new
generation becomes current when `manifest.json` is replaced in one rename. A crash at any point
leaves the previous generation intact; what it left half-written is deleted by the next writer,
under the lock. Readers never write: they open the files of the generation the manifest names,
check each against its recorded sha256 and size (memoised per file identity in the user's cache, so
`match cel.png` does not re-read a large index) and refuse the index on any mismatch, missing file
or malformed field. No pickle anywhere: an index may travel between investigators.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.decode.sources import file_sha256
from matcher.errors import MatcherError
from matcher.search import ann

#: 2: per-generation metadata files and a sha256 of every file in the manifest.
#: 3: as 2, with an IVF index's lists in a file of their own (`ivfdata`, OnDiskInvertedLists).
#: Exact indexes are still written as format 2, so that older versions keep reading them.
FORMAT_VERSION = 2
FORMAT_ON_DISK = 3
FORMATS = (FORMAT_VERSION, FORMAT_ON_DISK)
MANIFEST = "manifest.json"
LOCK = "index.lock"
#: Seconds a second writer waits for the first before giving up ($MATCHER_LOCK_TIMEOUT).
DEFAULT_LOCK_TIMEOUT = 600.0
#: Names of the files a generation consists of (the manifest fields that hold them).
FILE_FIELDS = {
    "vectors": "vectors-{}.faiss",
    "probes": "probes-{}.npz",
    "metadata": "metadata-{}.sqlite",
    "background": "background-{}.npz",
}
#: A generation's file that only an IVF index has (format 3).
IVFDATA_FIELD, IVFDATA = "ivfdata", "vectors-{}.ivfdata"
_STALE = re.compile(
    r"^(vectors-.*\.faiss|vectors-.*\.ivfdata|probes-.*\.npz|background-.*\.npz|metadata.*\.sqlite|manifest\.json)(\..*)?$"
)


class StoreError(MatcherError):
    """The index directory is missing, corrupt, or incompatible; str() is a one-line reason."""


class IndexExists(StoreError):
    """`create` found a committed index (another writer may have created it first)."""


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


def write_durably(path: Path, write) -> None:
    """``write(f)`` into ``path``.tmp, fsync it, then rename it over ``path``: a crash leaves either
    the old file or the complete new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
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


def db_text(value):
    """SQLite stores UTF-8 only: a name that is not UTF-8 (surrogate escapes from the file system) is
    kept with its undecodable bytes written as \\xNN, as the dump reports write them."""
    if isinstance(value, str):
        return os.fsencode(value).decode("utf-8", "backslashreplace") if _has_surrogates(value) else value
    return value


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# ------------------------------------------------------------------------------------ file checksums
def _cache_path() -> Path:
    explicit = os.environ.get("MATCHER_HASH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "matcher" / "index-hashes.json"


_CACHE_ENTRIES = 1024


def _identity(path: Path, st: os.stat_result) -> str:
    # ctime too: it cannot be set back by a user (utime sets mtime and atime only), so a file edited
    # and then given back its mtime is still hashed again.
    return f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _load_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(updates: dict) -> None:
    """Remember sha256s by file identity, outside the index (readers never write there). Best
    effort: a cache that cannot be written only costs hashing again next time."""
    path = _cache_path()
    try:
        cache = _load_cache()
        cache.update(updates)
        if len(cache) > _CACHE_ENTRIES:
            cache = dict(list(cache.items())[-_CACHE_ENTRIES:])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass


def file_digest(path: Path, cache: dict | None = None, updates: dict | None = None) -> tuple[str, int]:
    """(sha256, size) of a file, from the cache when its identity (inode, size, mtime, ctime) is
    unchanged since it was last hashed."""
    st = os.stat(path)
    key = _identity(path, st)
    if cache is not None and isinstance(cache.get(key), str):
        return cache[key], st.st_size
    digest = file_sha256(path)
    if os.stat(path).st_mtime_ns == st.st_mtime_ns and updates is not None:
        updates[key] = digest
    return digest, st.st_size


# ------------------------------------------------------------------------------------ manifest checks
def recorded_sources(root: Path) -> tuple[dict, list[tuple]]:
    """(manifest, rows of (title, episode, source, sha256)) of the committed generation, read without
    verifying or opening the vectors: what `matcher index rebuild` needs to re-embed an index, also
    one of format 1 (no checksums) or one whose model can no longer be loaded. Read-only."""
    mpath = Path(root) / MANIFEST
    try:
        manifest = json.loads(mpath.read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{mpath}: cannot read the manifest ({exc})") from None
    if not isinstance(manifest, dict) or not _is_int(manifest.get("generation")):
        raise StoreError(f"{mpath}: not a matcher index manifest")
    if manifest.get("format_version") != 1:
        check_manifest(manifest, mpath)
    gen = manifest["generation"]
    dbpath = Path(root) / (manifest.get("metadata") or "metadata.sqlite")  # format 1: one file
    try:
        db = _read_only_db(dbpath)
        try:
            rows = db.execute(
                "SELECT title, episode, source, sha256, min(id) FROM refs WHERE added_gen <= ? "
                "AND (removed_gen IS NULL OR removed_gen > ?) "
                "GROUP BY title, episode, source, sha256 ORDER BY min(id)",
                (gen, gen),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{dbpath}: cannot read the index metadata ({exc})") from None
    return manifest, [r[:4] for r in rows]


def take_writer_lock(root: Path):
    """Become the index's one writer (a held `filelock.FileLock`). A second writer waits (saying so
    on stderr) up to $MATCHER_LOCK_TIMEOUT seconds, then gives up with a StoreError."""
    import filelock

    timeout = lock_timeout()
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: not an index directory (it is a file)")
    lock = filelock.FileLock(str(root / LOCK))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if timeout > 0:
                print(
                    f"matcher: another matcher is writing to {root}; waiting up to {timeout:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            try:
                lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise StoreError(
                    f"{root}: another matcher is writing to this index (waited {timeout:.0f} s); "
                    f"try again when it has finished"
                ) from None
    except OSError as exc:
        raise StoreError(
            f"{root}: cannot write to this index ({exc.strerror or exc}); it can be read, not changed"
        ) from None
    return lock


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(manifest, mpath: Path) -> None:
    """Raise StoreError naming the first malformed field: an edited or damaged manifest is refused,
    never interpreted (a wrong generation or null vectors would silently answer everything unknown)."""

    def bad(field: str, what: str) -> StoreError:
        value = manifest.get(field) if isinstance(manifest, dict) else manifest
        return StoreError(f"{mpath}: damaged manifest: {field!r} {what} (found {json.dumps(value)[:60]})")

    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise StoreError(f"{mpath}: not a matcher index manifest")
    fv = manifest["format_version"]
    if not _is_int(fv):
        raise bad("format_version", "must be an integer")
    if fv == 1:
        raise StoreError(
            f"{mpath.parent}: index format 1 has no file checksums and cannot be verified; "
            f"rebuild it with this version: matcher index rebuild --index {mpath.parent}"
        )
    if fv not in FORMATS:
        raise StoreError(
            f"{mpath.parent}: index format {fv} is not supported by this version "
            f"(reads formats {', '.join(map(str, FORMATS))})"
        )
    emb = manifest.get("embedder")
    if not isinstance(emb, dict) or not isinstance(emb.get("spec"), str) or not emb.get("spec"):
        raise bad("embedder", "must be an object with a 'spec'")
    if not isinstance(emb.get("fingerprint"), str):
        raise StoreError(f"{mpath}: damaged manifest: 'embedder' has no 'fingerprint'")
    if not (emb.get("pretrained") is None or isinstance(emb.get("pretrained"), str)):
        raise StoreError(f"{mpath}: damaged manifest: 'embedder.pretrained' must be a string or null")
    dim = manifest.get("dim")
    if not _is_int(dim) or dim <= 0 or emb.get("dim") != dim:
        raise bad("dim", "must be a positive integer equal to embedder.dim")
    gen = manifest.get("generation")
    if not _is_int(gen) or gen < 1:
        raise bad("generation", "must be an integer >= 1")
    count = manifest.get("count")
    if not _is_int(count) or count < 0:
        raise bad("count", "must be an integer >= 0")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files", "must be an object of checksums")
    fields = dict(FILE_FIELDS)
    if fv == FORMAT_ON_DISK:
        fields[IVFDATA_FIELD] = IVFDATA
    elif manifest.get(IVFDATA_FIELD) is not None:
        raise bad(IVFDATA_FIELD, f"must be null in format {fv}")
    for field, pattern in fields.items():
        if manifest.get(field) != pattern.format(gen):
            raise bad(field, f"must be {pattern.format(gen)!r} in generation {gen}")
    if set(files) != {pattern.format(gen) for pattern in fields.values()}:
        raise StoreError(f"{mpath}: damaged manifest: 'files' does not list the files of generation {gen}")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or not _is_int(entry.get("size"))
        ):
            raise StoreError(f"{mpath}: damaged manifest: checksum of {name} is malformed")
    if not isinstance(manifest.get("search"), dict):
        raise bad("search", "must be an object")
    if not (manifest.get("calibration") is None or isinstance(manifest.get("calibration"), dict)):
        raise bad("calibration", "must be an object or null")
    thr = manifest.get("threshold")
    if not (thr is None or (isinstance(thr, (int, float)) and not isinstance(thr, bool) and 0 <= thr <= 1)):
        raise bad("threshold", "must be a number between 0 and 1, or null")


def lock_timeout() -> float:
    raw = os.environ.get("MATCHER_LOCK_TIMEOUT")
    if raw is None or raw == "":
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"MATCHER_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise StoreError(f"MATCHER_LOCK_TIMEOUT={raw!r} must be >= 0 seconds")
    return value


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


def _read_only_db(path: Path) -> sqlite3.Connection:
    """Open a committed metadata file without ever writing to it (immutable: no journal, no lock
    file, nothing created when it is missing)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro&immutable=1"
    # read-only, so one connection may serve several threads (`matcher serve` serialises its reads)
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


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
        self._background: dict | None = None  # {"vectors", "kinds"}; None: not read yet
        self._background_file = None  # the generation's background file, open from `open` on
        self._dirty = False
        self._mapped = False  # True while the index is a read-only memory map of its file
        self._db_copy = False  # True once self.db is the next generation's (writable) copy
        self._lock = None  # filelock.FileLock while this process is the index's writer
        self._built: dict | None = None  # build_index's info until save commits it
        self._implicit_lock = False  # taken by a write call, released by the save that commits it
        self._probes_file = None  # the generation's probe file, open from `open` on
        #: sha256 of the manifest as opened: with the file checksums it holds, it pins every byte
        #: of the generation (the report's custody fingerprint)
        self.fingerprint: str | None = None

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, root: str | os.PathLike, embedder: dict) -> ReferenceStore:
        """A new empty store; ``embedder`` is {spec, pretrained, fingerprint, dim}. The store holds
        the writer lock until `close`."""

        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: not a directory (an index is a directory)")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{root}: cannot create the index directory ({exc.strerror or exc})") from None
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "embedder": dict(embedder),
            "dim": int(embedder["dim"]),
            "generation": 0,
            "count": 0,
            "vectors": None,
            "probes": None,
            "metadata": None,
            "background": None,
            "files": {},
            "search": {"kind": "exact"},
            "calibration": None,
            "threshold": None,
        }
        store = cls(root, manifest, ann.exact_index(manifest["dim"]), None, _empty_probes(manifest["dim"]))
        store._acquire(implicit=True)  # released by the first save
        try:
            if (root / MANIFEST).exists():
                raise IndexExists(f"{root}: an index already exists here")
            leftovers = sorted(p.name for p in root.iterdir() if _STALE.match(p.name))
            if leftovers:
                # e.g. a deleted manifest.json: starting afresh would throw the old index away
                raise StoreError(
                    f"{root}: holds index files ({', '.join(leftovers[:3])}) but no {MANIFEST}; "
                    f"refusing to overwrite a damaged index: restore its manifest or use another --index"
                )
            store.db = sqlite3.connect(store._db_tmp_path())
            store.db.executescript(_SCHEMA)
            store._db_copy = True
            store._dirty = True
            store.save()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, root: str | os.PathLike, writable: bool = False) -> ReferenceStore:
        """Open the committed generation, verified file by file. A reader never writes to the index;
        ``writable`` takes the writer lock first (waiting for another writer, see `lock_timeout`)."""
        root = Path(root)
        if writable:
            store = cls(root, {}, None, None, None)
            store._acquire(implicit=False)
            try:
                store._load()
                store._purge()
            except BaseException:
                store.close()
                raise
            return store
        store = cls(root, {}, None, None, None)
        store._load()
        return store

    def _load(self) -> None:
        """Read the manifest and the files it names. A writer may commit a new generation and delete
        the old files between the two: then the new manifest is read and the load retried."""
        for attempt in range(5):
            raw = self._read_manifest()
            try:
                self._load_generation(raw)
                return
            except FileNotFoundError as exc:
                if attempt < 4 and self._manifest_bytes() != raw:
                    continue
                raise StoreError(f"{exc.filename}: missing index file (named by {MANIFEST})") from None

    def _manifest_bytes(self) -> bytes | None:
        try:
            return (self.root / MANIFEST).read_bytes()
        except OSError:
            return None

    def _read_manifest(self) -> bytes:
        root = self.root
        mpath = root / MANIFEST
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: not an index directory (it is a file)")
        if not mpath.is_file():
            raise StoreError(
                f"{root}: no index here (missing {MANIFEST}); build one with 'matcher index add'"
            )
        try:
            return mpath.read_bytes()
        except OSError as exc:
            raise StoreError(f"{mpath}: cannot read manifest ({exc.strerror or exc})") from None

    def _load_generation(self, raw: bytes) -> None:
        mpath = self.root / MANIFEST
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{mpath}: corrupt manifest ({exc})") from None
        check_manifest(manifest, mpath)
        cache, updates = _load_cache(), {}
        for name, want in manifest["files"].items():
            path = self.root / name
            st = os.stat(path)  # FileNotFoundError: retried by _load
            if st.st_size != want["size"]:
                raise StoreError(
                    f"{path}: index file damaged: {st.st_size} bytes, the manifest recorded {want['size']}"
                )
            try:
                digest, _ = file_digest(path, cache, updates)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise StoreError(f"{path}: cannot read index file ({exc.strerror or exc})") from None
            if digest != want["sha256"]:
                raise StoreError(
                    f"{path}: index file damaged: its sha256 differs from the one recorded in {MANIFEST}"
                )
        if updates:
            _save_cache(updates)
        dim = int(manifest["dim"])
        vpath = self.root / manifest["vectors"]
        try:
            if manifest.get(IVFDATA_FIELD):
                # IVF lists memory-mapped read-only from their own (verified) file; a writer copies
                # them into memory before changing them (`_changeable`)
                mapped = False
                index = ann.read_on_disk(vpath, self.root / manifest[IVFDATA_FIELD])
            else:
                # Large indexes open memory-mapped (read-only, shared page cache); `_writable`
                # reloads them into memory before the first add/remove.
                mapped = vpath.stat().st_size >= ann.MMAP_MIN_BYTES
                index = ann.read_index(vpath, mmap=mapped)
        except FileNotFoundError:
            raise
        except Exception as exc:
            if not vpath.exists():  # deleted by a writer since the manifest was read: retried
                raise FileNotFoundError(2, "missing", str(vpath)) from None
            raise StoreError(f"{vpath}: corrupt or missing vector file ({exc})") from None
        if index.d != dim or index.ntotal != manifest["count"]:
            raise StoreError(f"{vpath}: vector file does not match the manifest (dim/count differ)")
        dbpath = self.root / manifest["metadata"]
        if not dbpath.is_file():
            raise FileNotFoundError(2, "missing", str(dbpath))
        try:
            db = _read_only_db(dbpath)
            db.execute("SELECT count(*) FROM refs").fetchone()
        except sqlite3.DatabaseError as exc:
            if not dbpath.exists():
                raise FileNotFoundError(2, "missing", str(dbpath)) from None
            raise StoreError(f"{dbpath}: corrupt metadata database ({exc})") from None
        # held open, so that a writer deleting this generation's files later cannot take them away
        probes_file = open(self.root / manifest["probes"], "rb")
        background_file = open(self.root / manifest["background"], "rb")
        if self.db is not None:
            self.db.close()
        for old in (self._probes_file, self._background_file):
            if old is not None:
                old.close()
        self.manifest, self.index, self.db = manifest, index, db
        self._probes, self._probes_file = None, probes_file
        self._background, self._background_file = None, background_file
        self._mapped, self._dirty, self._db_copy = mapped, False, False
        self.fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.__dict__.pop("_end_column", None)

    # ---------------------------------------------------------------- the writer lock
    def _acquire(self, implicit: bool = True) -> None:
        """Become the index's one writer. A second writer waits (saying so on stderr) up to
        $MATCHER_LOCK_TIMEOUT seconds, then gives up with a StoreError. Once held, the state is
        reloaded if another writer committed a generation since this store was opened."""
        if self._lock is not None and self._lock.is_locked:
            return
        lock = take_writer_lock(self.root)
        self._lock, self._implicit_lock = lock, implicit
        try:
            if self.manifest.get("generation"):  # opened before: has a writer committed since?
                if self._manifest_bytes() is None or (
                    "sha256:" + hashlib.sha256(self._manifest_bytes()).hexdigest() != self.fingerprint
                ):
                    if self._dirty:
                        raise StoreError(f"{self.root}: the index changed while this change was prepared")
                    self._load()
                self._purge()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None
        self._implicit_lock = False

    @contextlib.contextmanager
    def writing(self):
        """Hold the writer lock for a whole change (add + recalibrate + save)."""
        held = self._lock is not None and self._lock.is_locked
        self._acquire(implicit=False)
        try:
            yield self
        finally:
            if not held:
                self._release()

    def _purge(self) -> None:
        """Delete what no committed generation needs: files a crashed writer left half-written and
        the files of superseded generations. Only ever run by the writer, under the lock."""
        keep = set(self.manifest.get("files") or ()) | {MANIFEST, LOCK}
        for p in self.root.iterdir():
            if p.name not in keep and _STALE.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()

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
                    self._probes_file.seek(0)
                    with np.load(self._probes_file, allow_pickle=False) as z:
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

    @property
    def background(self) -> dict:
        """The background set's vectors under the index's model ({"vectors", "kinds"}; empty for an
        index written before the set existed, until its next write embeds it)."""
        if self._background is None:
            out = {"vectors": np.zeros((0, self.dim), np.float32), "kinds": np.zeros(0, dtype="<U1")}
            name = self.manifest.get("background")
            if name and self._background_file is not None:
                path = self.root / name
                try:
                    self._background_file.seek(0)
                    with np.load(self._background_file, allow_pickle=False) as z:
                        out = {"vectors": z["vectors"], "kinds": z["kinds"]}
                except Exception as exc:
                    raise StoreError(f"{path}: corrupt background vectors ({exc})") from None
                if out["vectors"].ndim != 2 or out["vectors"].shape[1] != self.dim:
                    raise StoreError(f"{path}: background vectors do not match the index (dim differs)")
            self._background = out
        return self._background

    def set_background(self, vectors: np.ndarray, kinds: np.ndarray, info: dict) -> None:
        """Replace the background vectors (``info`` says which set and model made them; manifest)."""
        self._background = {
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
            "kinds": np.asarray(kinds, dtype=str),
        }
        self.manifest = dict(self.manifest, background_set=dict(info))
        self._dirty = True

    def _writable(self) -> None:
        """Take the writer lock; load a memory-mapped index into memory so that it can be changed;
        copy the metadata into the next generation's file, which the changes go to."""
        self._acquire()
        if self._mapped:
            self.index = ann.read_index(self.root / self.manifest["vectors"], mmap=False)
            self._mapped = False
        if not self._db_copy:
            copy = sqlite3.connect(self._db_tmp_path())
            self.db.backup(copy)
            self.db.close()
            self.db, self._db_copy = copy, True

    def _db_tmp_path(self) -> Path:
        path = self.root / (FILE_FIELDS["metadata"].format(self.manifest["generation"] + 1) + ".tmp")
        for stale in (path, path.with_name(path.name + "-journal")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        return path

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

    @property
    def files(self) -> dict[str, str]:
        """{file name: sha256} of every file of the opened generation (verified when opened)."""
        return {name: entry["sha256"] for name, entry in sorted((self.manifest.get("files") or {}).items())}

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

    def references_by_sha256(self, sha256: str) -> list[Reference]:
        """Reference stills whose file has this sha256 (image files; a video's stills share its
        sha256 and are not whole-file copies, so only stills without a timestamp count)."""
        rows = self.db.execute(
            f"SELECT id, title, episode, source, sha256 FROM refs WHERE sha256 = ? AND timestamp IS NULL"
            f" AND {self._visible()} ORDER BY id",
            (sha256,),
        )
        return [Reference(title=r[1], episode=r[2], source=r[3], sha256=r[4], id=r[0]) for r in rows]

    def sources_of_sha256(self, sha256: str) -> list[tuple[str, str]]:
        """(title, source) of the files already indexed with this sha256 (stills of videos too)."""
        rows = self.db.execute(
            f"SELECT DISTINCT title, source FROM refs WHERE sha256 = ? AND {self._visible()} ORDER BY id",
            (sha256,),
        )
        return [(r[0], r[1]) for r in rows]

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
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.count))
        if self.count == 0:
            n = len(queries)
            return np.full((n, 1), -1.0, np.float32), np.full((n, 1), -1, np.int64)
        return ann.search(self.index, queries, k, only_ids=only_ids, exclude_ids=exclude_ids)

    # ---------------------------------------------------------------- writing
    def add(self, vectors: np.ndarray, refs: Sequence[Reference]) -> np.ndarray:
        """Append references (visible at once in this process; durable after `save`)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise StoreError(f"vectors of shape {vectors.shape} do not fit an index of dim {self.dim}")
        if len(vectors) != len(refs):
            raise ValueError("one reference per vector")
        self._writable()
        ids_arr = self.add_references(refs)
        if len(ids_arr):
            self.index = ann.to_memory(self.index)  # never change a committed .ivfdata file
            self.index.add_with_ids(vectors, ids_arr)
        self._dirty = True
        return ids_arr

    def add_references(self, refs: Sequence[Reference]) -> np.ndarray:
        """Insert metadata rows only (their ids returned, in order): the vectors come later, through
        `add` or `build_index` (build_from_shards)."""
        self._writable()
        gen = self.manifest["generation"] + 1
        with self.db:
            # duplicate checks look files up by sha256; created by the first write (a reader never
            # changes the index; without it the lookup scans)
            self.db.execute("CREATE INDEX IF NOT EXISTS refs_sha256 ON refs(sha256)")
            # One executemany (5x faster than a statement a row at 10M rows): AUTOINCREMENT gives
            # the rows consecutive ids after the table's sequence, in this one writer's transaction.
            first = self._sequence()
            self.db.executemany(
                "INSERT INTO refs (title, episode, source, sha256, timestamp, timestamp_end, added_gen)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    (
                        db_text(r.title),
                        db_text(r.episode),
                        db_text(r.source),
                        r.sha256,
                        r.timestamp,
                        r.timestamp_end,
                        gen,
                    )
                    for r in refs
                ),
            )
            last = self._sequence()
        if last - first != len(refs):  # pragma: no cover - AUTOINCREMENT guarantees it
            raise StoreError(
                f"{self.root}: metadata ids are not consecutive ({first}..{last} for {len(refs)})"
            )
        self._dirty = True
        return np.arange(first + 1, last + 1, dtype=np.int64)

    def _sequence(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'refs'").fetchone()
        return int(row[0]) if row else 0

    def build_index(self, chunks, n: int, take, *, memory_budget: int | None = None, seed: int = 0) -> dict:
        """Replace the ANN index by one built from `chunks()` (ann.build_from_chunks): an IVF index
        gets its lists in the next generation's .ivfdata file directly. Committed by `save`."""
        self._writable()
        target = self.root / IVFDATA.format(self.manifest["generation"] + 1)
        self.index = None
        self.index, info = ann.build_from_chunks(
            chunks, n, self.dim, take, target, memory_budget=memory_budget, seed=seed
        )
        self._built = info
        self._dirty = True
        return info

    def set_memory_budget(self, budget: int | None) -> None:
        """Bytes the ANN index may hold in memory (IVF-PQ above it); kept in the manifest."""
        self.manifest = dict(self.manifest, memory_budget=budget)
        self._dirty = True

    def remove_title(self, title: str) -> int:
        ids = self.ids_of_title(title)
        if len(ids) == 0:
            return 0
        self._writable()
        ids = self.ids_of_title(title)  # the lock may have loaded a newer generation
        gen = self.manifest["generation"] + 1
        with self.db:
            self.db.execute(
                "UPDATE refs SET removed_gen = ? WHERE title = ? AND removed_gen IS NULL", (gen, title)
            )
        self.index = ann.to_memory(self.index)
        ann.remove(self.index, ids)
        keep = self.probes["titles"] != title
        self.probes = {k: v[keep] for k, v in self.probes.items()}
        self._dirty = True
        return len(ids)

    def set_probes(
        self, vectors: np.ndarray, ref_ids: np.ndarray, titles: np.ndarray, kinds: np.ndarray
    ) -> None:
        self._acquire()
        self.probes = {
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
            "ref_ids": np.asarray(ref_ids, dtype=np.int64),
            "titles": np.asarray([db_text(str(t)) for t in np.asarray(titles).reshape(-1)], dtype=str),
            "kinds": np.asarray(kinds, dtype=str),  # "altered" (make_probe) or "sketch" (make_sketch)
        }
        self._dirty = True

    def save(self, **manifest_updates) -> None:
        """Write a new generation atomically (files first, manifest rename last), under the lock."""

        if not self._dirty and not manifest_updates:
            return
        self.probes  # noqa: B018 - read before _writable swaps the files (a reload would drop them)
        self.background  # noqa: B018 - likewise
        self._writable()
        gen = self.manifest["generation"] + 1
        manifest = dict(self.manifest, **manifest_updates)
        budget = manifest.get("memory_budget")
        ivfdata = self.root / IVFDATA.format(gen)
        n, kind = int(self.index.ntotal), ann.ivf_kind(self.index)
        if self._built is not None:  # build_index wrote this generation's lists already
            manifest["search"], self._built = self._built, None
        elif ann.should_rebuild(self.index, manifest.get("search")) or (
            kind != "ivf-pq" and ann.choose_kind(n, self.dim, memory_budget=budget) == "ivf-pq"
        ):
            # Grown past exact search, an IVF index's size changed 4x since it was trained, or the
            # vectors no longer fit the memory budget: rebuild the kind that fits, with recall@10
            # measured. The old index is read chunk by chunk (zero-copy where it is exact) and the
            # new one's lists go straight to this generation's .ivfdata file: peak memory is the
            # old index plus one chunk, not two copies of every vector.
            old = self.index
            chunks = ann.chunks_of(old)
            self.index = None
            self.index, manifest["search"] = ann.build_from_chunks(
                chunks, n, self.dim, ann.take_of(old, chunks), ivfdata, memory_budget=budget
            )
            del old, chunks
        elif kind == "exact":  # keep a fallback's note and size
            manifest["search"] = {**(manifest.get("search") or {}), **ann.describe(self.index)}
        names = {field: pattern.format(gen) for field, pattern in FILE_FIELDS.items()}
        on_disk = ann.ivf_kind(self.index) != "exact"
        manifest[IVFDATA_FIELD] = ivfdata.name if on_disk else None
        manifest["format_version"] = FORMAT_ON_DISK if on_disk else FORMAT_VERSION
        manifest.update(generation=gen, count=int(self.index.ntotal), **names)
        vpath = self.root / names["vectors"]
        tmp = vpath.with_name(vpath.name + ".tmp")
        if on_disk:
            names[IVFDATA_FIELD] = ivfdata.name
            current = ann.on_disk_path(self.index)
            if current is not None and Path(current) != ivfdata:
                # unchanged lists of the previous generation: the same bytes under this
                # generation's name (neither file is ever changed, so a hard link is safe)
                ivfdata.unlink(missing_ok=True)
                try:
                    os.link(current, ivfdata)
                except OSError:
                    ann.write_on_disk(self.index, tmp, ivfdata)
            elif current is None:
                ann.write_on_disk(self.index, tmp, ivfdata)
            ann.write_index(self.index, tmp)
            with open(ivfdata, "rb+") as f:
                os.fsync(f.fileno())
        else:
            ann.write_index(self.index, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, vpath)
        if on_disk:  # from now on the lists are the committed file's, mapped read-only
            self.index = ann.read_on_disk(vpath, ivfdata)
        ppath = self.root / names["probes"]
        write_durably(ppath, lambda f: np.savez(f, **self.probes))
        # The background set's vectors (empty until the index embeds the set, see api._embed_background).
        bpath = self.root / names["background"]
        write_durably(bpath, lambda f: np.savez(f, **self.background))
        # The metadata of the new generation: rows removed in it are dropped (the previous
        # generation keeps them in its own file until the manifest moves on).
        with self.db:
            self.db.execute("DELETE FROM refs WHERE removed_gen IS NOT NULL AND removed_gen <= ?", (gen,))
        self.db.close()
        dbtmp = self.root / (names["metadata"] + ".tmp")
        with open(dbtmp, "rb+") as f:
            os.fsync(f.fileno())
        dbpath = self.root / names["metadata"]
        os.replace(dbtmp, dbpath)
        updates: dict = {}
        manifest["files"] = {}
        for name in names.values():
            digest, size = file_digest(self.root / name, None, updates)
            manifest["files"][name] = {"sha256": digest, "size": size}
        _save_cache(updates)
        _fsync_dir(self.root)
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        write_durably(self.root / MANIFEST, lambda f: f.write(raw))
        _fsync_dir(self.root)
        self.manifest = manifest
        self.fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.db = _read_only_db(dbpath)
        if self._probes_file is not None:
            self._probes_file.close()
        self._probes_file = open(ppath, "rb")
        if self._background_file is not None:
            self._background_file.close()
        self._background_file = open(bpath, "rb")
        self._dirty = self._db_copy = False
        self.__dict__.pop("_end_column", None)
        self._purge()  # the new generation is committed: the old one's files are not needed
        if self._implicit_lock:
            self._release()

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
            # one line when the confidence rests on too few probes (scoring.Calibration.warning), else None
            "calibration_warning": _calibration_warning(cal),
            "calibration_probes": {
                "known": cal.get("known_probes", 0),
                "unknown": cal.get("unknown_probes", 0),
            },
            "background_set": m.get("background_set"),
            "unknown_share": cal.get("unknown_share", 0.5),
            "size_bytes": self.size_on_disk(),
            "format_version": m["format_version"],
            "generation": m["generation"],
            "index_fingerprint": self.fingerprint,
            "files": self.files,
        }

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def close(self) -> None:
        """Close the files; a writer gives up its lock (uncommitted changes are dropped)."""
        if self.db is not None:
            self.db.close()
        for f in (self._probes_file, self._background_file):
            if f is not None:
                f.close()
        self._probes_file = self._background_file = None
        self._release()


def _calibration_warning(cal: dict) -> str | None:
    from matcher.score.scoring import Calibration

    if not cal:
        return "not calibrated: the index holds no title yet"
    return Calibration.from_dict(cal).warning()


def _empty_probes(dim: int) -> dict:
    return {
        "vectors": np.zeros((0, dim), np.float32),
        "ref_ids": np.zeros(0, np.int64),
        "titles": np.zeros(0, dtype="<U1"),
        "kinds": np.zeros(0, dtype="<U1"),
    }
