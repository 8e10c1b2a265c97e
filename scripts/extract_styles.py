#!/usr/bin/env python
"""Unpack the Debian style packages in ~/.cache/matcher/debs into ~/.cache/matcher/styles/<package>/.

Shared by the background set (scripts/build_background.py, issue 14) and the learned embedder's
training data (issue 15); both may run this script at the same time, so each package is unpacked into
a temporary sibling folder and renamed into place in one step, and a package already in place is skipped.
Next to the files, ``PROVENANCE.json`` records the package, version, sha256 of the .deb and the licence
(the ``License:`` fields of usr/share/doc/<package>/copyright).

    .venv/bin/python scripts/extract_styles.py [PACKAGE ...]      # default: every .deb in the folder

The benchmark's packages and the ones reserved for independent evaluation are refused: they must never
reach a background set or a training set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("MATCHER_CACHE", Path.home() / ".cache" / "matcher"))
DEBS = CACHE / "debs"
STYLES = CACHE / "styles"
PROVENANCE = "PROVENANCE.json"
# benchmark productions/distractors (scripts/fetch_data.py) and packages reserved for independent evaluation
FORBIDDEN = {
    "planetblupi-common",
    "wesnoth-1.16-data",
    "supertux-data",
    "hedgewars-data",
    "freedroidrpg-data",
    "tupi-data",
    "tuxpaint-data",
    "tuxpaint-stamps-default",
    "tuxpaint-config",
}


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True, text=True
    ).stdout.strip()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


FREE_FORM = {  # licence names looked for in copyright files that are not machine-readable (DEP-5)
    "GPL": r"GNU General Public License|\bGPL\b",
    "LGPL": r"GNU Lesser General Public License|GNU Library General Public License|\bLGPL\b",
    "Artistic": r"Artistic License",
    "CC-BY-SA": r"Creative Commons Attribution[- ]Share[- ]?Alike|CC[- ]BY[- ]SA",
    "CC-BY": r"Creative Commons Attribution(?![- ]Share)|CC[- ]BY(?![- ]SA)",
    "zlib": r"provided 'as-is', without any express or implied",
    "public domain": r"public domain",
}


def licences(copyright_file: Path) -> list[str]:
    """The licences of a package: the distinct ``License:`` names of a DEP-5 copyright file, else the
    licences a free-form one names (FREE_FORM)."""
    if not copyright_file.is_file():
        return []
    text = copyright_file.read_text(errors="replace")
    found = {m.strip() for m in re.findall(r"^License:\s*(\S.*)$", text, flags=re.M)}
    # a free-form file may start a sentence with "License:" too: those are prose, not a licence name
    found = sorted(f for f in found if not f.startswith(("Files:", "This ")) and len(f) <= 60)
    if found:
        return found
    return [name for name, pattern in FREE_FORM.items() if re.search(pattern, text, flags=re.I)]


def extract(deb: Path) -> Path:
    package = deb_field(deb, "Package")
    if package in FORBIDDEN:
        raise SystemExit(
            f"{deb.name}: {package} is a benchmark or reserved package; it is never extracted here"
        )
    target = STYLES / package
    if target.is_dir():  # unpacked already (perhaps by the other script: same layout, same rename rule)
        return target
    STYLES.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=STYLES))
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        info = {
            "package": package,
            "version": deb_field(deb, "Version"),
            "deb": deb.name,
            "deb_sha256": sha256_file(deb),
            "licence": licences(tmp / "usr" / "share" / "doc" / package / "copyright"),
            "copyright_file": f"usr/share/doc/{package}/copyright",
        }
        (tmp / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process put it in place first: theirs is as good as ours
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*", help="package names (default: every .deb in the debs folder)")
    args = ap.parse_args()
    debs = sorted(DEBS.glob("*.deb"))
    if args.packages:
        debs = [d for d in debs if d.name.split("_")[0] in args.packages]
        missing = set(args.packages) - {d.name.split("_")[0] for d in debs}
        if missing:
            sys.exit(f"no .deb in {DEBS} for: {', '.join(sorted(missing))} (apt-get download them there)")
    for deb in debs:
        if deb.name.split("_")[0] in FORBIDDEN:
            print(f"skipped {deb.name}: benchmark or reserved package", file=sys.stderr)
            continue
        print(extract(deb), flush=True)


if __name__ == "__main__":
    main()
