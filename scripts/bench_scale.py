"""Index building at scale (issue 16): synthetic clustered vectors written as shards on disk, then
an index built from them in a child process whose peak RSS (ru_maxrss) is measured.

    python scripts/bench_scale.py --n 1000000 --dim 279 --compare-old a4bd21b   # 1M: today vs after
    nice -n 10 python scripts/bench_scale.py --n 10000000 --dim 64 --budget 4G  # 10M from shards

`--compare-old REV` also builds the same vectors with `ann.build` of git revision REV (all vectors in
memory, as `store.save` did), in its own child process. Also run as `scripts/bench.py --stages scale`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_shards(directory: Path, n: int, dim: int, shard_size: int, seed: int = 0) -> float:
    """Clustered unit vectors (10k cluster centres, noise 0.5x): like stills of many shots."""
    import numpy as np

    from matcher.search import shards

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10_000, dim)).astype(np.float32)
    for k, a in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - a)
        x = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        recs = [{"title": f"T{(a + i) % 1000}", "source": f"/refs/{a + i}.png"} for i in range(m)]
        shards.write_shard(directory, k, x, recs)
    return time.perf_counter() - t


def _child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line. Adds the child's peak RSS."""
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(wall, 1)
    return res


def build_new(shard_dir: Path, index: Path, dim: int, budget: str | None) -> dict:
    code = f"""
import json, time
from matcher.search import shards
t = time.perf_counter()
gen = shards.build_from_shards({str(shard_dir)!r}, {str(index)!r},
    {{"spec": "synthetic", "pretrained": None, "fingerprint": "synthetic", "dim": {dim}}},
    memory_budget={budget!r})
m = json.load(open({str(index / "manifest.json")!r}))
import resource
print(json.dumps({{"seconds": time.perf_counter() - t, "search": m["search"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}}))
"""
    return _child(code)


def build_old(shard_dir: Path, rev: str) -> dict:
    old = Path(tempfile.mkdtemp()) / "ann_old.py"
    old.write_text(
        subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:matcher/ann.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    code = f"""
import json, sys, time, importlib.util
import numpy as np
spec = importlib.util.spec_from_file_location("ann_old", {str(old)!r})
ann = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ann)
from matcher.search import shards
t = time.perf_counter()
ss = shards.read_shards({str(shard_dir)!r})
x = np.concatenate([s.vectors() for s in ss])   # all vectors in memory, as store.save had them
index, info = ann.build(x, np.arange(len(x)))
import resource
print(json.dumps({{"seconds": time.perf_counter() - t, "search": info,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}}))
"""
    return _child(code)


def run(
    n: int, dim: int, budget: str | None, shard_size: int, compare_old: str | None, workdir: Path
) -> dict:
    shard_dir, index = workdir / "shards", workdir / "index"
    res: dict = {"n": n, "dim": dim, "budget": budget, "shard_size": shard_size}
    res["write_shards_s"] = round(make_shards(shard_dir, n, dim, shard_size), 1)
    res["shards_bytes"] = sum(p.stat().st_size for p in shard_dir.iterdir())
    if compare_old:
        res["old"] = build_old(shard_dir, compare_old)
        print(json.dumps({"old": res["old"]}), file=sys.stderr, flush=True)
    res["new"] = build_new(shard_dir, index, dim, budget)
    res["index_bytes"] = sum(p.stat().st_size for p in index.iterdir())
    print(json.dumps({"new": res["new"]}), file=sys.stderr, flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=279)
    ap.add_argument("--budget", default=None, help="memory budget, e.g. 4G (default: none)")
    ap.add_argument("--shard-size", type=int, default=250_000)
    ap.add_argument("--compare-old", metavar="REV", help="also build with ann.build of this git revision")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        res = run(args.n, args.dim, args.budget, args.shard_size, args.compare_old, Path(tmp))
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
