#!/usr/bin/env python
"""Rebuild the small demo set committed under demo/ (run once by a maintainer; the demo itself only
reads the committed files). Sources are openly licensed: see demo/NOTICE.md.

    python scripts/fetch_data.py && python scripts/make_demo_assets.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transforms import cel, lineart  # noqa: E402  (the benchmark's own transforms)
from fetch_data import fetch_all  # noqa: E402

from matcher.decode.decoder import iter_stills  # noqa: E402


def iter_video_stills(path, every):
    for still in iter_stills(path, every=every):
        yield still.timestamp, still.image


ROOT = Path(__file__).resolve().parent.parent / "demo"
WIDTH = 400


def _save(im: Image.Image, path: Path, quality: int = 82) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if im.width > WIDTH:
        im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.Resampling.LANCZOS)
    im.save(path, quality=quality, optimize=True)


def main() -> None:
    data = fetch_all()
    refs = ROOT / "references"
    # Big Buck Bunny (CC-BY 3.0): a still every second; the frame at 2.5 s is held out as the query.
    bbb = data / "extra" / "bigbuckbunny.mp4"
    for t, im in iter_video_stills(bbb, every=1.0):
        _save(im, refs / "big-buck-bunny" / f"bbb-{t:04.1f}s.jpg")
    query = next(im for t, im in iter_video_stills(bbb, every=0.1) if t >= 2.5)
    query = query.resize((WIDTH, round(query.height * WIDTH / query.width)), Image.Resampling.LANCZOS)
    _save(cel(query), ROOT / "queries" / "cel.png")
    _save(lineart(query), ROOT / "queries" / "cel-lineart.png")
    # Planet Blupi cut-scenes (GPL-3+): two stills from each of six movies.
    movies = sorted((data / "pkgs" / "planetblupi").rglob("play1*.mkv"))[:6]
    for movie in movies:
        for n, (t, im) in enumerate(iter_video_stills(movie, every=2.5)):
            if n >= 2:
                break
            _save(im, refs / "planet-blupi" / f"{movie.stem}-{t:04.1f}s.jpg")
    # SuperTux backgrounds (GPL-2+ / CC-BY-SA-3.0).
    bg = sorted((data / "pkgs" / "supertux").rglob("images/background/*/*.jpg"))
    for path in bg[:: max(1, len(bg) // 8)][:8]:
        _save(Image.open(path).convert("RGB"), refs / "supertux" / f"{path.parent.name}-{path.stem}.jpg")
    print(f"demo assets written to {ROOT}")


if __name__ == "__main__":
    main()
