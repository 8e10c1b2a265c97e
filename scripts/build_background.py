#!/usr/bin/env python
"""Build matcher's background set: small thumbnails of images from no indexed production.

Copy-detection systems normalise a query's scores against images known to belong to none of the
indexed productions; matcher ships such a set (matcher/data/background.zip) and every index embeds it
with its own model (matcher/score/background.py). This script rebuilds the set from the Debian packages
unpacked by scripts/extract_styles.py, reproducibly (same packages in, same bytes out)::

    .venv/bin/python scripts/extract_styles.py
    .venv/bin/python scripts/build_background.py

Rules:
* only source files whose sha256 hex digest starts with '0' or '1' (the rest of each package is left to
  the learned embedder's training set, issue 15: the background must stay unseen by it);
* never a benchmark or reserved package (scripts/extract_styles.py FORBIDDEN);
* at most PER_PACKAGE images per package (taken in sha256 order), so no one style dominates;
* art is trimmed to its opaque box and composited on mid-grey (the canvas colour is no cue), images
  under MIN_SIDE px or flat (masks, fills) are dropped, the rest reduced to THUMB px on the long side
  and stored as WebP, with a manifest (package, path inside the package, source sha256) and a NOTICE
  listing each package's version, .deb sha256 and licence.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import extract_styles  # noqa: E402

OUT = HERE.parent / "matcher" / "data"
ARCHIVE = OUT / "background.zip"
NOTICE = OUT / "BACKGROUND-NOTICE.md"
PER_PACKAGE = 200
MIN_SIDE = 64
THUMB = 128
QUALITY = 70
GREY = (128, 128, 128)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
SKIP_PARTS = {"fonts", "font", "icons", "icon", "cursors", "masks", "mask", "locale", "doc", "help"}
Image.MAX_IMAGE_PIXELS = 40_000_000
# Zip entries carry a fixed date, so the same images give the same archive bytes.
FIXED_DATE = (2026, 1, 1, 0, 0, 0)


def background_share(sha256_hex: str) -> bool:
    """The split with the learned embedder's training data (issue 15)."""
    return sha256_hex[0] in "01"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def thumbnail(source: Path | bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            im = im.convert("RGBA")
    except Exception:
        return None
    ys, xs = np.nonzero(np.asarray(im)[..., 3] > 16)
    if len(ys) == 0:
        return None
    im = im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    if min(im.size) < MIN_SIDE or np.asarray(im.convert("RGB")).std() < 8:
        return None
    canvas = Image.new("RGB", im.size, GREY)
    canvas.paste(im, mask=im.getchannel("A"))
    canvas.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return canvas


def carve_rcc(path: Path) -> list[tuple[str, bytes]]:
    """PNG and JPEG files stored inside a Qt resource bundle (.rcc; gcompris ships its photos and
    drawings so). Qt stores already-compressed formats as they are, so they are found by their own
    start and end markers; the sha256 split applies to each embedded file's bytes."""
    data = path.read_bytes()
    out = []
    for start, end_marker, pad in (
        (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82", 8),
        (b"\xff\xd8\xff\xe0", b"\xff\xd9", 2),
    ):
        pos = data.find(start)
        while pos >= 0:
            end = data.find(end_marker, pos)
            if end < 0:
                break
            out.append((f"{path.name}@{pos}", data[pos : end + pad]))
            pos = data.find(start, end)
    return out


def candidates(root: Path) -> list[tuple[str, str, bytes | Path]]:
    """(sha256, name, source) of every image of the background share, sha256 order."""
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        if SKIP_PARTS & {part.lower() for part in p.relative_to(root).parts[:-1]}:
            continue
        if p.suffix.lower() == ".rcc":
            for name, blob in carve_rcc(p):
                digest = hashlib.sha256(blob).hexdigest()
                if background_share(digest):
                    out.append((digest, str(p.relative_to(root)) + name[len(p.name) :], blob))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            digest = sha256_file(p)
            if background_share(digest):
                out.append((digest, str(p.relative_to(root)), p))
    return sorted(out, key=lambda c: c[:2])


def provenance(package: str) -> dict:
    debs = sorted(extract_styles.DEBS.glob(f"{package}_*.deb"))
    if not debs:
        raise SystemExit(f"{package}: no .deb in {extract_styles.DEBS} (apt-get download it there)")
    deb = debs[-1]
    copyright_file = extract_styles.STYLES / package / "usr" / "share" / "doc" / package / "copyright"
    text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
    return {
        "package": package,
        "version": extract_styles.deb_field(deb, "Version"),
        "deb_sha256": extract_styles.sha256_file(deb),
        "licence": extract_styles.licences(text),
    }


def main() -> None:
    packages = sorted(
        p.name for p in extract_styles.STYLES.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    packages = [p for p in packages if p not in extract_styles.FORBIDDEN]
    OUT.mkdir(parents=True, exist_ok=True)
    entries, notices = [], []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for package in packages:
            root = extract_styles.STYLES / package
            if not provenance(package)["licence"]:
                # e.g. crawl-tiles-data: its doc folder is a link into a package not unpacked here
                print(f"{package}: skipped, no readable licence in its copyright file", flush=True)
                continue
            kept = 0
            for digest, relpath, source in candidates(root):
                if kept >= PER_PACKAGE:
                    break
                im = thumbnail(source)
                if im is None:
                    continue
                data = io.BytesIO()
                im.save(data, "WEBP", quality=QUALITY, method=6)
                name = f"{len(entries):05d}.webp"
                z.writestr(zipfile.ZipInfo(name, FIXED_DATE), data.getvalue())
                entries.append({"file": name, "package": package, "path": relpath, "sha256": digest})
                kept += 1
            if kept:
                info = provenance(package)  # computed twice: hashing a .deb is cheap next to the images
                info["images"] = kept
                notices.append(info)
            print(f"{package}: {kept} images", flush=True)
        z.writestr(zipfile.ZipInfo("manifest.json", FIXED_DATE), json.dumps(entries, indent=1) + "\n")
        z.writestr(zipfile.ZipInfo("packages.json", FIXED_DATE), json.dumps(notices, indent=1) + "\n")
    ARCHIVE.write_bytes(buf.getvalue())
    lines = [
        "# Background set: sources and licences",
        "",
        f"`background.zip` holds {len(entries)} thumbnails ({THUMB} px on the long side, WebP) built by",
        "`scripts/build_background.py` from these Debian packages (only files whose sha256 starts with",
        "'0' or '1'; `manifest.json` inside the archive names the package, path and sha256 of every",
        "source file).",
        "Each thumbnail is a reduced copy of a file of the package and is under that package's licence",
        "(usr/share/doc/<package>/copyright in the package).",
        "",
        "| package | version | .deb sha256 | licence(s) | images |",
        "|---|---|---|---|---|",
    ]
    for n in notices:
        lic = "; ".join(n["licence"]) or "see the package's copyright file"
        if len(lic) > 160:  # a package of many parts: the per-file licences are in its copyright file
            lic = lic[:150].rsplit("; ", 1)[0] + "; ... (per file: the package's copyright file)"
        lines.append(f"| {n['package']} | {n['version']} | `{n['deb_sha256']}` | {lic} | {n['images']} |")
    NOTICE.write_text("\n".join(lines) + "\n")
    print(f"{ARCHIVE}: {len(entries)} images, {ARCHIVE.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
