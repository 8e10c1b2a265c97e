"""Build the `anim` training set: frames composited from openly licensed Debian game art.

    python train/build_dataset.py [--out ~/.cache/matcher/animset] [--frames 1400]

One Debian package is one "production" (its art has one look); the folders of its art are its "scenes"
(big folders are split into groups of ~40 files). A frame is made from one scene's assets:

- ``single``: one asset on a flat background (grey, white, black or a random tone), the way a character
  sheet, a prop or a cel on paper looks;
- ``scene``: a backdrop (an opaque asset of the scene, else of the production) cropped to the canvas, with
  1-4 sprites of the scene pasted at random places and scales, some mirrored;
- ``crop``: a window of an opaque asset (a background painting, a tile set).

Every frame is then prepared the way the embedder prepares a query (uniform borders trimmed, squashed to a
square) at 160 px and stored as JPEG (quality 95) bytes in one uint8 array per split, with offsets and
labels: ~10 KB a frame, so the whole set fits the 64 MiB that a lent GPU machine accepts when it is built
with fewer frames (``--frames 250``).

Splits: ``train`` and ``dev``; dev holds whole scenes of every production (about 1 in 6, at least one
where there are 3 or more), so that "production kNN accuracy" on dev measures the recognition of scenes
never trained on. ``openclipart-png`` (public domain clip art by many artists, no one look) gives extra
frames for the copy-detection term only (production -1).

Source files whose sha256 hex digest starts with '0' or '1' are reserved for the background set (issue 14)
and never used here. Packages of the accuracy benchmark and those reserved for independent evaluation are
never read (scripts/extract_styles.py refuses them). Everything is seeded: the same packages give the
same frames. The provenance (package, version, .deb sha256, licences) is in train/styles_manifest.json;
the set's own summary (frames per production and split, sha256 of the list of source files) is written to
train/dataset_manifest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import extract_styles  # noqa: E402

from matcher.embed.classic import _trim_box  # noqa: E402

CACHE = extract_styles.CACHE
SIDE = 160  # stored frame side; training crops and resizes to the model's 128
CANVAS = 320  # long side of a composed frame before preparation
ASSET_MAX = 256  # assets are kept at most this large (memory)
MAX_ASSETS = 700  # per production, sampled by hash (a few big folders must not drown the rest)
MIN_ASSET = 24
DEV_EVERY = 6  # about one scene in DEV_EVERY goes to dev
SCENE_FILES = 40  # a folder with more files is split into groups of about this many

# package -> art root inside the package. None as label: copy-detection frames only (no one look).
PRODUCTIONS = {
    "crawl-tiles-data": "usr/share/crawl/dat/tiles",
    "flare-game": "usr/share/games/flare",
    "freeciv-data": "usr/share/games/freeciv",
    "freedink-data": "usr/share/games/dink",
    "pingus-data": "usr/share/games/pingus",
    "plee-the-bear-data": "usr/share/games/plee-the-bear",
    "raincat-data": "usr/share/games/raincat",
    "teeworlds-data": "usr/share/games/teeworlds",
    "warmux-data": "usr/share/games/warmux",
    "widelands-data": "usr/share/games/widelands",
    "naev-data": "usr/share/naev",
}
COPY_ONLY = {"openclipart-png": "usr/share/openclipart"}
# Left out so that the weights can be offered under GPL-3.0-or-later (train/MODEL_CARD.md, licence):
# frozen-bubble-data is GPL-2.0-only.
EXCLUDED = {"frozen-bubble-data": "GPL-2.0-only art: incompatible with the weights' GPL-3.0-or-later"}
# folders of flags, fonts, cursors and user-interface icons: not a production's drawn look
SKIP_PARTS = {
    "flags",
    "countryflags",
    "fonts",
    "font",
    "cursors",
    "cursor",
    "icons",
    "doc",
    "locale",
    "l10n",
    "i18n",
}
EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def _h(s: str) -> int:
    return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16)


def reserved_for_background(sha256_hex: str) -> bool:
    """The split agreed with the background set (issue 14): '0' / '1' files are never trained on."""
    return sha256_hex[0] in "01"


def load_asset(path: Path) -> tuple[Image.Image, str] | None:
    """(RGBA asset trimmed to its opaque box, sha256 of the file), or None when unusable or reserved."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    sha = hashlib.sha256(data).hexdigest()
    if reserved_for_background(sha):
        return None
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > 40_000_000:
            return None
        im.load()
    except Exception:
        return None
    im = im.convert("RGBA")
    if max(im.size) > 4 * ASSET_MAX:
        im.thumbnail((4 * ASSET_MAX, 4 * ASSET_MAX))
    a = np.asarray(im)[..., 3]
    ys, xs = np.nonzero(a > 16)
    if len(ys) == 0:
        return None
    im = im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    if min(im.size) < MIN_ASSET:
        return None
    if np.asarray(im.convert("RGB")).std() < 8:  # flat fills, masks
        return None
    im.thumbnail((ASSET_MAX, ASSET_MAX), Image.Resampling.LANCZOS)
    return im, sha


def scan(package: str, rel_root: str, styles: Path) -> dict[str, list[Path]]:
    """Scene name -> files (sorted), scenes from the folder layout."""
    root = styles / package / rel_root
    by_dir: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in EXTS or not p.is_file() or p.is_symlink():
            continue
        rel = p.relative_to(root)
        if SKIP_PARTS & {s.lower() for s in rel.parts[:-1]}:
            continue
        by_dir.setdefault(str(rel.parent), []).append(p)
    scenes: dict[str, list[Path]] = {}
    for d, files in by_dir.items():
        k = max(1, math.ceil(len(files) / SCENE_FILES))
        for p in files:
            scenes.setdefault(f"{d}#{_h(p.name) % k}" if k > 1 else d, []).append(p)
    return scenes


def split_scenes(package: str, scenes: list[str]) -> dict[str, str]:
    """scene -> 'train' | 'dev': about 1 in DEV_EVERY scenes for dev, at least one when there are 3+."""
    out = {s: ("dev" if _h(package + "/" + s) % DEV_EVERY == 0 else "train") for s in scenes}
    if len(scenes) >= 3 and "dev" not in out.values():
        out[min(scenes, key=lambda s: _h("dev/" + package + "/" + s))] = "dev"
    if "train" not in out.values():
        out[scenes[0]] = "train"
    return out


def _is_opaque(im: Image.Image) -> bool:
    return float(np.asarray(im.getchannel("A")).mean()) > 242 and min(im.size) >= 64


def _flat_colour(rng: random.Random) -> tuple[int, int, int]:
    r = rng.random()
    if r < 0.3:
        return (128, 128, 128)
    if r < 0.5:
        return (255, 255, 255)
    if r < 0.6:
        return (0, 0, 0)
    return tuple(rng.randint(0, 255) for _ in range(3))


def _canvas_size(rng: random.Random) -> tuple[int, int]:
    aspect = rng.choice([4 / 3, 16 / 9, 1.0, 3 / 4, 1.5])
    return (CANVAS, round(CANVAS / aspect)) if aspect >= 1 else (round(CANVAS * aspect), CANVAS)


def _cover(im: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A random window of ``im`` (at least half its side) resized to cover ``size``."""
    w, h = im.size
    f = rng.uniform(0.5, 1.0)
    tw, th = size
    scale = max(tw / w, th / h)
    cw, ch = min(w, max(8, round(tw / scale / f))), min(h, max(8, round(th / scale / f)))
    ratio = tw / th
    if cw / ch > ratio:
        cw = max(8, round(ch * ratio))
    else:
        ch = max(8, round(cw / ratio))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch)).convert("RGB").resize(size, Image.Resampling.BILINEAR)


def _paste(canvas: Image.Image, sprite: Image.Image, rng: random.Random, lo: float, hi: float) -> None:
    if rng.random() < 0.5:
        sprite = ImageOps.mirror(sprite)
    W, H = canvas.size
    s = rng.uniform(lo, hi) * min(W, H) / max(sprite.size)
    sp = sprite.resize((max(4, round(sprite.width * s)), max(4, round(sprite.height * s))), Image.BILINEAR)
    x = rng.randint(-sp.width // 4, max(-sp.width // 4, W - 3 * sp.width // 4))
    y = rng.randint(-sp.height // 4, max(-sp.height // 4, H - 3 * sp.height // 4))
    canvas.paste(sp, (x, y), sp)


def compose(scene: list[Image.Image], backdrops: list[Image.Image], rng: random.Random) -> Image.Image:
    """One frame from a scene's assets (module docstring)."""
    opaque = [a for a in scene if _is_opaque(a)]
    sprites = [a for a in scene if not _is_opaque(a)] or scene
    r = rng.random()
    size = _canvas_size(rng)
    if r < 0.2 and opaque:
        return _cover(rng.choice(opaque), size, rng)
    if r < 0.6:
        canvas = Image.new("RGB", size, _flat_colour(rng))
        _paste(canvas, rng.choice(scene), rng, 0.6, 1.0)
        return canvas
    pool = opaque or backdrops
    canvas = _cover(rng.choice(pool), size, rng) if pool else Image.new("RGB", size, _flat_colour(rng))
    for _ in range(rng.randint(1, 4)):
        _paste(canvas, rng.choice(sprites), rng, 0.2, 0.6)
    return canvas


def prepare(frame: Image.Image) -> Image.Image:
    """As the embedder does with a query: uniform borders trimmed, squashed to SIDE x SIDE."""
    box = _trim_box(np.asarray(frame, dtype=np.float32))
    return frame.resize((SIDE, SIDE), Image.Resampling.BOX, box=box)


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def build(out: Path, frames_per_production: int, styles: Path, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list]] = {
        s: {"jpeg": [], "production": [], "scene": []} for s in ("train", "dev")
    }
    productions: list[str] = []
    scene_names: list[str] = []
    summary: dict[str, dict] = {}
    used_files: list[str] = []
    sources = [(p, r, True) for p, r in PRODUCTIONS.items()] + [(p, r, False) for p, r in COPY_ONLY.items()]
    for package, rel_root, labelled in sources:
        if not (styles / package).is_dir():
            print(f"skip {package}: not extracted (scripts/extract_styles.py)", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        scenes = scan(package, rel_root, styles)
        files = sorted((p for fs in scenes.values() for p in fs), key=lambda p: _h(str(p)))
        keep = set(files[: MAX_ASSETS * (3 if not labelled else 1)])
        assets: dict[str, list[Image.Image]] = {}
        for name, fs in scenes.items():
            for p in fs:
                if p not in keep:
                    continue
                got = load_asset(p)
                if got is None:
                    continue
                assets.setdefault(name, []).append(got[0])
                used_files.append(f"{package}/{p.relative_to(styles / package)} {got[1]}")
        if not assets:
            print(f"skip {package}: no usable art", file=sys.stderr)
            continue
        names = sorted(assets)
        which = split_scenes(package, names) if labelled else {s: "train" for s in names}
        label = len(productions) if labelled else -1
        if labelled:
            productions.append(package)
        rng = random.Random(f"{seed}/{package}")
        counts = {"train": 0, "dev": 0}
        for split in ("train", "dev"):
            sc = [s for s in names if which[s] == split]
            if not sc:
                continue
            backdrops = [a for s in sc for a in assets[s] if _is_opaque(a)]
            n = frames_per_production if split == "train" else max(40, frames_per_production // 6)
            if not labelled:
                n = frames_per_production * 2
            weights = [math.sqrt(len(assets[s])) for s in sc]  # big scenes count more, not linearly
            for _ in range(n):
                s = rng.choices(sc, weights)[0]
                frame = prepare(compose(assets[s], backdrops, rng))
                d = splits[split]
                d["jpeg"].append(_jpeg(frame))
                d["production"].append(label)
                d["scene"].append(len(scene_names))
                scene_names.append(f"{package}/{s}")
                counts[split] += 1
        summary[package] = {
            "label": label,
            "scenes": {k: sum(1 for s in names if which[s] == k) for k in ("train", "dev")},
            "assets": sum(len(v) for v in assets.values()),
            "frames": counts,
        }
        print(f"{package}: {summary[package]} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    # scene ids: one id per distinct scene name
    uniq = {n: i for i, n in enumerate(dict.fromkeys(scene_names))}
    for split, d in splits.items():
        blobs = d["jpeg"]
        offsets = np.zeros(len(blobs) + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        np.savez(
            out / f"{split}.npz",
            jpeg=np.frombuffer(b"".join(blobs), np.uint8),
            offsets=offsets,
            production=np.asarray(d["production"], np.int16),
            scene=np.asarray([uniq[scene_names[i]] for i in d["scene"]], np.int32),
        )
    used_files.sort()
    meta = {
        "side": SIDE,
        "productions": productions,
        "scenes": list(uniq),
        "summary": summary,
        "frames_per_production": frames_per_production,
        "seed": seed,
        "source_files": len(used_files),
        "source_files_sha256": hashlib.sha256("\n".join(used_files).encode()).hexdigest(),
        "bytes": {s: (out / f"{s}.npz").stat().st_size for s in splits},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    (out / "source_files.txt").write_text("\n".join(used_files) + "\n")
    return meta


def load_split(path: Path) -> dict[str, np.ndarray]:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def decode(split: dict[str, np.ndarray], i: int) -> Image.Image:
    a, b = int(split["offsets"][i]), int(split["offsets"][i + 1])
    return Image.open(io.BytesIO(split["jpeg"][a:b].tobytes())).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=CACHE / "animset")
    ap.add_argument("--styles", type=Path, default=CACHE / "styles")
    ap.add_argument("--frames", type=int, default=1400, help="training frames per production")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--manifest", type=Path, default=ROOT / "train" / "dataset_manifest.json")
    args = ap.parse_args(argv)
    os.nice(0)
    meta = build(args.out, args.frames, args.styles, args.seed)
    if args.manifest:
        keep = {k: v for k, v in meta.items() if k != "scenes"}
        keep["scenes"] = len(meta["scenes"])
        args.manifest.write_text(json.dumps(keep, indent=1) + "\n")
    print(f"wrote {args.out}: {meta['bytes']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
