"""Match a whole leaked dump: walk it, classify every file, decode in isolated workers, embed in
batches, and append one report line per file (and per video still / animation frame) as it is done.

Safety model (the dump comes from an adversary's server):

- The walk never follows a symbolic link (links are reported as ``skipped`` with where they point:
  outside the dump, a loop, dangling, or inside the dump, whose target is reported under its own
  path). FIFOs, sockets and devices are never opened (opening a FIFO blocks forever). Files are
  opened ``O_NOFOLLOW | O_NONBLOCK`` and re-checked with ``fstat``, so a file swapped for a link or a
  FIFO after the walk is caught too.
- Decoding runs in worker processes (forked; they only use Pillow and PyAV). A
  decoder that crashes takes down only its worker: the pool is rebuilt and the files that were in
  flight are retried one at a time, so the one that crashes is the one reported. A decoder that hangs
  is killed after ``decode_timeout`` seconds. Image size is checked against ``max_pixels`` from the
  header, before any pixel is decoded.
- Memory is bounded: only ``workers * 2`` decode tasks are in flight, workers hand back stills
  already reduced to ``still_side`` pixels, and long videos / animations are decoded in segments of
  ``segment`` stills.

The report (see `matcher.write.report`) is the state: re-running with the same ``--out`` hashes each file
and skips those already reported with the same (path, sha256).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matcher import config
from matcher.decode.decoder import Limits, Task
from matcher.decode.sources import MAX_PIXELS, Entry
from matcher.decode.sources import walk_dump as walk
from matcher.insight import vectors as insight_vectors
from matcher.records import aggregate, one_line, report_record, verdict_fields
from matcher.run.pool import DecodePool, decode_in_order
from matcher.write import report as rpt

DEFAULT_MAX_PIXELS = MAX_PIXELS  # one limit for every path (sources.py; $MATCHER_MAX_PIXELS)
# the defaults live in matcher.config; these names stay for callers of the dump module
DEFAULT_EVERY = config.EVERY
DEFAULT_DECODE_TIMEOUT = config.DECODE_TIMEOUT_DUMP
SEGMENT = config.SEGMENT
TERM_GRACE = config.TERM_GRACE


# ==================================================================================================
# The run
# ==================================================================================================
@dataclass(eq=False)
class _FileState:
    entry: Entry
    task: Task
    sha256: str | None = None
    size: int | None = None
    kind: str | None = None
    fmt: str | None = None
    multi: bool = False
    notes: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # part records (dicts)
    existing: dict = field(default_factory=dict)  # part records already in the report (resume)
    outstanding: int = 0  # decode segments + stills waiting for the embedder
    decoding: bool = True
    identity: tuple | None = None
    final: bool = False
    embedded_date: str | None = None
    vectors: list = field(default_factory=list)  # embeddings of its parts, for the insight post-pass


@dataclass
class DumpStats:
    files: int = 0  # file entries found by the walk
    written: int = 0  # file lines written in this run
    resumed: int = 0  # skipped because already reported
    stills: int = 0  # images embedded
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    summary: dict | None = None
    crashes: int = 0
    timeouts: int = 0
    insight: dict | None = None  # the report's `insight` record (groups, clusters)

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def _match_images(matcher, prepared: list, min_confidence: float | None = None, vectors: list | None = None):
    """MatchResults for a batch of stills prepared by the decoder (embedded together, scored
    together); `vectors` holds a vector where one was already computed (the ray engine) and receives
    the others."""
    vectors = vectors if vectors is not None else [None] * len(prepared)
    todo = [k for k, v in enumerate(vectors) if v is None]
    if todo:
        for k, vec in zip(todo, matcher.embedder.embed_prepared([prepared[k] for k in todo]), strict=True):
            vectors[k] = vec
    return list(matcher.match_vectors(np.stack(vectors), min_confidence=min_confidence))


def run_provenance(matcher, min_confidence: float | None) -> dict:
    """What produced a run's verdicts, for its header: the thresholds in force and where they come
    from, the calibration's basis, the command line, host, user and the index's absolute path."""
    import getpass
    import shlex
    import socket

    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        meta = matcher.info()
        out["index_path"] = str(Path(meta["index"]).resolve())
        out["threshold"] = meta.get("threshold")
        out["grey_threshold"] = meta.get("grey_threshold")
        out["sketch_threshold"] = meta.get("sketch_threshold")
        out["unknown_share"] = meta.get("unknown_share")
        out["calibration_probes"] = meta.get("calibration_probes")
        out["calibration_warning"] = meta.get("calibration_warning")
        out["background_set"] = (meta.get("background_set") or {}).get("sha256")
    # None: every verdict used the index's own thresholds above; else this one replaced them all
    out["min_confidence_override"] = min_confidence
    out["command_line"] = shlex.join(sys.argv)
    out["host"] = socket.gethostname()
    with contextlib.suppress(Exception):
        out["user"] = getpass.getuser()
    return out


class DumpRun:
    """One `matcher match DUMP_DIR` run. Use `run()`; it returns `DumpStats`."""

    def __init__(
        self,
        root: str | os.PathLike,
        matcher,
        out: str | os.PathLike | None = None,
        csv: str | os.PathLike | None = None,
        html: str | os.PathLike | None = None,
        every: float = DEFAULT_EVERY,
        all_frames: bool = False,
        quiet: bool = False,
        workers: int | None = None,
        batch_size: int = config.BATCH,
        decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        segment: int = SEGMENT,
        custody: dict | None = None,
        on_record: Callable[[dict], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        min_confidence: float | None = None,
        fsync: bool = True,
        new_section: bool = False,
        engine: str = "local",
        address: str | None = None,
    ):
        self.root = Path(root)
        self.matcher = matcher
        self.out, self.csv_path, self.html = out, csv, html
        self.limits = Limits(
            max_pixels=max_pixels, every=every, all_frames=all_frames, segment=max(1, segment)
        )
        self.quiet = quiet
        if engine not in ("local", "ray"):
            raise ValueError(f"unknown engine {engine!r}: local or ray")
        self.engine, self.address = engine, address
        self.workers_given = workers is not None
        self.workers = workers or config.default_workers()
        self.batch_size = max(1, batch_size)
        self.decode_timeout = decode_timeout
        self.custody_extra = custody or {}
        self.on_record = on_record
        self.progress = progress  # progress(files done, files in the dump), unless quiet
        self.min_confidence = min_confidence
        self.fsync = fsync
        self.new_section = new_section
        self.memory_records: list[dict] = []
        self.vector_log = None
        self.stats = DumpStats()

    # -- records --------------------------------------------------------------------------------------
    def _write(self, rec: dict) -> None:
        if self.report is not None:
            self.report.write(rec)
        else:
            self.memory_records.append(rec)
        if self.csvw is not None:
            self.csvw.write(rec)

    def _file_record(self, st: _FileState, **fields) -> dict:
        size = st.size if st.size is not None else st.entry.size
        rec = self._record(st, rpt.FILE, size, **fields)
        # insight hook: when the file was written (mtime) and made (embedded date), for the timeline
        rec["mtime"] = st.identity[1] / 1e9 if st.identity else None
        rec["embedded_date"] = st.embedded_date
        return rec

    @staticmethod
    def _record(st: _FileState, record: str | None, size, **fields) -> dict:
        return report_record(record, st.entry.rel, st.sha256, **{"size": size, "kind": st.kind, **fields})

    def _finish(self, st: _FileState, rec: dict) -> None:
        if rec["sha256"] is None and self.report is not None and self.report.is_done(rec["path"], None):
            # unreadable before and still unreadable: already reported, never a second line
            self.stats.resumed += 1
            self._advance()
            return
        self._write(rec)
        if self.vector_log is not None and st.vectors and rec.get("sha256"):
            insight_vectors.keep(self.vector_log, rec, st.vectors)
        if self.on_record is not None:
            self.on_record(rec)
        self.stats.written += 1
        self.stats.statuses[rec["status"]] += 1
        self._advance()

    def _custody(self) -> dict:
        info: dict[str, Any] = {"tool": "matcher"}
        try:
            from importlib.metadata import version

            info["tool_version"] = version("matcher")
        except Exception:  # noqa: BLE001
            info["tool_version"] = getattr(sys.modules.get("matcher"), "__version__", "unknown")
        m = self.matcher
        emb = getattr(m, "embedder", None)
        info["model_spec"] = getattr(emb, "spec", None)
        info["model_fingerprint"] = getattr(emb, "fingerprint", None)
        with contextlib.suppress(Exception):
            meta = m.info()
            info["index"] = meta.get("index")
            info["index_generation"] = meta.get("generation")
            info["index_references"] = meta.get("references")
            info["index_titles"] = len(meta.get("titles") or {})
        store = getattr(m, "store", None)
        if getattr(store, "fingerprint", None):
            # sha256 of the manifest as opened, which holds the sha256 of every file of the
            # generation (each verified when the index was opened): it pins every byte the verdicts
            # came from. The files' own hashes are listed too.
            info["index_fingerprint"] = store.fingerprint
            info["index_files"] = store.files
        info.update(run_provenance(m, self.min_confidence))
        info["dump_root"] = str(self.root.resolve())
        info["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info["every_s"] = self.limits.every
        info["all_frames"] = self.limits.all_frames
        info["max_pixels"] = self.limits.max_pixels
        info["min_confidence"] = self.min_confidence
        info.update(self.custody_extra)
        return info

    # -- progress -------------------------------------------------------------------------------------
    def _advance(self) -> None:
        self.done_files += 1
        if self.progress is not None and not self.quiet:
            self.progress(self.done_files, self.total)

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> DumpStats:
        if not self.root.is_dir():
            raise rpt.ReportError(f"{self.root}: not a directory")
        self.t0 = time.monotonic()
        self.done_files = 0
        self.report = rpt.JsonlReport(self.out, fsync=self.fsync) if self.out else None
        self.csvw = None
        self.pool = None
        ok = False
        try:
            for path, kind in ((self.csv_path, "csv"), (self.html, "html")):
                if path:
                    rpt.check_ours(path, kind)  # before any work, not after the whole dump
            # before any line is written: a vector file that is not ours stops the run
            self.vector_log = insight_vectors.open_for(self.out, self.matcher, self.fsync)
            custody = self._custody()
            previous = self.report.section_run if self.report is not None else None
            if previous is not None and not self.new_section:
                diff = rpt.run_difference(previous, custody)
                if diff:
                    raise rpt.ReportError(
                        f"{self.out}: not resumed: {diff}; use another --out, or --new-section to "
                        f"add a separate section to this report"
                    )
            if self.new_section and previous is not None:
                # the verdicts above it do not count as done: every file is matched again
                custody = {**custody, "new_section": True}
            self.custody_info = custody
            self._write({"record": rpt.RUN, **custody})
            if self.csv_path:  # mirrors the report's current section
                self.csvw = rpt.CsvReport(self.csv_path, source=self.out)
            # Two walks, so that memory does not grow with the dump: one to count (for the progress
            # bar's ETA), one streamed into the decode window.
            total = sum(1 for _ in walk(self.root))
            self.abspaths: dict[str, bytes] = {}  # only names that are not valid UTF-8
            entries = self._exclude_outputs(walk(self.root))
            self.total = total
            if self.progress is not None and not self.quiet:
                self.progress(0, total)
            prepare = self.matcher.embedder.prepare
            self.pool = DecodePool(self.workers, self.limits, self.decode_timeout, prepare)
            self._loop(entries)
            self.stats.seconds = time.monotonic() - self.t0
            self.stats.crashes, self.stats.timeouts = self.pool.crashes, self.pool.timeouts
            if self.out:

                def records():
                    return rpt.section_records(self.out)
            else:

                def records():
                    return iter(self.memory_records)

            # groups and clusters come before the summary, which stays the report's last line
            self.stats.insight = self._insight(records)
            summary = rpt.summarize(rpt.latest_file_records(records(), slim=True))
            summary["run"] = {
                "files_seen": self.stats.files,
                "written": self.stats.written,
                "resumed": self.stats.resumed,
                "seconds": round(self.stats.seconds, 3),
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self._write(summary)
            self.stats.summary = summary
            if self.html:
                self._write_html(records)
            ok = True
            return self.stats
        finally:
            if self.pool is not None:
                self.pool.close(graceful=ok)
            if self.csvw is not None:
                self.csvw.close()
            if self.vector_log is not None:
                self.vector_log.close()
            if self.report is not None:
                self.report.close()

    def _insight(self, records) -> dict | None:
        """Hook: shot groups and clusters of unknown files, appended after the per-file pass."""
        store = getattr(self.matcher, "store", None)
        if not self.out or store is None:
            return None
        from matcher.insight.postpass import run_postpass

        threshold = self.min_confidence
        if threshold is None:
            threshold = self.custody_info.get("threshold") or 0.5
        coverage = getattr(getattr(self.matcher, "embedder", None), "coverage", None)
        return run_postpass(self.out, records, store, float(threshold), self._write, coverage)

    def _exclude_outputs(self, entries: Iterator[Entry]) -> Iterator[Entry]:
        """This run's own report files may sit inside the dump: list them, never match them. Also
        counts the entries and remembers the real bytes of names that are not valid UTF-8."""
        mine = set()
        sidecar = insight_vectors.sidecar_path(self.out) if self.out else None
        for p in (self.out, self.csv_path, self.html, sidecar):
            if p:
                real = os.path.realpath(os.fsencode(os.fspath(p)))
                mine.update({real, real + b".tmp"})
        for e in entries:
            self.stats.files += 1
            if "\\x" in e.rel:
                self.abspaths[e.rel] = e.abspath
            if mine and e.kind == "file" and os.path.realpath(e.abspath) in mine:
                e = Entry(e.rel, e.abspath, "skipped", "matcher's own output file for this run: not matched")
            yield e

    def _tasks(self, entries: Iterator[Entry]) -> Iterator[tuple[_FileState, Task | None]]:
        """(file state, decode task) per entry; an entry that is not a file (a link, a FIFO) has no
        task: it is reported as it is, in its place."""
        for entry in entries:
            st = _FileState(entry=entry, task=None)
            if entry.kind == "file":
                skip = self.report.done_shas(entry.rel) if self.report is not None else frozenset()
                st.task = Task(idx=0, rel=entry.rel, abspath=entry.abspath, skip_shas=skip)
                st.outstanding = 1
            yield st, st.task

    def _results(self, entries: Iterator[Entry]) -> Iterator[tuple[_FileState, Task | None, dict | None]]:
        """(file state, task, decoder result) in walk order, from the executor: the local pool, or
        Ray (whose results carry vectors where the local ones carry prepared stills)."""
        if self.engine != "ray":

            def idle() -> bool:  # embed what is decoded while the next file is still decoding
                if self.queue:
                    self._flush()
                    return True
                return False

            yield from decode_in_order(self.pool, self._tasks(entries), max(2, self.workers * 2), idle)
            return
        from matcher.run import ray_engine

        tasks = list(self._tasks(entries))
        files = [(n, task) for n, (_st, task) in enumerate(tasks) if task is not None]
        stream = ray_engine.decode_and_embed(
            files, self.matcher.embedder, self.limits, batch_size=self.batch_size, address=self.address,
            workers=self.workers if self.workers_given else None,
        )  # fmt: skip
        pending = next(stream, None)
        for n, (st, task) in enumerate(tasks):
            if task is None:
                yield st, None, None
            while pending is not None and pending[0] == n:  # every segment of this file
                yield st, task, pending[1]
                pending = next(stream, None)

    def _loop(self, entries: Iterator[Entry]) -> None:
        self.queue: list[tuple[_FileState, dict, Any, Any]] = []  # (file, part meta, prepared, vector)
        for st, task, res in self._results(entries):
            if task is None:
                self._not_a_file(st)
                continue
            self._handle(st, task, res)
            if len(self.queue) >= self.batch_size:
                self._flush()
        self._flush()

    def _not_a_file(self, st: _FileState) -> None:
        entry = st.entry
        if self.report is not None and self.report.is_done(entry.rel, None):
            self.stats.resumed += 1
            self._advance()
            return
        kind = "link" if "symbolic link" in (entry.reason or "") else "special"
        self._finish(st, self._file_record(st, status=entry.kind, reason=entry.reason, kind=kind))

    def _handle(self, st: _FileState, task: Task, res: dict) -> None:
        st.outstanding -= 1
        if res["status"] == "resumed":
            self.stats.resumed += 1
            self._advance()
            return
        start = int(res.get("start") or 0)
        if start == 0:
            st.sha256 = res.get("sha256")
            st.size = res.get("size")
            st.kind = res.get("kind")
            st.fmt = res.get("format")
            st.multi = bool(res.get("multi"))
            st.identity = res.get("identity")
            st.embedded_date = res.get("embedded_date")
            if self.report is not None and st.multi:
                st.existing = dict(self.report.parts_of(st.entry.rel, st.sha256))
        if res.get("note") and res["note"] not in st.notes:
            st.notes.append(res["note"])
        if res["status"] in ("error", "skipped"):
            if start == 0 or not st.multi:
                rec = self._file_record(st, status=res["status"], reason=res["reason"], kind=st.kind)
                st.decoding = False
                self._finish(st, rec)
                return
            st.notes.append(f"segment from {start} failed: {res['reason']}")
        for meta, image, err in res.get("parts", []):
            if st.multi:
                key = rpt.part_key({**meta})
                if key in st.existing:
                    st.parts.append(st.existing[key])
                    continue
            if image is None:
                prec = self._part_record(st, meta, status="error", reason=err)
                self._write(prec)
                st.parts.append(prec)
                continue
            st.outstanding += 1
            # ray: the executor embedded it already (a vector where the local pool hands a still)
            self.queue.append((st, meta, None, image) if self.engine == "ray" else (st, meta, image, None))
        if len(self.queue) >= self.batch_size:
            self._flush()
        if res.get("more") is not None:
            st.outstanding += 1  # the executor decodes the next segment of this file next
            return
        st.decoding = False
        self._maybe_finalize(st)

    def _part_record(self, st: _FileState, meta: dict, **fields) -> dict:
        where = {k: meta[k] for k in ("timestamp", "frame") if k in meta}
        return self._record(st, meta.get("record"), st.size, **{**where, **fields})

    def _flush(self) -> None:
        if not self.queue:
            return
        batch, self.queue = self.queue, []
        images = [im for _, _, im, _ in batch]
        vecs: list = [vec for _, _, _, vec in batch]
        try:
            results = _match_images(self.matcher, images, self.min_confidence, vecs)
        except Exception as e:  # noqa: BLE001 - one bad batch must not end the run: retry one by one
            results, vecs = [], [None] * len(batch)
            for k, (_, _, im, vec) in enumerate(batch):
                try:
                    one = [vec]
                    results.extend(_match_images(self.matcher, [im], self.min_confidence, one))
                    vecs[k] = one[0]
                except Exception as e2:  # noqa: BLE001
                    results.append(e2)
            del e
        self.stats.stills += len(images)
        touched = []
        for n, ((st, meta, _, _), r) in enumerate(zip(batch, results, strict=True)):
            st.outstanding -= 1
            if vecs[n] is not None and not isinstance(r, Exception):
                st.vectors.append(vecs[n])
            if isinstance(r, Exception):
                fields = {"status": "error", "reason": f"matching failed: {one_line(r)}"}
            else:
                if not st.multi and st.sha256:
                    r.sha256 = st.sha256  # a byte copy of a reference is reported as that reference
                    self.matcher.mark_identical(r)
                fields = verdict_fields(r)
            if st.multi:
                prec = self._part_record(st, meta, **fields)
                self._write(prec)
                st.parts.append(prec)
            else:
                st.parts.append(fields)
            touched.append(st)
        for st in dict.fromkeys(touched):
            self._maybe_finalize(st)

    def _maybe_finalize(self, st: _FileState) -> None:
        if st.decoding or st.outstanding > 0 or st.final:
            return
        st.final = True
        note = "; ".join(st.notes) if st.notes else None
        if st.multi:
            agg = aggregate(st.parts, st.kind or "video")
            reason = "; ".join(x for x in (agg.pop("reason"), note) if x)
            n_parts = {"stills" if st.kind == "video" else "frames": len(st.parts)}
            rec = self._file_record(st, **agg, reason=reason, format=st.fmt, **n_parts)
        elif st.parts:
            fields = dict(st.parts[0])
            if note:
                fields["reason"] = "; ".join(x for x in (fields.get("reason"), note) if x)
            rec = self._file_record(st, **fields, format=st.fmt)
        else:
            rec = self._file_record(st, status="error", reason=note or "nothing could be decoded")
        self._finish(st, rec)

    # -- HTML -----------------------------------------------------------------------------------------
    def _write_html(self, records) -> None:
        """Thumbnails are decoded again from the dump (in the worker pool, in parallel, re-hashed: a
        file whose sha256 no longer matches its report line gets no picture), references from their
        recorded source path."""
        cache: dict[tuple, str | None] = {}
        root_b = os.fsencode(os.path.abspath(self.root))
        pool = DecodePool(self.workers, self.limits, min(self.decode_timeout, 30.0))

        def query_task(rec: dict) -> tuple[tuple, Task, str | None] | None:
            if rec.get("status") not in ("matched", "unknown"):
                return None
            spec: dict = {}
            ev = rec.get("evidence") or []
            if ev and ev[0].get("query_timestamp") is not None:
                spec = {"timestamp": ev[0]["query_timestamp"]}
            elif ev and ev[0].get("query_frame") is not None:
                spec = {"frame": ev[0]["query_frame"]}
            rel = rec["path"]
            abspath = self.abspaths.get(rel) or os.path.join(root_b, rel.encode("utf-8", "surrogateescape"))
            key = (abspath, tuple(sorted(spec.items())))
            return key, Task(idx=0, rel=rel, abspath=abspath, thumb=spec), rec.get("sha256")

        def ref_task(reference: str | None, ts: float | None) -> tuple[tuple, Task, None] | None:
            if not reference or reference.startswith("<"):
                return None
            p = Path(reference)
            if not p.is_absolute():
                base = getattr(getattr(self.matcher, "store", None), "root", None)
                p = Path(base) / p if base else p
            if not p.is_file():
                return None
            spec = {"timestamp": ts} if ts is not None else {}
            abspath = os.fsencode(str(p))
            key = (abspath, tuple(sorted(spec.items())))
            return key, Task(idx=0, rel=str(p), abspath=abspath, thumb=spec), None

        def store(key, res: dict | None, sha: str | None) -> None:
            res = res or {}
            ok = sha is None or res.get("sha256") == sha
            cache[key] = res.get("thumb") if ok else None

        def prefetch(jobs) -> None:
            """Decode many thumbnails in parallel (the one decode loop), surviving crashes and hangs."""

            def new(jobs):
                for key, task, sha in jobs:
                    if key not in cache:
                        cache[key] = None
                        yield (key, sha), task

            for (key, sha), _task, res in decode_in_order(pool, new(jobs), max(2, self.workers * 2)):
                store(key, res, sha)

        def jobs():
            n = 0
            for rec in rpt.latest_file_records(records()):
                q = query_task(rec)
                if q is None:
                    continue
                n += 1
                if n > rpt.MAX_THUMB_ITEMS:
                    return
                yield q
                for ev in (rec.get("evidence") or [])[:4]:
                    r = ref_task(ev.get("reference"), ev.get("timestamp"))
                    if r is not None:
                        yield r

        def lazy(job) -> str | None:
            if job is None:
                return None
            key, task, sha = job
            if key not in cache:
                prefetch([job])
            return cache.get(key)

        try:
            prefetch(jobs())
            custody = dict(self.custody_info)
            custody["report_generated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            rpt.write_html(
                self.html,
                records,
                custody,
                thumb=lambda rec: lazy(query_task(rec)),
                ref_thumb=lambda ref, ts: lazy(ref_task(ref, ts)),
            )
        finally:
            pool.close(graceful=False)


def run_dump(root, matcher, **kwargs) -> DumpStats:
    """Convenience wrapper: `DumpRun(root, matcher, **kwargs).run()`."""
    return DumpRun(root, matcher, **kwargs).run()
