#!/usr/bin/env python
"""How fast the `classic` descriptor is next to decoding the image it describes (issue 3: "do not make
it slower than decoding the image by more than 2x").

    .venv/bin/python scripts/bench_descriptor_speed.py            # ~1 min
    .venv/bin/python scripts/bench_descriptor_speed.py --runs 50

One process, one thread, median of --runs timings per image. For cartoon-like frames (bench.draw_still)
at 320x240, 1280x720 and 1920x1080, saved as PNG and as JPEG q90, it prints the decode time
(matcher.decode.decoder.open_image on the file, in the page cache), the descriptor's time
(`prepare`: border trim and reduction to 128 px; `embed` of the prepared still) and their ratio.
With the benchmark set cached (scripts/fetch_data.py), the same for a sample of the PNG files it
was built from (game sprites, tiles and portraits, mostly small).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: the per-image cost a decode worker pays
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import draw_still  # noqa: E402

from matcher.decode.decoder import open_image  # noqa: E402
from matcher.embed import create_embedder  # noqa: E402


def median_ms(fn, runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_file(embedder, path: Path, runs: int) -> tuple[float, float, float]:
    """(decode, prepare, embed) milliseconds for one image file (in the page cache after the warm run)."""
    decode = median_ms(lambda: open_image(path), runs)
    image = open_image(path)
    prepare = median_ms(lambda: embedder.prepare(image), runs)
    small = embedder.prepare(image)
    embed = median_ms(lambda: embedder.embed([small]), runs)
    return decode, prepare, embed


def save(image, fmt: str, directory: Path) -> Path:
    path = directory / f"{image.width}x{image.height}.{fmt.lower()}"
    image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="timings per image (median)")
    ap.add_argument("--real", type=int, default=200, help="benchmark reference files to time (0: none)")
    args = ap.parse_args(argv)
    e = create_embedder("classic")
    print(f"classic ({e.dim} dims), one thread, median of {args.runs} runs, ms per image\n")
    print("| image | decode | prepare | embed | descriptor (prepare + embed) | descriptor / decode |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="matcher-descriptor-speed-") as tmp:
        for size in ((320, 240), (1280, 720), (1920, 1080)):
            still = draw_still(rng, size)
            for fmt in ("PNG", "JPEG"):
                d, p, m = time_file(e, save(still, fmt, Path(tmp)), args.runs)
                label = f"{size[0]}x{size[1]} {fmt if fmt == 'PNG' else 'JPEG q90'}"
                print(f"| {label} | {d:.2f} | {p:.2f} | {m:.2f} | {p + m:.2f} | {(p + m) / d:.1f}x |")
    if args.real:
        import fetch_data  # the benchmark's cached data (scripts/fetch_data.py)

        files = sorted(fetch_data.default_data_dir().rglob("*.png"))
        if not files:
            print("\n(no benchmark source data: run scripts/fetch_data.py for the real-file line)")
            return 0
        files = random.Random(0).sample(files, min(args.real, len(files)))
        runs = max(3, args.runs // 6)
        rows = [time_file(e, f, runs) for f in files]
        d, p, m = (np.array(c) for c in zip(*rows))
        print(
            f"\n{len(files)} PNG files sampled from the benchmark's source data (median size "
            f"{int(np.median([f.stat().st_size for f in files]) // 1024)} KB), medians over files: decode "
            f"{np.median(d):.2f}, prepare {np.median(p):.2f}, embed {np.median(m):.2f}; descriptor / decode "
            f"median {np.median((p + m) / d):.1f}x, summed over files {(p + m).sum() / d.sum():.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
