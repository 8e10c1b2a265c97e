"""Where frames come from: walk paths, recognise files by content, decode images and video stills safely.

Everything read here may come from an adversary's server, so: files are recognised by their bytes, not
their names; the pixel count is checked before any pixels are decoded (decompression bombs); every
failure becomes an `InputError` with a one-line reason, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MAX_PIXELS = int(os.environ.get("MATCHER_MAX_PIXELS", 80_000_000))  # ~ a 10k x 8k still
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv"}

# Magic numbers: (offset, bytes, kind). Video containers are recognised here, images mostly by Pillow.
_MAGIC = [
    (0, b"\x89PNG\r\n\x1a\n", "image"),
    (0, b"\xff\xd8\xff", "image"),
    (0, b"GIF87a", "image"),
    (0, b"GIF89a", "image"),
    (0, b"BM", "image"),
    (0, b"II*\x00", "image"),
    (0, b"MM\x00*", "image"),
    (0, b"8BPS", "image"),
    (8, b"WEBP", "image"),
    (4, b"ftyp", "video"),  # mp4 / mov / m4v
    (0, b"\x1a\x45\xdf\xa3", "video"),  # matroska / webm
    (8, b"AVI ", "video"),
    (0, b"OggS", "video"),
    (0, b"\x00\x00\x01\xba", "video"),  # mpeg-ps
    (0, b"FLV", "video"),
]


class InputError(Exception):
    """An input that cannot be used; str() is the one-line reason shown to the user."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Still:
    """One decoded frame ready to embed: an image file, or one sampled still of a video."""

    image: Image.Image
    path: str
    sha256: str | None
    timestamp: float | None = None  # seconds into the video; None for still images
    timestamp_end: float | None = None  # distinct sampling: last time this picture was still showing


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sniff(path: str | os.PathLike) -> str | None:
    """'image', 'video' or None, judged from the file's first bytes (never from its name)."""
    with open(path, "rb") as f:
        head = f.read(64)
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if kind == "image" and magic == b"OggS":
                continue
            return kind
    if not head:
        return None
    # Formats without a reliable magic number (TGA, some ICO/PCX): let Pillow's own sniffers decide.
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - header parsed, no pixels decoded
            return "image"
    except Exception:
        return None


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB, refusing pixel bombs before decoding a single pixel."""
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise InputError(path, "file vanished before it could be read") from None
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"refused: decompression bomb ({exc})") from None
    except Exception as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise InputError(path, f"refused: {w}x{h} pixels exceeds the {max_pixels} pixel limit")
        if w == 0 or h == 0:
            raise InputError(path, "image has no pixels")
        return to_rgb(im, path)


def to_rgb(im: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """Load and flatten to RGB; transparency is composited on white, as cels are drawn on paper."""
    try:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            return bg
        return im.convert("RGB")
    except Exception as exc:
        raise InputError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def iter_video_stills(path: str | os.PathLike, every: float = 1.0) -> Iterator[tuple[float, Image.Image]]:
    """Decode one still every ``every`` seconds: yields (timestamp_seconds, RGB image)."""
    import av  # imported here: startup of `match cel.png` must not pay for ffmpeg

    if every <= 0:
        raise ValueError("every must be > 0")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable video ({type(exc).__name__}: {exc})") from None
    with container:
        if not container.streams.video:
            raise InputError(path, "container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        if w * h > MAX_PIXELS:
            raise InputError(path, f"refused: {w}x{h} video frames exceed the {MAX_PIXELS} pixel limit")
        next_t = 0.0
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if t + 1e-6 < next_t:
                    continue
                yield round(t, 3), frame.to_image().convert("RGB")
                next_t = t + every
        except av.error.FFmpegError as exc:
            raise InputError(path, f"video decoding failed ({exc})") from None


def iter_stills(
    path: str | os.PathLike, every: float = 1.0, with_sha256: bool = True, distinct: bool = False
) -> Iterator[Still]:
    """All stills of one file: the image itself, or one still every ``every`` seconds of a video.

    ``distinct`` (reference ingestion): also a still at every scene cut, and near-identical
    consecutive stills dropped, each kept one covering [timestamp, timestamp_end] (matcher.video)."""
    p = Path(path)
    try:
        if not p.is_file():
            raise InputError(path, "not a regular file" if p.exists() else "file not found")
        if p.stat().st_size == 0:
            raise InputError(path, "empty file (0 bytes)")
        kind = sniff(p)
        digest = file_sha256(p) if with_sha256 else None
    except FileNotFoundError:
        raise InputError(path, "file vanished before it could be read") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    if kind == "image":
        yield Still(open_image(p), str(path), digest)
    elif kind == "video" and distinct:
        from matcher.video import sample_video

        for vs in sample_video(p, every):
            yield Still(vs.image, str(path), digest, vs.start, vs.end)
    elif kind == "video":
        for t, im in iter_video_stills(p, every):
            yield Still(im, str(path), digest, t)
    else:
        raise InputError(path, "not an image or video (unrecognised content)")


def walk(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files under the given paths, recursively, in a stable order. Symlinked directories are not
    followed (a dump can hold loops or links out of it); a missing path raises InputError."""
    for root in paths:
        root = Path(root)
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        elif root.exists():
            yield root
        else:
            raise InputError(root, "no such file or directory")
