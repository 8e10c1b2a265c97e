"""The embedding of each reported file, kept beside the report (``REPORT.vectors``) so the
post-pass can group and cluster without embedding the dump twice.

Append-only and crash-safe like the report: a 16-byte header (magic, dim), then fixed-size rows
(sha256 of the file's content, sha256 of its report path, the vector as float32), each written in
one ``write`` and fsync'd. A torn last row (power loss) is trimmed when the file is reopened; a file
reported twice keeps its last row. A multi-part file (video stills, animation frames) is kept as
the mean of its parts' vectors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct

import numpy as np

MAGIC = b"MTCHVEC1"


def sidecar_path(report: str | os.PathLike) -> str:
    return os.fspath(report) + ".vectors"


def path_key(path: str) -> bytes:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()


class VectorLog:
    def __init__(self, path: str | os.PathLike, dim: int, fsync: bool = True):
        from matcher.write.report import ReportError as MatcherError  # the dump run's one-line, exit-2 error

        self.path, self.dim, self.fsync = os.fspath(path), int(dim), fsync
        self.row = 64 + 4 * self.dim
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise MatcherError(
                f"{self.path}: cannot open the report's vector file: {e.strerror or e}"
            ) from None
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, 16, 0)
        if size == 0:
            os.pwrite(self.fd, MAGIC + struct.pack("<Q", self.dim), 0)
            size = 16
        elif head[:8] != MAGIC or len(head) < 16 or struct.unpack("<Q", head[8:])[0] != self.dim:
            os.close(self.fd)
            # never overwrite what is not ours, nor mix two models' vectors in one file
            raise MatcherError(
                f"{self.path}: not this report's vector file (another file, or another model's "
                f"vectors): move it away or use another --out"
            )
        whole = 16 + (size - 16) // self.row * self.row
        if whole != size:  # torn last row
            os.ftruncate(self.fd, whole)
        os.lseek(self.fd, 0, os.SEEK_END)

    def append(self, path: str, sha256: str, vector: np.ndarray) -> None:
        v = np.asarray(vector, dtype="<f4").reshape(-1)
        if v.shape[0] != self.dim:
            return
        data = bytes.fromhex(sha256) + path_key(path) + v.tobytes()
        os.write(self.fd, data)
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def read_vectors(path: str | os.PathLike) -> dict[tuple[bytes, str], np.ndarray]:
    """{(sha256 of report path, content sha256 hex): vector}; the last row of a key wins; {} when
    there is no such file or it is not ours."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                return {}
            dim = struct.unpack("<Q", head[8:])[0]
            raw = fh.read()
    except OSError:
        return {}
    row = 64 + 4 * dim
    n = len(raw) // row
    arr = np.frombuffer(raw[: n * row], dtype=np.uint8).reshape(n, row)
    out = {}
    for r in arr:
        out[(bytes(r[32:64]), bytes(r[:32]).hex())] = r[64:].view("<f4").astype(np.float32)
    return out


def open_for(report, matcher, fsync: bool = True) -> VectorLog | None:
    """The vector log beside a report, for a matcher whose embedder has a dim; else None."""
    dim = getattr(getattr(matcher, "embedder", None), "dim", None)
    if not report or not dim:
        return None
    return VectorLog(sidecar_path(report), int(dim), fsync=fsync)


def keep(log: VectorLog, rec: dict, parts: list) -> None:
    """Record a file's vector: the embedder's own (its norm carries the evidence coverage of some
    embedders), for a multi-part file the mean of its parts'."""
    log.append(rec["path"], rec["sha256"], np.asarray(parts, dtype=np.float32).mean(axis=0))
