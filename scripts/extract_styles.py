"""Extract the Debian art packages (training styles / background sources) and record their provenance.

    python scripts/extract_styles.py [--debs ~/.cache/matcher/debs] [--out ~/.cache/matcher/styles]
                                     [--manifest train/styles_manifest.json] [PACKAGE ...]

Each `<package>_<version>_all.deb` in the debs folder is unpacked with `dpkg-deb -x` into
`<out>/<package>/`; the manifest records package, version, sha256 of the .deb and the licence text
found in `usr/share/doc/<package>/copyright` (the first `License:` lines and the full file's sha256).

Two engineers may run this at the same time (the background set and the training set both read these
folders), so every package is unpacked into a temporary sibling folder and renamed into place in one
step; a package already in place is skipped, and a rename that loses the race keeps the winner's copy.

Packages used by the accuracy benchmark or reserved for independent evaluation are refused: training
or tuning on them would make the benchmark lie.
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
from urllib.parse import unquote

CACHE = Path(os.environ.get("MATCHER_CACHE", Path.home() / ".cache" / "matcher"))
DEBS = CACHE / "debs"
STYLES = CACHE / "styles"
# The benchmark's productions and the sources reserved for independent evaluation: never extracted here.
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def deb_field(deb: Path, name: str) -> str:
    """A control field of a .deb (``Version``, ``Package``)."""
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True, text=True
    ).stdout.strip()


def parse_deb_name(path: Path) -> tuple[str, str]:
    """(package, version) from `pkg_version_arch.deb` (apt-get download escapes ':' as %3a)."""
    parts = path.name[: -len(".deb")].split("_")
    if len(parts) != 3:
        raise ValueError(f"{path}: not a Debian package file name (package_version_arch.deb)")
    return parts[0], unquote(parts[1])


def licences(copyright_text: str) -> list[str]:
    """Licence names of a debian/copyright: the distinct `License:` short names of a machine-readable
    (DEP-5) file, else the licences its free text names (keywords), in order of first mention."""
    if copyright_text.lstrip().startswith("Format:"):
        seen: list[str] = []
        for m in re.finditer(r"^License:\s*(.+)$", copyright_text, flags=re.M):
            name = m.group(1).strip()
            if name and name not in seen:
                seen.append(name)
        return seen
    low = copyright_text.lower()
    found = [(low.find(k), name) for k, name in _KEYWORDS if k in low]
    return list(dict.fromkeys(name for _, name in sorted(found)))


_KEYWORDS = [
    ("public domain", "public-domain"),
    ("cc0", "CC0-1.0"),
    ("gnu general public license", "GPL"),
    ("gnu lesser general public license", "LGPL"),
    ("version 2 of the license", "GPL-2+"),
    ("version 3 of the license", "GPL-3+"),
    ("creative commons attribution-sharealike", "CC-BY-SA"),
    ("artistic license", "Artistic"),
    ("zlib", "Zlib"),
    ("provided 'as-is'", "Zlib"),
]


def extract(deb: Path, out_root: Path) -> dict:
    package, version = parse_deb_name(deb)
    if package in FORBIDDEN:
        raise ValueError(f"{deb.name}: {package} is a benchmark or reserved package; never extracted here")
    target = out_root / package
    if not target.exists():
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=out_root))
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():  # not a lost race: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    copyright_path = target / "usr" / "share" / "doc" / package / "copyright"
    text = copyright_path.read_text(errors="replace") if copyright_path.is_file() else ""
    doc_link = target / "usr" / "share" / "doc" / package
    # some packages link their doc folder to a sibling package's (crawl-tiles-data -> crawl-common)
    note = f"copyright in {os.readlink(doc_link)} (not in this .deb)" if doc_link.is_symlink() else None
    return {
        "package": package,
        "version": version,
        "deb": deb.name,
        "deb_sha256": sha256_file(deb),
        "licences": licences(text),
        "copyright_sha256": hashlib.sha256(text.encode()).hexdigest() if text else None,
        "copyright_note": note,
        "path": str(target),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*", help="only these packages (default: every .deb in --debs)")
    ap.add_argument("--debs", type=Path, default=DEBS)
    ap.add_argument("--out", type=Path, default=STYLES)
    ap.add_argument("--manifest", type=Path, default=None, help="write the provenance records here (JSON)")
    args = ap.parse_args(argv)
    debs = sorted(args.debs.glob("*.deb"))
    if args.packages:
        debs = [d for d in debs if parse_deb_name(d)[0] in set(args.packages)]
        missing = set(args.packages) - {parse_deb_name(d)[0] for d in debs}
        if missing:
            print(f"error: no .deb in {args.debs} for: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    records = []
    for deb in debs:
        try:
            rec = extract(deb, args.out)
        except (ValueError, subprocess.CalledProcessError, OSError) as exc:
            print(f"error: {deb}: {exc}", file=sys.stderr)
            return 2
        records.append(rec)
        print(f"{rec['package']} {rec['version']}: {', '.join(rec['licences']) or 'no licence found'}")
    if args.manifest:
        for rec in records:
            rec.pop("path")
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        args.manifest.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
