#!/usr/bin/env python
"""How much do the accuracy benchmark's decision numbers move with the calibration probes' random draw?

The index calibrates itself on probes: random alterations of randomly chosen reference stills
(matcher/score/calibration.py). `Matcher.add(seed=...)` picks the draw. This script builds the classic index
of the accuracy set (scripts/bench_accuracy.py) once per seed, answers the same query embeddings with
each, and prints mean, spread and range over the seeds: the unknown thresholds, decision accuracy,
false attribution, ECE and top-1. Differences between variants smaller than this spread are noise.

    .venv/bin/python scripts/bench_calibration_spread.py                 # 5 seeds, ~3 minutes
    .venv/bin/python scripts/bench_calibration_spread.py --probes 48     # fixed 48 altered probes per title
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_accuracy as B  # noqa: E402
import bench_dataset  # noqa: E402
import bench_metrics as M  # noqa: E402
import fetch_data  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402


def one_seed(refs: list[dict], qv: np.ndarray, meta: dict, seed: int) -> dict[str, float]:
    from matcher import Matcher

    role, truth, tf = meta["role"], meta["truth"], meta["transform"]
    known = role != "distractor"
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp:
        m = Matcher.create(Path(tmp) / "index", model="classic")
        B.add_references(m, refs, seed=seed)
        info = m.info()
        results = m.match_vectors(qv)
        m.close()
    top = np.array([r.candidates[0].title if r.candidates else None for r in results], dtype=object)
    dec = np.array([r.title for r in results], dtype=object)
    conf = np.array([r.confidence for r in results])
    right = (top == truth) & known

    def fa(mask):
        return 100 * np.mean([d is not None for d in dec[mask & ~known]])

    def decided(mask):
        return 100 * np.mean(dec[mask & known] == truth[mask & known])

    every = np.ones(len(tf), bool)
    return {
        "threshold (colour)": info["threshold"],
        "grey threshold": info["grey_threshold"] or np.nan,
        "line-art threshold": info["sketch_threshold"] or np.nan,
        "decision accuracy %": decided(every),
        "line-art decision accuracy %": decided(tf == "lineart"),
        "false attribution %": fa(every),
        "gray false attribution %": fa(tf == "gray"),
        "worst column false attribution %": max(fa(tf == t) for t in TRANSFORMS),
        "ECE 1:1": M.ece(conf, right, weights=M.balanced_weights(~known)),
        "AUROC": M.auroc(conf[known], conf[~known]),
        "seen top-1 %": 100 * right[role == "seen"].mean(),
        "seen gray top-1 %": 100 * right[(role == "seen") & (tf == "gray")].mean(),
        "unseen top-1 %": 100 * right[role == "unseen"].mean(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--probes", type=int, default=0, help="altered probes per title, fixed (default: matcher's rule)"
    )
    args = ap.parse_args()
    if args.probes:
        from matcher.score import calibration

        calibration.PROBES_PER_TITLE = calibration.MAX_PROBES_PER_TITLE = args.probes

    out = bench_dataset.build(fetch_data.fetch_all())
    items = B.load_items(out)
    refs = [it for it in items if it["role"] == "ref"]
    queries = B.make_queries([it for it in items if it["role"] != "ref"], list(TRANSFORMS))
    from matcher.embed import create_embedder

    qv = B.embed_queries(create_embedder("classic"), queries)
    meta = {k: np.array([q[k] for q in queries], dtype=object) for k in ("role", "truth", "transform")}

    rows = [one_seed(refs, qv, meta, seed) for seed in range(args.seeds)]
    print(f"classic, {len(refs)} references, {len(queries)} queries, seeds 0..{args.seeds - 1}")
    print("| metric | mean | sd | min | max |\n|---|---|---|---|---|")
    for key in rows[0]:
        v = np.array([r[key] for r in rows], dtype=float)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        print(f"| {key} | {v.mean():.3f} | {sd:.3f} | {v.min():.3f} | {v.max():.3f} |")


if __name__ == "__main__":
    main()
