"""The worker pool: the one process pool of matcher (index add, match, dump mode and serve all
decode in it). Forked workers that die with their parent (PR_SET_PDEATHSIG), never compete with
the embedder for cores through hidden thread pools, leave Ctrl-C to the parent and do not hold the
parent's report files open. Callers add the per-task timeout and crash attribution they need
(`kill` a pool whose task hung, retry the in-flight tasks alone after a crash)."""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor

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
