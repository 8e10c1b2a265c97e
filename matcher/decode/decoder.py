"""The decoder: the one place a file becomes stills (index add, match, dump mode, serve, Ray).

    decode_file(Task(rel, abspath), Limits(...), transform) -> {"sha256", "kind", "parts", ...}

Safety model (inputs come from an adversary's server):

- A file is opened ``O_NOFOLLOW | O_NONBLOCK`` and re-checked with ``fstat``: a file swapped for a
  link or a FIFO after the walk is refused, never followed or blocked on. It is hashed (sha256) as it
  is read; a file that changes between segments or while it is read is refused.
- What a file is comes from its bytes (sources.sniff_bytes), never its name; only the image formats
  matcher supports are parsed. Size is checked against ``max_pixels`` from the header, before a pixel
  is decoded, and again on every frame (a video's header is only a claim).
- Stills are reduced to ``still_side`` pixels at once and long videos / animations are decoded in
  segments of ``segment`` stills (the result's ``more`` is where the next segment starts), so one
  task's memory is bounded.
- It never raises: a file that cannot be used comes back with ``status`` "error" or "skipped" and a
  one-line ``reason``. Crashes and hangs of the decoder itself are contained by the caller's worker
  pool (matcher.run.pool), which runs it in forked processes.

A result's ``parts`` are ``(meta, image, error)``: meta is {} for a plain image, {"record": "frame",
"frame": i} for an animation frame / TIFF page, {"record": "still", "timestamp": t[, "timestamp_end":
t2]} for a video still; image is the still after the embedder's decode-side transform.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass

from matcher import config
from matcher.decode import video
from matcher.decode.dates import exif_date, normalise_date
from matcher.decode.sources import IMAGE_FORMATS, MAX_PIXELS, sniff_bytes, to_rgb
from matcher.errors import ItemError
from matcher.records import FRAME, STILL, one_line


def _problem(reason: str, status: str = "error", kind: str | None = None) -> ItemError:
    return ItemError(None, one_line(reason), status, kind)


@dataclass
class Limits:
    """How a file is decoded: the same for every command (matcher.config holds the defaults)."""

    max_pixels: int = MAX_PIXELS
    every: float = config.EVERY
    all_frames: bool = False
    still_side: int = config.STILL_SIDE
    segment: int = config.SEGMENT
    max_frames: int = config.MAX_FRAMES
    #: reference ingestion: a still at every scene cut too, near-identical consecutive stills merged
    #: into one covering [timestamp, timestamp_end] (matcher.decode.video)
    distinct: bool = False
    #: also hand back each still before the embedder's transform, as part meta "kept" (probes)
    keep: bool = False


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
    """A new RGB image (sources.to_rgb: transparency on white, 16-bit scaled), shrunk by an integer
    factor (box average, cheap) to a longest side under 2 x side: what a segment holds in memory until
    the embedder's transform. `_shrink` makes what leaves the worker exactly <= side."""
    im = to_rgb(im, "<frame>")
    k = max(im.size) // side
    return im.reduce(k) if k >= 2 else im


def _shrink(im, side: int):
    """Longest side <= side (bilinear), for stills handed back as pictures (no transform, kept)."""
    from PIL import Image

    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return im


def _open_regular(abspath: bytes):
    """Open without following links or blocking; refuse anything but a regular file."""
    try:
        fd = os.open(abspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _problem("file vanished during the run (no longer exists)") from None
    except OSError as e:
        if e.errno == 40:  # ELOOP: became a symlink
            raise _problem("file was replaced by a symbolic link during the run", "skipped") from None
        raise _problem(f"cannot open: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _problem("not a regular file (device, FIFO or socket): not opened", "skipped", "special")
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
        raise _problem(f"decompression bomb refused from the header, before decoding: {e}") from None
    except UnidentifiedImageError:
        raise _problem(f"corrupt {fmt_hint} image: Pillow cannot identify it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        raise _problem(f"corrupt {fmt_hint} image: {e}") from None
    out["embedded_date"] = exif_date(im) if task.start == 0 else None  # timeline (matcher.insight)

    def check(size):
        w, h = size
        if w <= 0 or h <= 0:
            raise _problem(f"corrupt {fmt_hint} image: size {w}x{h}")
        if w * h > lim.max_pixels:
            raise _problem(
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
        except ItemError:
            raise
        except Image.DecompressionBombError as e:
            raise _problem(f"decompression bomb refused from the header, before decoding: {e}") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is a per-file error
            what = "truncated or corrupt" if "truncated" in str(e) else "corrupt"
            where = f" (frame {i})" if out["multi"] else ""
            if out["multi"] and i > 0:
                out["parts"].append(({"record": FRAME, "frame": i}, None, f"{what} frame: {one_line(e)}"))
                continue
            raise _problem(f"{what} {fmt} image{where}: {one_line(e)}") from None
        meta = {"record": FRAME, "frame": i} if out["multi"] else {}
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
        raise _problem(f"corrupt or unsupported video ({desc}): {_av_reason(e)}") from None
    with container:
        if not container.streams.video:
            raise _problem(f"no video stream in {desc} file")
        out["embedded_date"] = normalise_date((container.metadata or {}).get("creation_time"))
        stream = container.streams.video[0]
        cc = stream.codec_context
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w * h > lim.max_pixels:
            raise _problem(f"video frames are {w}x{h}, over the {lim.max_pixels / 1e6:.0f} Mpx limit")
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
        next_t = start_t
        got = 0
        more = None
        # --distinct (reference ingestion): frames are looked at DETECT_FPS times a second through a
        # tiny thumbnail; a still is taken at a cut or when `every` has passed, and one that is
        # near-identical to the still before it extends that still's time range instead.
        look = 1.0 / video.DEFAULT_DETECT_FPS if lim.distinct and task.thumb is None else None
        next_take = start_t
        pending = None  # distinct: [meta, image, thumb] of the last still taken, emitted once final
        prev_thumb = None

        def emit(meta: dict, image) -> None:
            nonlocal got
            out["parts"].append((meta, image, None))
            got += 1

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
                    raise _problem(
                        f"video frame at {ft:.3f} s is {frame.width}x{frame.height}, over the "
                        f"{lim.max_pixels / 1e6:.0f} Mpx limit (the header said {w}x{h})"
                    )
                t = round(float(ft), 3)
                if look is None:
                    emit({"record": STILL, "timestamp": t}, _reduce(frame.to_image(), lim.still_side))
                    if task.thumb is not None:
                        break
                    next_t = (int(math.floor(ft / every + 1e-9)) + 1) * every
                    continue
                next_t = ft + look
                thumb = video.thumbnail(frame)
                cut = prev_thumb is not None and video.difference(thumb, prev_thumb) > video.DEFAULT_CUT
                prev_thumb = thumb
                take = cut or ft + 1e-6 >= next_take
                same = pending is not None and video.difference(thumb, pending[2]) < video.DEFAULT_DUP
                if same:
                    pending[0]["timestamp_end"] = t  # the same picture is still showing: extend it
                if not take or same:
                    next_take = ft + every if take else next_take
                    continue
                next_take = ft + every
                if pending is not None:
                    emit(pending[0], pending[1])
                meta = {"record": STILL, "timestamp": t, "timestamp_end": t}
                pending = [meta, _reduce(frame.to_image(), lim.still_side), thumb]
        except av.error.FFmpegError as e:
            if got == 0 and pending is None and task.start == 0:
                raise _problem(f"corrupt video ({desc}): {_av_reason(e)}") from None
            out["note"] = f"video decoding stopped early: {_av_reason(e)}"
        if pending is not None:
            emit(pending[0], pending[1])
        if got == 0 and task.start == 0:
            raise _problem(f"no decodable video frame in {desc} file")
        out["more"] = more


def decode_file(task: Task, lim: Limits, transform=None) -> dict:
    """Hash, classify and decode one file (or one segment of one), then apply the embedder's
    decode-side `transform` to each still. Never raises: a file that cannot be used comes back with
    `status` ("error" | "skipped") and a one-line `reason`. See the module docstring for the rest."""
    warnings.simplefilter("ignore")
    out = _result(task)
    try:
        fh, st = _open_regular(task.abspath)
        with fh:
            out["size"] = st.st_size
            identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            out["identity"] = identity
            if task.identity is not None and task.identity != identity:
                raise _problem("file changed during the run (size or mtime differ between segments)")
            if task.sha256 is None:
                out["sha256"], head, n = _hash(fh)
                if n != st.st_size:
                    raise _problem("file changed while it was read (size differs)")
            else:
                fh.seek(0)
                head = fh.read(4096)
            if out["sha256"] in task.skip_shas:
                out["status"] = "resumed"
                return out
            if st.st_size == 0:
                raise _problem("empty file (0 bytes)", kind="empty")
            tail = b""
            if st.st_size > 18:
                fh.seek(st.st_size - 18)
                tail = fh.read(18)
            what, desc = sniff_bytes(head, tail, task.rel)
            if what == "skipped":
                raise _problem(desc, "skipped", "other")
            out["format"] = desc
            if what == "image":
                _image_parts(fh, desc, task, lim, out)
            else:
                _video_parts(fh, desc, task, lim, out)
    except ItemError as e:
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
        return out
    if lim.keep or transform is None:  # stills handed back as pictures: exactly <= still_side
        out["parts"] = [
            (m, _shrink(im, lim.still_side) if im is not None else None, e) for m, im, e in out["parts"]
        ]
    if lim.keep:  # the still itself, before the transform (calibration probes)
        for m, im, _ in out["parts"]:
            m["kept"] = im
    if transform is not None and out["parts"]:
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


def _result(task: Task, status: str | None = None, reason: str | None = None) -> dict:
    """A decode result with every field present: what decode_file fills in as it goes."""
    return {
        "idx": task.idx, "start": task.start, "sha256": task.sha256, "size": None, "kind": None,
        "status": status, "reason": reason, "parts": [], "more": None, "multi": False, "note": None,
    }  # fmt: skip


def failed(task: Task, reason: str) -> dict:
    """The result of a task whose worker crashed, hung or could not run it."""
    return _result(task, "error", reason)


def next_segment(task: Task, result: dict) -> Task | None:
    """The task that decodes the rest of a long video / animation after `result`, or None."""
    if result.get("more") is None or result.get("status") is not None:
        return None
    return Task(
        idx=task.idx,
        rel=task.rel,
        abspath=task.abspath,
        start=int(result["more"]),
        sha256=result.get("sha256"),
        identity=result.get("identity"),
    )


def decode_image(image, label: str, lim: Limits, transform=None) -> dict:
    """An image already in memory (the Python API) as a one-part result of decode_file."""
    out = {**_result(Task(idx=0, rel=label, abspath=b"")), "kind": "image"}
    try:
        w, h = image.size
        if w * h > lim.max_pixels or w <= 0 or h <= 0:
            raise _problem(f"image is {w}x{h} pixels: empty or over the {lim.max_pixels / 1e6:.0f} Mpx limit")
        still = _shrink(_reduce(image, lim.still_side), lim.still_side)
    except ItemError as e:
        return {**out, "status": "error", "reason": e.reason}
    except Exception as e:  # noqa: BLE001 - a broken in-memory image fails alone
        return {**out, "status": "error", "reason": f"corrupt or truncated image ({one_line(e)})"}
    meta = {"kept": still} if lim.keep else {}
    try:
        out["parts"] = [(meta, transform(still) if transform is not None else still, None)]
    except Exception as e:  # noqa: BLE001
        return {**out, "status": "error", "reason": f"cannot prepare image for the embedder: {one_line(e)}"}
    return out


def decode_segments(task: Task, lim: Limits, transform=None):
    """decode_file over every segment of one file, in order (one process: Ray's decode stage)."""
    while task is not None:
        result = decode_file(task, lim, transform)
        yield result
        task = next_segment(task, result)


def iter_stills(path, every: float = config.EVERY, distinct: bool = False, max_pixels: int = MAX_PIXELS):
    """Every still of one file as `sources.Still`s (for scripts and the Python API), decoded here in
    this process; a file that cannot be used raises `sources.InputError` with its one-line reason."""
    from matcher.decode.sources import InputError, Still

    refused = getattr(path, "refused_reason", None)
    if refused:
        raise InputError(path, refused, getattr(path, "refused_status", "error"))
    lim = Limits(max_pixels=max_pixels, every=every, distinct=distinct)
    for result in decode_segments(Task(idx=0, rel=str(path), abspath=os.fsencode(path)), lim):
        if result["status"] is not None:
            raise InputError(path, result["reason"], result["status"])
        for meta, image, error in result["parts"]:
            if error is None:
                yield Still(
                    image, str(path), result["sha256"], meta.get("timestamp"), meta.get("timestamp_end"),
                    meta.get("frame"),
                )  # fmt: skip


def open_image(path, max_pixels: int = MAX_PIXELS):
    """The first still of an image file (RGB, longest side <= config.STILL_SIDE), as every command
    decodes it; raises `sources.InputError`."""
    for still in iter_stills(path, max_pixels=max_pixels):
        return still.image
    from matcher.decode.sources import InputError

    raise InputError(path, "no still could be decoded")
