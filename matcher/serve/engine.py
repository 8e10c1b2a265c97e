"""What the server does with an upload, without any HTTP: decode it the way dump mode does, match it
through the `Matcher` API, and keep the index current while `index add` commits beside it.

- Decoding is the one decoder (matcher.decode.decoder) in the one crash-contained worker pool
  (matcher.run.pool.DecodePool: forked processes, pixel limit checked from the header): a decoder
  that crashes or hangs on one upload fails that upload, never the server. The pool is shared by
  all requests; when it breaks, each request whose task was in flight retries its own file alone
  in a one-off worker, so the crash is attributed to the file that caused it.
- Matching is `Matcher.match_vectors` on the embedder's own batch function (the same two calls dump
  mode makes): one matching code path for CLI, dump and server.
- The index is opened read-only and re-opened when its manifest names a new generation.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from matcher import config
from matcher.api import Matcher, MatcherError
from matcher.decode import decoder
from matcher.decode.decoder import Limits, Task
from matcher.records import MatchResult, one_line
from matcher.run.pool import DecodePool, decode_in_worker
from matcher.search.store import MANIFEST

#: Longest a single upload may take to decode before its worker is killed.
DEFAULT_DECODE_TIMEOUT = config.DECODE_TIMEOUT_SERVE
#: Stills matched at most from one uploaded video (or frames of a multi-page image).
DEFAULT_MAX_STILLS = config.SERVE_MAX_STILLS
#: Seconds between two looks at the index's manifest for a new generation.
RELOAD_CHECK_S = 1.0


class IndexHolder:
    """The current read-only `Matcher`, re-opened when `index add` commits a new generation.

    A commit replaces manifest.json in one rename, so its identity (inode, size, mtime) changes; the
    new generation is opened beside the old one and swapped in. Requests that hold the old matcher
    finish on it (its vector file stays readable: FAISS maps or has read it)."""

    def __init__(self, index_dir: str | os.PathLike, **open_options):
        self.index_dir = Path(index_dir)
        self.open_options = open_options
        self.lock = threading.Lock()
        self.matcher = Matcher.open(self.index_dir, **open_options)
        self._stamp = self._manifest_stamp()
        self._checked = time.monotonic()
        self._retired: list[Matcher] = []
        self.reload_error: str | None = None

    def _manifest_stamp(self):
        try:
            st = os.stat(self.index_dir / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def get(self) -> Matcher:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return self.matcher
        with self.lock:
            if now - self._checked < RELOAD_CHECK_S:
                return self.matcher
            self._checked = now
            stamp = self._manifest_stamp()
            if stamp is not None and stamp != self._stamp:
                try:
                    fresh = Matcher.open(self.index_dir, **self.open_options)
                except MatcherError as exc:  # e.g. caught between a writer's steps: keep serving the old
                    self.reload_error = str(exc)
                else:
                    self.reload_error = None
                    # the one before the previous is closed now: no request lives that long
                    for old in self._retired[:-1]:
                        with contextlib.suppress(Exception):
                            old.close()
                    self._retired = self._retired[-1:] + [self.matcher]
                    self.matcher, self._stamp = fresh, stamp
            return self.matcher

    def close(self) -> None:
        for m in [*self._retired, self.matcher]:
            with contextlib.suppress(Exception):
                m.close()


class SharedDecoder:
    """run.pool.DecodePool shared by concurrent requests; thread-safe, survives crashing decoders.

    The workers are forked by one long-lived "keeper" thread, never by a request thread: a worker
    dies with the thread that forked it (run.pool.init_worker sets PR_SET_PDEATHSIG, which Linux ties
    to the forking thread), and the server retires idle request threads."""

    def __init__(self, matcher: Matcher, workers: int, limits: Limits, timeout: float):
        transform = matcher.embedder.prepare
        self.transform = transform
        self.limits = limits
        self.timeout = timeout
        self.lock = threading.Lock()
        self.pool = DecodePool(workers, limits, timeout, transform)
        self.keeper = ThreadPoolExecutor(1, thread_name_prefix="matcher-decode-keeper")
        self.crashes = 0

    def _spawn(self):
        """(keeper thread) A fresh executor with every worker forked now: with fork, Python starts
        all of a pool's workers at its first task."""
        executor = self.pool._ensure()
        executor.submit(os.getpid).result(timeout=self.timeout)
        return executor

    def _executor(self):
        """The live executor (caller holds self.lock); a broken one is replaced."""
        executor = self.pool.pool
        if executor is not None and getattr(executor, "_broken", False):
            self.pool._kill()
            executor = None
        if executor is None:
            executor = self.keeper.submit(self._spawn).result()
        return executor

    def start(self) -> None:
        """Fork the workers now, before the server answers its first request."""
        with self.lock:
            self._executor()

    def decode(self, task: Task) -> dict:
        executor = None
        try:
            with self.lock:
                executor = self._executor()
                try:
                    future = executor.submit(decode_in_worker, task, self.limits)
                except BrokenProcessPool:  # broke since the check: replace it once
                    self.pool._kill()
                    executor = self._executor()
                    future = executor.submit(decode_in_worker, task, self.limits)
            return future.result(timeout=self.timeout)
        except (BrokenProcessPool, FutureTimeout) as exc:
            with self.lock:
                if self.pool.pool is executor:  # not yet rebuilt by another request
                    self.pool._kill()
            self.crashes += 1
            if isinstance(exc, FutureTimeout):
                return decoder.failed(task, f"decoding took longer than {self.timeout:.0f} s: worker killed")
            return self._alone(task)
        except Exception as exc:  # noqa: BLE001 - the pool's own failure fails this upload only
            return decoder.failed(task, f"decode failed: {one_line(exc)}")

    def _alone(self, task: Task) -> dict:
        """Retry one file in a worker of its own: a crash there is this file's. (Forked by this
        request thread, which waits for it: the worker cannot outlive its use.)"""
        solo = DecodePool(1, self.limits, self.timeout, self.transform)
        try:
            return solo.run_one(task)
        finally:
            solo.close(graceful=False)

    def close(self) -> None:
        with self.lock:
            self.pool.close(graceful=False)
        self.keeper.shutdown(wait=False)


@dataclass
class Upload:
    """One uploaded file: where the server stored it (a name it chose) and the client's label."""

    path: Path
    label: str


class UploadMatcher:
    """Uploads -> `match --json` objects (one per image; one per still of a video)."""

    def __init__(
        self,
        holder: IndexHolder,
        workers: int = config.SERVE_WORKERS,
        max_pixels: int = decoder.MAX_PIXELS,
        every: float = config.EVERY,
        max_stills: int = DEFAULT_MAX_STILLS,
        decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
    ):
        self.holder = holder
        self.max_stills = max_stills
        self.limits = Limits(max_pixels=max_pixels, every=every, segment=min(32, max_stills))
        self.decoder = SharedDecoder(holder.matcher, workers, self.limits, decode_timeout)
        self.match_lock = threading.Lock()  # one embed + search at a time: the cores are shared
        self.recent: OrderedDict[tuple, dict] = OrderedDict()  # verdicts a reviewer may override
        self.recent_limit = 10_000

    def decode(self, upload: Upload) -> tuple[dict, list]:
        """(first segment's result, [(meta, prepared image)]) of one upload, all segments of a video
        up to max_stills; a failed decode has status 'error' and a one-line reason."""
        task = Task(idx=0, rel=upload.label, abspath=os.fsencode(upload.path))
        first = self.decoder.decode(task)
        parts = [(m, im) for m, im, err in first.get("parts", []) if im is not None]
        following = decoder.next_segment(task, first)
        while following is not None and len(parts) < self.max_stills:
            seg = self.decoder.decode(following)
            if seg.get("status") is not None:
                break
            parts += [(m, im) for m, im, err in seg.get("parts", []) if im is not None]
            following = decoder.next_segment(following, seg)
        return first, parts[: self.max_stills]

    def match(self, uploads: list[Upload], min_confidence: float | None = None) -> list[dict]:
        decoded = [(u, *self.decode(u)) for u in uploads]
        images = [im for _, _, parts in decoded for _, im in parts]
        results: list[MatchResult] = []
        if images:
            matcher = self.holder.get()
            with self.match_lock:
                vectors = matcher.embedder.embed_prepared(images)
                results = list(matcher.match_vectors(vectors, min_confidence=min_confidence))
        out: list[dict] = []
        it = iter(results)
        for upload, first, parts in decoded:
            sha = first.get("sha256")
            if first.get("status") is not None or not parts:
                reason = first.get("reason") or "no stills could be decoded"
                out.append(MatchResult.failed(upload.label, reason, sha).to_dict())
                continue
            for meta, _ in parts:
                r = next(it)
                r.path, r.sha256 = upload.label, sha
                r.timestamp, r.frame = meta.get("timestamp"), meta.get("frame")
                if len(parts) == 1 and r.timestamp is None and sha:
                    with self.match_lock:  # a byte copy of a reference is that reference, as in dump mode
                        matcher.mark_identical(r)
                d = r.to_dict()
                out.append(d)
                with self.match_lock:
                    self._remember(d)
        return out

    def _remember(self, d: dict) -> None:
        key = (d["sha256"], d.get("timestamp"), d.get("frame"))
        self.recent[key] = {
            "title": d["title"],
            "confidence": d["confidence"],
            "status": "matched" if d["title"] is not None else "unknown",
            "path": d["path"],
        }
        self.recent.move_to_end(key)
        while len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)

    def verdict(self, sha256: str, timestamp=None, frame=None) -> dict | None:
        with self.match_lock:
            return self.recent.get((sha256, timestamp, frame))

    def close(self) -> None:
        self.decoder.close()
