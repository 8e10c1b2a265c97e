"""The worker pool: the one process pool of matcher (index add, match, dump mode and serve all
decode in it). Forked workers that die with their parent (PR_SET_PDEATHSIG), never compete with
the embedder for cores through hidden thread pools, leave Ctrl-C to the parent and do not hold the
parent's report files open. Callers add the per-task timeout and crash attribution they need
(`kill` a pool whose task hung, retry the in-flight tasks alone after a crash)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from matcher.decode.decoder import Limits, Task, decode_file, failed, next_segment
from matcher.records import one_line

#: The embedder's decode-side transform, set in each worker by init_worker (not pickled per task).
_TRANSFORM = None


def worker_transform():
    return _TRANSFORM


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (PR_SET_PDEATHSIG), so that a `match`
    or `index add` killed by SIGTERM/SIGKILL leaves no decode process behind; exit at once if the
    parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


def init_worker(transform=None, parent_pid: int | None = None) -> None:
    global _TRANSFORM
    _TRANSFORM = transform
    if parent_pid is not None:  # die with the parent, even when it is SIGKILLed
        die_with_parent(parent_pid)
    from matcher.write import report

    for fd in list(report.OPEN_FDS):  # inherited by fork: the report belongs to the parent only
        with contextlib.suppress(OSError):
            os.close(fd)
    # Each worker is one decode stream: numpy/BLAS single-threaded so workers do not fight.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    with contextlib.suppress(Exception):
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


class WorkerPool:
    """A process pool started on first use, that can be killed (a hung or crashed task) and
    started again."""

    def __init__(self, workers: int, transform=None):
        import multiprocessing as mp

        self.transform = transform
        self.workers = max(1, workers)
        # fork: workers start in milliseconds and share the parent's pages copy-on-write; they only
        # touch Pillow/PyAV (like torch's DataLoader workers), never the embedder or faiss.
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self.pool is None:
            for stream in (sys.stdout, sys.stderr):  # a forked child must not re-flush our buffers
                with contextlib.suppress(Exception):
                    stream.flush()
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=self.ctx,
                initializer=init_worker,
                initargs=(self.transform, os.getpid()),
            )
        return self.pool

    def run(self, fn, *args) -> Future:
        return self._ensure().submit(fn, *args)

    def _kill(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                p.kill()
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self, graceful: bool = True) -> None:
        """Let idle workers exit (graceful) or kill them (on error / interrupt: one may be hung)."""
        if self.pool is None:
            return
        if graceful:
            pool, self.pool = self.pool, None
            with contextlib.suppress(Exception):
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            self._kill()


# ------------------------------------------------------------------------------ decoding in the pool
def decode_in_worker(task: Task, limits: Limits) -> dict:
    """What a worker runs: the one decoder, with the embedder's transform the worker was started with."""
    return decode_file(task, limits, worker_transform())


class DecodePool(WorkerPool):
    """The worker pool running decode tasks, with a per-task timeout (plus hashing time) and crash
    and hang attribution. ``workers=0`` decodes inline in this process (`match cel.png`: starting a
    process would cost more than it saves)."""

    def __init__(self, workers: int, limits: Limits, timeout: float, transform=None):
        super().__init__(max(1, workers), transform)
        self.inline = workers <= 0
        self.limits = limits
        self.timeout = timeout
        self.crashes = 0
        self.timeouts = 0

    def submit(self, task: Task) -> Future | None:
        return None if self.inline else self.run(decode_in_worker, task, self.limits)

    def run_one(self, task: Task) -> dict:
        """Run one task alone (after a crash), attributing a crash or hang to it."""
        return self.wait(self.submit(task), task, isolated=True)

    def task_timeout(self, task: Task) -> float:
        """The decode timeout, plus reading time at a slow 50 MB/s when the task hashes the file
        (a 20 GB video must not be killed for taking long to hash)."""
        if task.sha256 is not None:
            return self.timeout
        try:
            size = os.lstat(task.abspath).st_size
        except OSError:
            size = 0
        return self.timeout + size / 50e6

    def wait(self, fut: Future | None, task: Task, isolated: bool = False) -> dict | None:
        """The result, or None when the pool broke (the caller retries what was in flight alone)."""
        if fut is None:
            return decode_file(task, self.limits, self.transform)
        try:
            return fut.result(timeout=self.task_timeout(task))
        except FutureTimeout:
            self.timeouts += 1
            self._kill()
            return failed(task, f"decoding took longer than {self.task_timeout(task):.0f} s: worker killed")
        except BrokenProcessPool:
            self.crashes += 1
            self._kill()
            if isolated:
                return failed(task, "the decoder crashed on this file (worker process died)")
            return None
        except Exception as e:  # noqa: BLE001 - e.g. the task could not be pickled
            return failed(task, f"decode failed: {one_line(e)}")


_ALONE = object()  # an in-flight entry to run alone: the pool broke while it was in flight


def decode_in_order(pool: DecodePool, items: Iterable[tuple[Any, Task | None]], window: int, idle=None):
    """Decode `items` ((key, task); task None: passed through undecoded) in `pool` with at most
    `window` tasks in flight, yielding (key, task, result) in input order; a long file's next segment
    (decoder.next_segment) is decoded next, right after its parent. A crash or hang fails only its
    own file: after one, every task that was in flight runs again alone, so the one that crashes is
    the one reported. `idle()` is called while the next result is not ready (to embed meanwhile); it
    returns True when it did some work. This loop is the one decode loop of matcher."""
    inflight: deque[list] = deque()
    source = iter(items)
    exhausted = False
    while True:
        # no new work while tasks wait to run alone: a second crash must still be attributable
        while not exhausted and len(inflight) < window and not any(e[2] is _ALONE for e in inflight):
            nxt = next(source, None)
            if nxt is None:
                exhausted = True
                break
            key, task = nxt
            inflight.append([key, task, pool.submit(task) if task is not None else None])
        if not inflight:
            return
        key, task, fut = inflight[0]
        if fut is not None and fut is not _ALONE and idle is not None and not fut.done() and idle():
            continue
        inflight.popleft()
        if task is None:
            yield key, None, None
            continue
        result = pool.run_one(task) if fut is _ALONE else pool.wait(fut, task)
        if result is None:  # the pool broke: run everything that was in flight again, one at a time
            inflight.appendleft([key, task, _ALONE])
            for entry in inflight:
                if entry[1] is not None:
                    entry[2] = _ALONE
            continue
        following = next_segment(task, result)
        if following is not None:
            alone = any(e[2] is _ALONE for e in inflight)
            inflight.appendleft([key, following, _ALONE if alone else pool.submit(following)])
        yield key, task, result
