"""Where frames come from: walk paths without following links, recognise files by their bytes, flatten
a decoded picture to RGB. The decoding itself is matcher.decode.decoder's (the one decoder).

Everything read here may come from an adversary's server, so: files are recognised by their bytes, not
their names; every failure becomes an `InputError` with a one-line reason, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from matcher import config
from matcher.errors import ItemError

DEFAULT_MAX_PIXELS = config.MAX_PIXELS_DEFAULT


def _max_pixels_from_env() -> tuple[int, str | None]:
    """($MATCHER_MAX_PIXELS or the default, the one-line problem with the variable or None). A bad
    value must not be a traceback at import time: the CLI reports it and exits 2."""
    raw = os.environ.get("MATCHER_MAX_PIXELS")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_PIXELS, None
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        return DEFAULT_MAX_PIXELS, f"MATCHER_MAX_PIXELS={raw!r} is not a positive whole number of pixels"
    return value, None


MAX_PIXELS, MAX_PIXELS_PROBLEM = _max_pixels_from_env()

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


IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "DIB", "TIFF", "TGA", "PSD", "AVIF")
VIDEO_EXTS = {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".tga", ".psd"}


class InputError(ItemError):
    """An input that cannot be used; str() is the one-line reason shown to the user."""

    def __init__(self, path: str | os.PathLike, reason: str, status: str = "error"):
        super().__init__(path, reason, status)


@dataclass
class Still:
    """One decoded frame ready to embed: an image file, or one sampled still of a video."""

    image: Image.Image
    path: str
    sha256: str | None
    timestamp: float | None = None  # seconds into the video; None for still images
    timestamp_end: float | None = None  # distinct sampling: last time this picture was still showing
    frame: int | None = None  # frame of an animation / page of a TIFF; None for a single image


# ------------------------------------------------------------------ recognising files by content
def looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte char cut at the end of the sample is fine
            return False
    ctrl = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return ctrl <= len(head) // 100


def tga_plausible(head: bytes, tail: bytes) -> bool:
    if tail.endswith(b"TRUEVISION-XFILE.\x00"):
        return True
    if len(head) < 18:
        return False
    cmap, itype, depth = head[1], head[2], head[16]
    w, h = int.from_bytes(head[12:14], "little"), int.from_bytes(head[14:16], "little")
    return (
        cmap in (0, 1) and itype in (1, 2, 3, 9, 10, 11) and depth in (8, 15, 16, 24, 32) and w > 0 and h > 0
    )


def _avif_supported() -> bool:
    """Pillow >= 11.2 decodes AVIF when built with libavif (the PyPI wheels are)."""
    Image.init()
    return "AVIF" in Image.OPEN


def sniff_bytes(head: bytes, tail: bytes = b"", name: str = "") -> tuple[str, str]:
    """Classify by content: ('image'|'video'|'skipped', description)."""
    ext = os.path.splitext(name)[1].lower()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image", "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "TIFF"
    if head.startswith(b"8BPS"):
        return "image", "PSD"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image", "WebP"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video", "AVI"
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    ):
        return "image", "BMP"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "Matroska/WebM"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            if _avif_supported():
                return "image", "AVIF"
            return "skipped", "AVIF image: this installation's Pillow cannot decode AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "skipped", f"HEIF image ({brand.decode('latin-1').strip()}) is not a supported format"
        return "video", "MP4/QuickTime"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"pnot", b"skip"):
        return "video", "QuickTime"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "video", "MPEG-PS"
    if head.startswith(b"FLV\x01"):
        return "video", "FLV"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "video", "ASF/WMV"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "video", "MPEG-TS"
    archives = {
        b"PK\x03\x04": "zip archive",
        b"PK\x05\x06": "zip archive (empty)",
        b"\x1f\x8b": "gzip archive",
        b"7z\xbc\xaf\x27\x1c": "7-Zip archive",
        b"Rar!\x1a\x07": "RAR archive",
        b"BZh": "bzip2 archive",
        b"\xfd7zXZ\x00": "xz archive",
        b"\x28\xb5\x2f\xfd": "zstd archive",
        b"%PDF": "PDF document",
        b"\x7fELF": "ELF executable",
        b"MZ": "Windows executable",
        b"ID3": "MP3 audio",
        b"OggS": "Ogg media",
        b"fLaC": "FLAC audio",
        b"SQLite format 3": "SQLite database",
    }
    for magic, what in archives.items():
        if head.startswith(magic):
            return "skipped", f"{what}: not an image or video (archives are not unpacked)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "skipped", "tar archive: not an image or video (archives are not unpacked)"
    if ext == ".tga" or tga_plausible(head, tail):
        if tga_plausible(head, tail):
            return "image", "TGA"
    if looks_like_text(head):
        hint = f" despite its {ext} extension" if ext in IMAGE_EXTS | VIDEO_EXTS else ""
        return "skipped", f"text file{hint}: not an image or video"
    hint = f" despite its {ext} extension" if ext in IMAGE_EXTS | VIDEO_EXTS else ""
    return "skipped", f"unrecognised content{hint}: no image or video signature"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Single-channel modes deeper than 8 bits: Pillow's own conversion to RGB clips them (a 16-bit
#: PNG comes out almost white), so they are scaled to 8 bits first (`to_8bit`).
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image scaled to 8-bit grey ('L'): 16-bit
    data by its full range (0..65535), floats in 0..1 by 255, anything wider by its own maximum.
    Other modes are returned as they are."""
    if im.mode not in DEEP_MODES:
        return im
    import numpy as np

    a = np.asarray(im, dtype=np.float32)
    finite = a[np.isfinite(a)]
    hi = float(finite.max()) if finite.size else 0.0
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "F" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255.0:
        scale = 1.0
    elif hi <= 65535.0:
        scale = 255.0 / 65535.0  # 16-bit data held in a 32-bit mode (e.g. a 16-bit TIFF/PNG as 'I')
    else:
        scale = 255.0 / hi
    a = np.nan_to_num(a * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """Load and flatten to RGB; transparency is composited on white, as cels are drawn on paper."""
    try:
        im.load()
        im = to_8bit(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            return bg
        try:
            return im.convert("RGB")  # a new image: never the decoder's own (a later seek() changes it)
        except (ValueError, OSError):  # a mode Pillow cannot convert to RGB directly
            return im.convert("L").convert("RGB")
    except Exception as exc:
        raise InputError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


class RefusedPath(type(Path())):
    """A path a directory walk found but will not open: a symbolic link (out of the tree, a loop, or
    a second name for a file that is reported under its own path), a FIFO/socket/device, or a
    directory that cannot be listed. the pipeline turns it into an InputError carrying the reason,
    so nothing is skipped silently. Survives pickling (pipeline workers)."""

    refused_reason = "not followed"
    refused_status = "skipped"  # "error" for what could not be read (a directory that cannot be listed)

    def __reduce__(self):
        return (_refused_path, (str(self), self.refused_reason, self.refused_status))


def _refused_path(path: str, reason: str, status: str = "skipped") -> RefusedPath:
    p = RefusedPath(path)
    p.refused_reason = reason
    p.refused_status = status
    return p


def walk(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files under the given paths, recursively, in a stable order. Inside a directory no symbolic
    link is followed (a dump can hold loops or links out of it) and nothing is dropped: links,
    special files and unlistable directories come out as `RefusedPath`. A missing path raises
    InputError; a path given explicitly is used as given."""
    for root in paths:
        root = Path(root)
        if root.is_dir():
            for e in walk_dump(root):
                path = os.fsdecode(e.abspath)
                yield (
                    Path(path)
                    if e.kind == "file"
                    else _refused_path(
                        path, e.reason or "not followed", "error" if e.kind == "error" else "skipped"
                    )
                )
        elif root.exists():
            yield root
        else:
            raise InputError(root, "no such file or directory")


# ------------------------------------------------------------------ walking a hostile dump
@dataclass
class Entry:
    rel: str
    abspath: bytes
    kind: str  # 'file', 'skipped', 'error'
    reason: str | None = None
    size: int | None = None


def display(rel: bytes) -> str:
    """A dump path as text: UTF-8, undecodable bytes shown as \\xNN escapes."""
    return rel.decode("utf-8", "backslashreplace")


def walk_dump(root: str | os.PathLike) -> Iterator[Entry]:
    """Every entry under root, depth first in name order; links and special files are not followed."""
    root_b = os.fsencode(os.fspath(root))
    real_root = os.path.realpath(root_b)
    stack: list[bytes] = [b""]
    while stack:
        rel_dir = stack.pop()
        dir_abs = os.path.join(root_b, rel_dir) if rel_dir else root_b
        try:
            with os.scandir(dir_abs) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Entry(
                display(rel_dir) or ".", dir_abs, "error", f"cannot list directory: {e.strerror or e}"
            )
            continue
        subdirs = []
        for de in entries:
            rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
            try:
                if de.is_symlink():
                    yield link_entry(rel, de.path, real_root)
                elif de.is_dir(follow_symlinks=False):
                    subdirs.append(rel)
                elif de.is_file(follow_symlinks=False):
                    yield Entry(display(rel), de.path, "file")
                else:
                    st = de.stat(follow_symlinks=False)
                    what = (
                        "FIFO"
                        if stat.S_ISFIFO(st.st_mode)
                        else "socket"
                        if stat.S_ISSOCK(st.st_mode)
                        else "device"
                        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                        else "special file"
                    )
                    yield Entry(
                        display(rel), de.path, "skipped", f"{what}: not a regular file, not opened", 0
                    )
            except FileNotFoundError:
                yield Entry(display(rel), de.path, "error", "file vanished during the run (no longer exists)")
            except OSError as e:
                yield Entry(display(rel), de.path, "error", f"cannot stat: {e.strerror or e}")
        stack.extend(reversed(subdirs))


def link_entry(rel: bytes, path: bytes, real_root: bytes) -> Entry:
    try:
        target = display(os.readlink(path))
    except OSError:
        target = "?"
    try:
        size = os.lstat(path).st_size
    except OSError:
        size = None
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == 40:
            return Entry(
                display(rel), path, "skipped", f"symbolic link loop (-> {target}): not followed", size
            )
        return Entry(
            display(rel), path, "skipped", f"dangling symbolic link (-> {target}): not followed", size
        )
    real = os.path.realpath(path)
    inside = real == real_root or real.startswith(real_root.rstrip(b"/") + b"/")
    what = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if not inside:
        reason = f"symbolic link to a {what} outside the dump (-> {target}): not followed"
    else:
        where = display(os.path.relpath(real, real_root))
        reason = (
            f"symbolic link to a {what} inside the dump (-> {where}): not followed, the target is reported"
        )
        if stat.S_ISDIR(st.st_mode) and (real_root.startswith(real.rstrip(b"/") + b"/") or real == real_root):
            reason = f"symbolic link loop to an enclosing directory (-> {target}): not followed"
    return Entry(display(rel), path, "skipped", reason, size)
