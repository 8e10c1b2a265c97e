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

import base64
import contextlib
import hashlib
import io
import math
import os
import stat
import sys
import time
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matcher import config
from matcher.decode.sources import (  # noqa: F401 - re-exported: the dump's view of its inputs
    DEEP_MODES,
    IMAGE_FORMATS,
    MAX_PIXELS,
    Entry,
    display,
    link_entry,
    sniff_bytes,
    to_8bit,
)
from matcher.decode.sources import walk_dump as walk
from matcher.errors import ItemError
from matcher.insight import vectors as insight_vectors
from matcher.insight.timeline import exif_date, normalise_date
from matcher.run.pool import WorkerPool, worker_transform
from matcher.write import report as rpt

#: Largest image (width * height) decoded; checked from the header before decoding. 80 Mpx covers
#: 8K frames and large scans; a 240 MB RGB buffer is the most one image can cost a worker.
DEFAULT_MAX_PIXELS = MAX_PIXELS  # one limit for every path (sources.py; $MATCHER_MAX_PIXELS)
# the defaults live in matcher.config; these names stay for callers of the dump module
DEFAULT_EVERY = config.EVERY
DEFAULT_DECODE_TIMEOUT = config.DECODE_TIMEOUT_DUMP
STILL_SIDE = config.STILL_SIDE
SEGMENT = config.SEGMENT
MAX_FRAMES = config.MAX_FRAMES
TERM_GRACE = config.TERM_GRACE


# ==================================================================================================
# Worker side: sniffing and decoding (runs in the decode processes; imports Pillow and PyAV only)
# ==================================================================================================
class FileProblem(ItemError):
    """A file that cannot be matched (the worker knows no display path: the parent adds it);
    ``status`` is 'error' or 'skipped', ``reason`` one line."""

    def __init__(self, reason: str, status: str = "error", kind: str | None = None):
        super().__init__(None, one_line(reason), status, kind)


def one_line(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    every: float = DEFAULT_EVERY
    all_frames: bool = False
    still_side: int = STILL_SIDE
    segment: int = SEGMENT
    max_frames: int = MAX_FRAMES


@dataclass
class Task:
    idx: int
    rel: str  # path shown in the report (relative to the dump root)
    abspath: bytes
    start: int = 0  # first still/frame index of this segment
    sha256: str | None = None  # known for continuation segments
    identity: tuple | None = None  # (size, mtime_ns, ino) seen by the first segment
    skip_shas: frozenset = frozenset()  # already reported: hash only
    thumb: dict | None = None  # thumbnail mode: {'frame': i} or {'timestamp': t}
    attempts: int = 0


def _reduce(im, side: int):
    """RGB copy with longest side <= side; transparency flattened onto white."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        im = bg
    if im.mode in DEEP_MODES:
        im = to_8bit(im)  # 16-bit / float: scaled, not clipped to white
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError):
            im = im.convert("L").convert("RGB")
    else:
        im = im.copy()  # never hand out the decoder's own image: a later seek() would change it
    if max(im.size) > side:
        im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return im


def _open_regular(abspath: bytes):
    """Open without following links or blocking; refuse anything but a regular file."""
    try:
        fd = os.open(abspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileProblem("file vanished during the run (no longer exists)") from None
    except OSError as e:
        if e.errno == 40:  # ELOOP: became a symlink
            raise FileProblem("file was replaced by a symbolic link during the run", "skipped") from None
        raise FileProblem(f"cannot open: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileProblem("not a regular file (device, FIFO or socket): not opened", "skipped", "special")
    return os.fdopen(fd, "rb"), st


def _hash(fh) -> tuple[str, bytes, int]:
    h = hashlib.sha256()
    head = b""
    n = 0
    while True:
        chunk = fh.read(1 << 20)
        if not chunk:
            break
        if n == 0:
            head = chunk[:4096]
        n += len(chunk)
        h.update(chunk)
    return h.hexdigest(), head, n


def _image_parts(fh, fmt_hint: str, task: Task, lim: Limits, out: dict) -> None:
    from PIL import Image, ImageFile, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = lim.max_pixels
    fh.seek(0)
    Image.init()
    formats = ("TGA",) if fmt_hint == "TGA" else tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
    try:
        im = Image.open(fh, formats=formats)
    except Image.DecompressionBombError as e:
        raise FileProblem(f"decompression bomb refused from the header, before decoding: {e}") from None
    except UnidentifiedImageError:
        raise FileProblem(f"corrupt {fmt_hint} image: Pillow cannot identify it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        raise FileProblem(f"corrupt {fmt_hint} image: {e}") from None
    out["embedded_date"] = exif_date(im) if task.start == 0 else None  # timeline (matcher.insight)

    def check(size):
        w, h = size
        if w <= 0 or h <= 0:
            raise FileProblem(f"corrupt {fmt_hint} image: size {w}x{h}")
        if w * h > lim.max_pixels:
            raise FileProblem(
                f"decompression bomb refused: {w}x{h} = {w * h / 1e6:.0f} Mpx is over the "
                f"{lim.max_pixels / 1e6:.0f} Mpx limit (checked before decoding)"
            )

    check(im.size)
    fmt = im.format or fmt_hint
    n = 1 if fmt == "PSD" else int(getattr(im, "n_frames", 1) or 1)  # PSD frames are layers
    out["kind"] = "image"
    notes = []
    if n > 1:
        multi = fmt == "TIFF" or lim.all_frames
        out["kind"] = "multipage" if fmt == "TIFF" else "animation"
        if not multi:
            notes.append(
                f"animated {fmt} with {n} frames: first frame matched (use --all-frames for every frame)"
            )
            n_use = 1
        else:
            n_use = min(n, lim.max_frames)
            if n_use < n:
                notes.append(f"{n} frames: the first {n_use} matched (limit)")
        out["multi"] = multi
    else:
        n_use = 1
        out["multi"] = False
    out["note"] = "; ".join(notes) or None
    if task.thumb is not None:
        indices = [min(int(task.thumb.get("frame") or 0), n_use - 1)]
    else:
        indices = list(range(task.start, min(n_use, task.start + lim.segment)))
        out["more"] = task.start + lim.segment if task.start + lim.segment < n_use else None
    for i in indices:
        try:
            if i:
                im.seek(i)
            check(im.size)
            if fmt == "JPEG":
                im.draft("RGB", (lim.still_side, lim.still_side))
            im.load()
            still = _reduce(im, lim.still_side)
        except FileProblem:
            raise
        except Image.DecompressionBombError as e:
            raise FileProblem(f"decompression bomb refused from the header, before decoding: {e}") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is a per-file error
            what = "truncated or corrupt" if "truncated" in str(e) else "corrupt"
            where = f" (frame {i})" if out["multi"] else ""
            if out["multi"] and i > 0:
                out["parts"].append(({"record": rpt.FRAME, "frame": i}, None, f"{what} frame: {one_line(e)}"))
                continue
            raise FileProblem(f"{what} {fmt} image{where}: {one_line(e)}") from None
        meta = {"record": rpt.FRAME, "frame": i} if out["multi"] else {}
        out["parts"].append((meta, still, None))


def _av_reason(e: Exception) -> str:
    """FFmpeg's own words, without errno numbers or the file object's repr."""
    return one_line(getattr(e, "strerror", None) or e)


def _video_parts(fh, desc: str, task: Task, lim: Limits, out: dict) -> None:
    import av

    fh.seek(0)
    out["kind"] = "video"
    out["multi"] = True
    try:
        container = av.open(fh, mode="r", metadata_errors="ignore")
    except Exception as e:  # noqa: BLE001
        raise FileProblem(f"corrupt or unsupported video ({desc}): {_av_reason(e)}") from None
    with container:
        if not container.streams.video:
            raise FileProblem(f"no video stream in {desc} file")
        out["embedded_date"] = normalise_date((container.metadata or {}).get("creation_time"))
        stream = container.streams.video[0]
        cc = stream.codec_context
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w * h > lim.max_pixels:
            raise FileProblem(f"video frames are {w}x{h}, over the {lim.max_pixels / 1e6:.0f} Mpx limit")
        stream.thread_type = "AUTO"
        every = max(float(lim.every), 0.04)
        if task.thumb is not None:
            targets = [float(task.thumb.get("timestamp") or 0.0)]
            start_t = targets[0]
            seg_end = math.inf
        else:
            start_t = task.start * every
            seg_end = (task.start + lim.segment) * every
        if start_t > 0:
            tb = stream.time_base
            with contextlib.suppress(Exception):
                container.seek(int(start_t / tb) if tb else int(start_t * 1e6), stream=stream, backward=True)
        k = task.start
        next_t = start_t
        got = 0
        more = None
        try:
            for frame in container.decode(stream):
                ft = frame.time
                if ft is None:
                    ft = next_t
                if ft + 1e-6 < next_t:
                    continue
                if task.thumb is None and ft >= seg_end:
                    more = int(math.floor(ft / every + 1e-9))
                    break
                # the codec context's size is only the header's claim: each frame can differ
                if frame.width * frame.height > lim.max_pixels:
                    raise FileProblem(
                        f"video frame at {ft:.3f} s is {frame.width}x{frame.height}, over the "
                        f"{lim.max_pixels / 1e6:.0f} Mpx limit (the header said {w}x{h})"
                    )
                still = _reduce(frame.to_image(), lim.still_side)
                out["parts"].append(({"record": rpt.STILL, "timestamp": round(float(ft), 3)}, still, None))
                got += 1
                if task.thumb is not None:
                    break
                k = int(math.floor(ft / every + 1e-9)) + 1
                next_t = k * every
        except av.error.FFmpegError as e:
            if got == 0 and task.start == 0:
                raise FileProblem(f"corrupt video ({desc}): {_av_reason(e)}") from None
            out["note"] = f"video decoding stopped early: {_av_reason(e)}"
        if got == 0 and task.start == 0:
            raise FileProblem(f"no decodable video frame in {desc} file")
        out["more"] = more


def process(task: Task, lim: Limits) -> dict:
    """Hash, classify and decode one file (or one segment of one). Never raises."""
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {
        "idx": task.idx,
        "sha256": task.sha256,
        "size": None,
        "kind": None,
        "status": None,
        "reason": None,
        "parts": [],
        "more": None,
        "multi": False,
        "note": None,
    }
    try:
        fh, st = _open_regular(task.abspath)
        with fh:
            out["size"] = st.st_size
            identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            out["identity"] = identity
            if task.identity is not None and task.identity != identity:
                raise FileProblem("file changed during the run (size or mtime differ between segments)")
            if task.sha256 is None:
                out["sha256"], head, n = _hash(fh)
                if n != st.st_size:
                    raise FileProblem("file changed while it was read (size differs)")
            else:
                fh.seek(0)
                head = fh.read(4096)
            if out["sha256"] in task.skip_shas:
                out["status"] = "resumed"
                return out
            if st.st_size == 0:
                raise FileProblem("empty file (0 bytes)", kind="empty")
            tail = b""
            if st.st_size > 18:
                fh.seek(st.st_size - 18)
                tail = fh.read(18)
            what, desc = sniff_bytes(head, tail, task.rel)
            if what == "skipped":
                raise FileProblem(desc, "skipped", "other")
            out["format"] = desc
            if what == "image":
                _image_parts(fh, desc, task, lim, out)
            else:
                _video_parts(fh, desc, task, lim, out)
    except FileProblem as e:
        out["status"], out["reason"] = e.status, e.reason
        out["kind"] = out["kind"] or e.kind
        out["parts"] = []
    except MemoryError:
        out["status"], out["reason"] = "error", "out of memory while decoding"
        out["parts"] = []
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, never a traceback
        out["status"], out["reason"] = "error", f"unexpected {type(e).__name__}: {one_line(e)}"
        out["parts"] = []
    if task.thumb is not None:
        out["thumb"] = _data_uri(out["parts"][0][1]) if out["parts"] and out["parts"][0][1] else None
        out["parts"] = []
    elif worker_transform() is not None and out["parts"]:
        transform = worker_transform()
        try:
            out["parts"] = [(m, transform(im) if im is not None else None, e) for m, im, e in out["parts"]]
        except Exception as e:  # noqa: BLE001
            out.update(
                status="error", reason=f"cannot prepare image for the embedder: {one_line(e)}", parts=[]
            )
    return out


def _data_uri(im, side: int = 160) -> str:
    im = im.copy()
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=72)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


#: The embedder's decode-side preparation (classic: trim + shrink; clip: resize/crop), run in the
#: workers so the main process only runs the model. Set by the pool initializer (fork: not pickled).
# ==================================================================================================
# The decode pool: ordered, bounded, with timeouts and crash isolation
# ==================================================================================================
class DecodePool(WorkerPool):
    """The worker pool running dump tasks: per-task timeout (plus hashing time), crash and hang
    attribution, counts of both."""

    def __init__(self, workers: int, limits: Limits, timeout: float, transform=None):
        super().__init__(workers, transform)
        self.limits = limits
        self.timeout = timeout
        self.crashes = 0
        self.timeouts = 0

    def submit(self, task: Task) -> Future:
        return self.run(process, task, self.limits)

    def run_one(self, task: Task) -> dict:
        """Run one task alone (after a crash), attributing a crash or hang to it."""
        fut = self.submit(task)
        return self.wait(fut, task, isolated=True)

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

    def wait(self, fut: Future, task: Task, isolated: bool = False) -> dict | None:
        """The result, or None when the pool broke (caller retries in-flight tasks in isolation)."""
        try:
            return fut.result(timeout=self.task_timeout(task))
        except FutureTimeout:
            self.timeouts += 1
            self._kill()
            return _failed(task, f"decoding took longer than {self.task_timeout(task):.0f} s: worker killed")
        except BrokenProcessPool:
            self.crashes += 1
            self._kill()
            if isolated:
                return _failed(task, "the decoder crashed on this file (worker process died)")
            return None
        except Exception as e:  # noqa: BLE001 - e.g. the task could not be pickled
            return _failed(task, f"decode failed: {one_line(e)}")


def _failed(task: Task, reason: str) -> dict:
    return {
        "idx": task.idx,
        "sha256": task.sha256,
        "size": None,
        "kind": None,
        "status": "error",
        "reason": reason,
        "parts": [],
        "more": None,
        "multi": False,
        "note": None,
    }


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


def _prep_fns(matcher):
    """(decode-side transform run in workers, embed function for its outputs) of the matcher's
    embedder, as matcher.run.pipeline defines them; (None, None) when there is none."""
    emb = getattr(matcher, "embedder", None)
    if emb is None or not hasattr(matcher, "match_vectors"):
        return None, None
    try:
        from matcher.run.pipeline import _prep_fns as prep
    except ImportError:
        return None, None
    return prep(emb)


def _match_images(
    matcher, images: list, min_confidence: float | None = None, embed=None, vectors_out: list | None = None
) -> list:
    """MatchResults for a batch of images (embedded together, scored together). ``embed`` embeds
    images already prepared by the workers' transform; ``vectors_out`` receives the embeddings."""
    if embed is not None or (hasattr(matcher, "match_vectors") and hasattr(matcher, "embedder")):
        vecs = embed(images) if embed is not None else matcher.embedder.embed(images)
        if vectors_out is not None:
            vectors_out.extend(vecs)
        return list(matcher.match_vectors(vecs, min_confidence=min_confidence))
    return list(matcher.match_many(images, min_confidence=min_confidence))


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


def _result_note(r) -> str | None:
    """The one-line reason of a verdict that is not a plain match by similarity."""
    notes = []
    if r.identical:
        ref = r.identical
        notes.append(f"byte-identical to reference {ref['reference']} (sha256 {ref['sha256']})")
    if r.tie:
        notes.append(f"tie between {' and '.join(r.tie)}: no title chosen")
    if r.override_changed:
        notes.append(f"verdict changed by --min-confidence {r.threshold:g}")
    return "; ".join(notes) or None


def aggregate(parts: list[dict], kind: str) -> dict:
    """Verdict of a video / multi-frame file from its part records (majority of matched stills)."""
    ok = [p for p in parts if p.get("status") in ("matched", "unknown")]
    unit = "stills" if kind == "video" else "frames"
    if not ok:
        first = next(
            (p.get("reason") or p.get("error") for p in parts if p.get("reason") or p.get("error")), None
        )
        return {
            "status": "error",
            "title": None,
            "confidence": 0.0,
            "candidates": [],
            "evidence": [],
            "reason": f"no {unit} could be matched" + (f": {first}" if first else ""),
        }
    # One statistic per title, used for both the verdict and the candidates (so they never disagree):
    # the stills that matched it, the stills whose best candidate it is, and their mean confidence.
    votes = Counter(p["title"] for p in ok if p.get("status") == "matched")
    nearest: dict[str, list[float]] = defaultdict(list)
    for p in ok:
        if p.get("candidates"):
            nearest[p["candidates"][0]["title"]].append(float(p.get("confidence") or 0.0))
    for t in votes:
        nearest.setdefault(t, [])
    stat = {t: (votes.get(t, 0), len(c), round(sum(c) / len(c), 6) if c else 0.0) for t, c in nearest.items()}
    order = sorted(stat, key=lambda t: (-stat[t][0], -stat[t][1], -stat[t][2], t))
    candidates = [
        {"title": t, "score": stat[t][2], "matched": stat[t][0], "nearest": stat[t][1]} for t in order
    ]
    tie: list[str] = []
    if order:
        tie = [t for t in order if stat[t] == stat[order[0]]]
        tie = tie if len(tie) > 1 else []
    if votes and not tie:
        title = order[0]
        support = [p for p in ok if p.get("title") == title]
        confidence = stat[title][2]
        status = "matched"
        reason = f"{votes[title]} of {len(parts)} {unit} matched {title}"
        others = {t: n for t, n in votes.items() if t != title}
        if others:
            reason += "; others: " + ", ".join(
                f"{t} ({n})" for t, n in sorted(others.items(), key=lambda x: -x[1])
            )
    else:
        title = None
        support = ok
        confidence = stat[order[0]][2] if order else 0.0
        status = "unknown"
        if tie:
            reason = f"tie between {' and '.join(tie)} ({stat[tie[0]][0]} {unit} each): no title chosen"
        else:
            reason = f"none of {len(parts)} {unit} matched a title"
    evidence = []
    for p in support:
        for e in p.get("evidence") or []:
            if title is None or e.get("title") == title:
                where = (
                    {"query_timestamp": p.get("timestamp")}
                    if kind == "video"
                    else {"query_frame": p.get("frame")}
                )
                evidence.append({**e, **where})
    evidence.sort(key=lambda e: -float(e.get("similarity") or 0))
    seen_refs: set = set()
    unique = []
    for e in evidence:  # one entry per reference still: the leak still that matched it best
        ref = (e.get("reference"), e.get("timestamp"))
        if ref not in seen_refs:
            seen_refs.add(ref)
            unique.append(e)
    evidence = unique
    errors = sum(1 for p in parts if p.get("status") == "error")
    if errors:
        reason += f"; {errors} {unit} could not be decoded"
    return {
        "status": status,
        "title": title,
        "confidence": round(confidence, 6),
        "candidates": candidates[:10],
        "evidence": evidence[:8],
        "reason": reason,
        "tie": tie,
        # conservative: at least one still's verdict was changed by --min-confidence
        "override_changed": any(p.get("override_changed") for p in ok),
    }


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
        batch_size: int = 32,
        decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        segment: int = SEGMENT,
        custody: dict | None = None,
        on_record: Callable[[dict], None] | None = None,
        min_confidence: float | None = None,
        fsync: bool = True,
        new_section: bool = False,
    ):
        self.root = Path(root)
        self.matcher = matcher
        self.out, self.csv_path, self.html = out, csv, html
        self.limits = Limits(
            max_pixels=max_pixels, every=every, all_frames=all_frames, segment=max(1, segment)
        )
        self.quiet = quiet
        self.workers = workers or config.default_workers()
        self.batch_size = max(1, batch_size)
        self.decode_timeout = decode_timeout
        self.custody_extra = custody or {}
        self.on_record = on_record
        self.min_confidence = min_confidence
        self.fsync = fsync
        self.new_section = new_section
        self.memory_records: list[dict] = []
        self.embed_fn = None
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
        """One report line with every field present (file verdicts and video stills / frames alike)."""
        rec = {
            "record": record,
            "path": st.entry.rel,
            "sha256": st.sha256,
            "size": size,
            "kind": st.kind,
            "status": None,
            "reason": None,
            "title": None,
            "confidence": 0.0,
            "candidates": [],
            "evidence": [],
            "error": None,
        }
        rec.update(fields)
        if rec["status"] == "error":
            rec["error"] = rec["reason"]
        return rec

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
    def _progress_start(self, total: int) -> None:
        self.progress = None
        if self.quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("matching"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} files/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.ptask = self.progress.add_task("match", total=total, rate="-")

    def _advance(self) -> None:
        self.done_files += 1
        if self.progress is not None:
            el = time.monotonic() - self.t0
            self.progress.update(self.ptask, advance=1, rate=f"{self.done_files / el:.1f}" if el > 0 else "-")

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> DumpStats:
        if not self.root.is_dir():
            raise rpt.ReportError(f"{self.root}: not a directory")
        self.t0 = time.monotonic()
        self.done_files = 0
        self.report = rpt.JsonlReport(self.out, fsync=self.fsync) if self.out else None
        self.csvw = None
        self.pool = None
        self.progress = None
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
            self._progress_start(total)
            transform, self.embed_fn = _prep_fns(self.matcher)
            self.pool = DecodePool(self.workers, self.limits, self.decode_timeout, transform)
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
            if self.progress is not None:
                self.progress.stop()
                self.progress = None
            if self.html:
                self._write_html(records)
            ok = True
            return self.stats
        finally:
            if self.progress is not None:
                self.progress.stop()
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

    def _loop(self, entries: Iterator[Entry]) -> None:
        window = self.workers * 2
        inflight: deque[tuple[_FileState, Task, Future]] = deque()
        self.queue: list[tuple[_FileState, dict, Any]] = []
        report = self.report

        def submit(st: _FileState, task: Task) -> None:
            inflight.append((st, task, self.pool.submit(task)))

        it = iter(entries)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < window:
                entry = next(it, None)
                if entry is None:
                    exhausted = True
                    break
                st = _FileState(entry=entry, task=None)
                if entry.kind != "file":
                    if self.report is not None and self.report.is_done(entry.rel, None):
                        self.stats.resumed += 1
                        self._advance()
                        continue
                    rec = self._file_record(
                        st,
                        status=entry.kind,
                        reason=entry.reason,
                        kind="link" if "symbolic link" in (entry.reason or "") else "special",
                    )
                    self._finish(st, rec)
                    continue
                skip = report.done_shas(entry.rel) if report is not None else frozenset()
                task = Task(idx=0, rel=entry.rel, abspath=entry.abspath, skip_shas=skip)
                st.task = task
                st.outstanding = 1
                submit(st, task)
            if not inflight:
                break
            st, task, fut = inflight[0]
            if not fut.done() and self.queue:
                self._flush()
                continue
            inflight.popleft()
            res = self.pool.wait(fut, task)
            if res is None:  # the pool broke: retry everything in flight one at a time
                retry = [(st, task)] + [(s, t) for s, t, _ in inflight]
                inflight.clear()
                for s, t in retry:
                    self._handle(s, t, self.pool.run_one(t), submit)
                continue
            self._handle(st, task, res, submit)
            if len(self.queue) >= self.batch_size:
                self._flush()
        self._flush()

    def _handle(self, st: _FileState, task: Task, res: dict, submit) -> None:
        st.outstanding -= 1
        if res["status"] == "resumed":
            self.stats.resumed += 1
            self._advance()
            return
        if task.start == 0:
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
            if task.start == 0 or not st.multi:
                rec = self._file_record(st, status=res["status"], reason=res["reason"], kind=st.kind)
                st.decoding = False
                self._finish(st, rec)
                return
            st.notes.append(f"segment from {task.start} failed: {res['reason']}")
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
            self.queue.append((st, meta, image))
        if len(self.queue) >= self.batch_size:
            self._flush()
        if res.get("more") is not None:
            # the next segment of a long video / animation joins the in-flight window
            st.outstanding += 1
            submit(
                st,
                Task(
                    idx=0,
                    rel=task.rel,
                    abspath=task.abspath,
                    start=res["more"],
                    sha256=st.sha256,
                    identity=st.identity,
                ),
            )
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
        images = [im for _, _, im in batch]
        vecs: list = []
        try:
            results = _match_images(self.matcher, images, self.min_confidence, self.embed_fn, vecs)
        except Exception as e:  # noqa: BLE001 - one bad batch must not end the run: retry one by one
            results, vecs = [], []
            for im in images:
                try:
                    results.extend(_match_images(self.matcher, [im], self.min_confidence, self.embed_fn))
                except Exception as e2:  # noqa: BLE001
                    results.append(e2)
            del e
        self.stats.stills += len(images)
        touched = []
        for n, ((st, meta, _), r) in enumerate(zip(batch, results, strict=True)):
            st.outstanding -= 1
            if len(vecs) == len(batch) and not isinstance(r, Exception):
                st.vectors.append(vecs[n])
            if isinstance(r, Exception):
                fields = {"status": "error", "reason": f"matching failed: {one_line(r)}"}
            else:
                if not st.multi and st.sha256 and hasattr(self.matcher, "mark_identical"):
                    r.sha256 = st.sha256  # a byte copy of a reference is reported as that reference
                    self.matcher.mark_identical(r)
                d = r.to_dict()
                d.pop("path", None)
                d.pop("sha256", None)
                d.pop("timestamp", None)
                fields = {**d, "status": r.status, "reason": _result_note(r)}
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
            """Decode many thumbnails in parallel (bounded window), surviving crashes and hangs."""
            window = self.workers * 2
            inflight: deque = deque()
            jobs = iter(jobs)
            while True:
                while len(inflight) < window:
                    job = next(jobs, None)
                    if job is None:
                        break
                    key, task, sha = job
                    if key in cache:
                        continue
                    cache[key] = None
                    inflight.append((key, task, sha, pool.submit(task)))
                if not inflight:
                    return
                key, task, sha, fut = inflight.popleft()
                res = pool.wait(fut, task)
                if res is None:
                    retry = [(key, task, sha)] + [(k, t, h) for k, t, h, _ in inflight]
                    inflight.clear()
                    for k, t, h in retry:
                        store(k, pool.run_one(t), h)
                    continue
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


def cli_main(
    paths: list,
    matcher,
    out=None,
    csv=None,
    html=None,
    every: float = DEFAULT_EVERY,
    all_frames: bool = False,
    quiet: bool = False,
    workers: int | None = None,
    min_confidence: float | None = None,
    as_json: bool = False,
    new_section: bool = False,
) -> int:
    """`matcher match DUMP_DIR --out ...`: run, print the summary, return the exit code.

    0 when the run processed everything (per-file errors are in the report); 2 when it could not run
    (bad dump path, report locked/unwritable); 130 when interrupted (the report keeps what was done).
    """

    def err(msg: str) -> None:
        print(f"matcher: error: {one_line(msg)}", file=sys.stderr)

    if len(paths) != 1 or not Path(paths[0]).is_dir():
        what = paths[0] if len(paths) == 1 else f"{len(paths)} paths"
        err(f"{what}: --out/--csv/--html take exactly one dump directory")
        return 2
    outputs = [os.path.realpath(p) for p in (out, csv, html) if p]
    if len(set(outputs)) < len(outputs):
        err("--out, --csv and --html must name three different files")
        return 2
    on_record = None
    if as_json:
        from matcher.records import json_line

        def on_record(rec: dict) -> None:
            sys.stdout.write(json_line(rec) + "\n")
            sys.stdout.flush()

    run = DumpRun(
        paths[0],
        matcher,
        out=out,
        csv=csv,
        html=html,
        every=every,
        all_frames=all_frames,
        quiet=quiet,
        workers=workers,
        min_confidence=min_confidence,
        on_record=on_record,
        new_section=new_section,
    )
    import signal

    stopping = []

    def _terminate(signum, frame):
        """SIGTERM / SIGHUP / Ctrl-C: stop like Ctrl-C; the report is consistent at every moment
        (one write + fsync per line), so what the clean-up cannot finish in TERM_GRACE seconds is
        cut short: a signal that lands inside the process pool's own locks could otherwise leave the
        process waiting forever while it holds the report lock. A second signal exits at once."""
        if stopping:
            os._exit(130)
        stopping.append(signum)
        import threading

        def _deadline():
            time.sleep(TERM_GRACE)
            with contextlib.suppress(Exception):
                sys.stderr.write("matcher: error: interrupted; clean-up took too long, exiting\n")
                sys.stderr.flush()
            os._exit(130)

        threading.Thread(target=_deadline, name="matcher-exit-deadline", daemon=True).start()
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                previous[sig] = signal.signal(sig, _terminate)
    try:
        try:
            stats = run.run()
        except rpt.ReportError as e:
            err(str(e))
            return 2
        except KeyboardInterrupt:
            err(f"interrupted after {run.stats.written} files; re-run with the same --out to finish")
            return 130
        except OSError as e:
            err(f"{getattr(e, 'filename', None) or paths[0]}: {e.strerror or e}")
            return 2
        stopping.append("finished")  # the report is complete: a signal from here on exits at once
        _print_summary(stats, out, html, as_json)
        return 0
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)


def _print_summary(stats: DumpStats, out, html, as_json: bool) -> None:
    text = rpt.format_summary(stats.summary)
    text += f"\n{stats.files} entries in {stats.seconds:.1f} s"
    if stats.resumed:
        text += f" ({stats.resumed} already in the report)"
    if out:
        text += f"; report: {out}"
    if html:
        text += f"; HTML: {html}"
    print(text, file=sys.stderr if as_json else sys.stdout)
