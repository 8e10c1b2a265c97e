#!/usr/bin/env python
"""Speed benchmark for matcher (issue 5): every stage against its floor, measured in the same run.

    .venv/bin/python scripts/bench.py                # full run (~10 min on 2 cores)
    .venv/bin/python scripts/bench.py --quick        # smoke run (~1 min)
    .venv/bin/python scripts/bench.py --stages search --sizes 10000,100000

Stages:
  search  exact (faiss flat) and approximate (IVF-Flat, nprobe tuned to recall@10 >= 0.99) search on
          clustered synthetic 512-d vectors, single query and batches of 1,000, against numpy brute
          force, the memory-bandwidth floor (bytes scanned / measured copy bandwidth) and, for
          batches, the compute floor (FLOPs / measured sgemm rate); peak memory of opening the
          largest index (memory-mapped and in RAM) in a fresh process.
  embed   images/s on 1080p PNG stills for classic and clip:ViT-B-32 (random-init weights): the
          pipeline (matcher.pipeline) against the decode-only floor, the model's pure forward time
          on pre-decoded tensors, and a naive one-image-at-a-time loop.
  e2e     `matcher match cel.png` wall time and peak memory on a 10k-still classic index, and
          `matcher match DIR` files/s on 1,000 files.

Prints a markdown report (pasted into docs/BENCHMARKS.md, section "Speed (issue 5)") and, with
--json, writes the raw numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIM = 512
K = 10
BATCH = 1000


# --------------------------------------------------------------------------------------------------
# helpers


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import faiss

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_simd": faiss.get_compile_options().strip(),
    }
    return info


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median_latency(fn, queries: np.ndarray) -> float:
    fn(queries[:1])  # warm
    times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def clustered(n: int, d: int = DIM, seed: int = 0, shot: int = 40, per_title: int = 20000) -> np.ndarray:
    """Synthetic embeddings shaped like a reference library: titles > shots > stills.

    Each title has a random centre, each shot (~`shot` stills) is offset from its title, each still
    is offset from its shot; rows are L2-normalised. With these scales a still's 10 nearest
    neighbours have cosine ~0.8 (same shot), as real stills of one shot do, and titles overlap,
    so IVF needs several probes to reach recall 0.99 (uniform noise would make IVF look bad,
    unrealistically separated clusters would make it look too good).
    """
    rng = np.random.default_rng(seed)
    n_titles = max(2, n // per_title)
    n_shots = max(4, n // shot)
    titles = rng.standard_normal((n_titles, d), dtype=np.float32)
    shots = titles[rng.integers(0, n_titles, n_shots)]
    shots += 0.6 * rng.standard_normal((n_shots, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    step = 1 << 16
    for a in range(0, n, step):
        b = min(n, a + step)
        x = shots[rng.integers(0, n_shots, b - a)]
        x += 0.6 * rng.standard_normal((b - a, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:b] = x
    return out


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of np.copyto on a 1 GB array, counting read + write traffic (as STREAM copy does),
    best of 5 with 1 thread and with one thread per core (copyto releases the GIL).

    Counting read+write makes the floor conservative (a scan only reads, so the floor is lower
    than a read-only floor would be).
    """
    import threading

    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)

    def run(nt: int) -> None:
        chunk = -(-len(a) // nt)
        threads = [
            threading.Thread(
                target=np.copyto, args=(b[i * chunk : (i + 1) * chunk], a[i * chunk : (i + 1) * chunk])
            )
            for i in range(nt)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    t = min(best(lambda nt=nt: run(nt), repeat=5) for nt in sorted({1, os.cpu_count() or 1}))
    return 2 * nbytes / t


def sgemm_rate() -> float:
    """FLOP/s of a large float32 matrix product (numpy / OpenBLAS, all threads)."""
    a = np.random.default_rng(0).standard_normal((1000, DIM), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((DIM, 100_000), dtype=np.float32)
    t = best(lambda: a @ b, repeat=3)
    return 2 * 1000 * DIM * 100_000 / t


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int = K, block: int = 100_000):
    """Naive brute force: matrix product then argpartition, in row blocks to bound memory."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for a in range(0, len(x), block):
        s = q @ x[a : a + block].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + a], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_s, best_i


PEAK_SNIPPET = r"""
import sys, time, resource, json, numpy as np
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from matcher import ann
index = ann.read_index(sys.argv[2], mmap=sys.argv[3] == "1")
t_open = time.perf_counter() - t0
q = np.load(sys.argv[4])
ann.search(index, q[:1], 10)
ann.search(index, q, 10)
keys = ('VmRSS', 'RssAnon', 'RssFile', 'VmHWM')
st = {l.split(':')[0]: int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(keys)}
print(json.dumps({"open_s": t_open, "maxrss_mb": st["VmHWM"], "rss_anon_mb": st.get('RssAnon', 0),
                  "rss_file_mb": st.get('RssFile', 0)}))
"""


def index_peak_memory(path: Path, queries: np.ndarray, mmap: bool) -> dict:
    qpath = path.with_suffix(".q.npy")
    np.save(qpath, queries)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SNIPPET, str(ROOT), str(path), "1" if mmap else "0", str(qpath)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# search


def bench_search(sizes: list[int], single_queries: int, workdir: Path) -> dict:
    import faiss

    from matcher import ann

    res: dict = {"threads": faiss.omp_get_max_threads()}
    bw = copy_bandwidth()
    flops = sgemm_rate()
    res["copy_bandwidth_gbs"] = bw / 1e9
    res["sgemm_gflops"] = flops / 1e9
    log(f"copy bandwidth {bw / 1e9:.1f} GB/s (read+write), sgemm {flops / 1e9:.0f} GFLOP/s")
    rows = []
    for n in sizes:
        log(f"search: n={n:,}")
        data = clustered(n + BATCH + single_queries, seed=n)
        x, queries = data[:n], data[n:]
        single = queries[BATCH:]
        batch = queries[:BATCH]
        ids = np.arange(n, dtype=np.int64)
        scan_bytes = n * DIM * 4
        floor_bw = scan_bytes / bw
        floor_flops_batch = 2 * BATCH * n * DIM / flops
        row: dict = {"n": n, "scan_mb": scan_bytes / 2**20, "bw_floor_ms": floor_bw * 1e3}

        # numpy brute force
        row["numpy_single_ms"] = median_latency(lambda q, x=x: numpy_topk(x, q), single) * 1e3
        row["numpy_batch_s"] = best(lambda x=x, b=batch: numpy_topk(x, b), repeat=1 if n >= 1_000_000 else 2)

        # exact faiss
        exact = ann.exact_index(DIM)
        exact.add_with_ids(x, ids)
        # ann.search: BLAS matrix-vector product over the stored vectors for < 20 queries
        row["exact_single_ms"] = median_latency(lambda q, i=exact: ann.search(i, q, K), single) * 1e3
        row["faiss_flat_single_ms"] = median_latency(lambda q, i=exact: i.search(q, K), single) * 1e3
        t = time.perf_counter()
        de, ie = ann.search(exact, batch, K)
        row["exact_batch_s"] = time.perf_counter() - t
        row["compute_floor_batch_s"] = floor_flops_batch
        row["bw_floor_batch_s"] = floor_bw  # one scan serves the whole batch
        if n == max(sizes):
            ann.write_index(exact, workdir / "exact.faiss")
        exact = None
        gc.collect()

        # approximate (forced, whatever the default threshold) with build-time recall
        approx, info = ann.build(x, ids, exact_max=0)
        row["approx_info"] = info
        if info["kind"] != "exact":
            row["approx_single_ms"] = median_latency(lambda q, i=approx: ann.search(i, q, K), single) * 1e3
            t = time.perf_counter()
            da, ia = ann.search(approx, batch, K)
            row["approx_batch_s"] = time.perf_counter() - t
            row["approx_recall_heldout"] = ann.recall_at_k(ia, ie, da, de)
            if n == max(sizes):
                ann.write_index(approx, workdir / "ivf.faiss")
        # what the store would build by default at this size
        row["default_kind"] = "exact" if n <= ann.DEFAULT_EXACT_MAX else info["kind"]
        approx = x = data = None
        gc.collect()
        rows.append(row)
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    res["rows"] = rows

    # peak memory of opening the largest index and answering 1,000 queries, in a fresh process
    n = max(sizes)
    q = clustered(n + BATCH, seed=n)[n:]
    mem = {"n": n}
    for name in ("exact", "ivf"):
        path = workdir / f"{name}.faiss"
        if path.exists():
            mem[name] = {
                "file_mb": path.stat().st_size / 2**20,
                "mmap": index_peak_memory(path, q, mmap=True),
                "ram": index_peak_memory(path, q, mmap=False),
            }
    res["memory"] = mem
    log(json.dumps(mem))
    return res


def report_search(res: dict) -> str:
    out = [
        f"Copy bandwidth (np.copyto, read+write): {res['copy_bandwidth_gbs']:.1f} GB/s; "
        f"sgemm: {res['sgemm_gflops']:.0f} GFLOP/s; faiss threads: {res['threads']}.",
        "",
        "Single query (k=10), median latency:",
        "",
        "| n | scanned | bandwidth floor | numpy brute force | faiss flat (1 thread) | exact (ann) "
        "| exact / floor | IVF (nlist, nprobe) | IVF | exact / IVF | recall@10 build / held-out |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        info = r["approx_info"]
        ivf = "exact fallback"
        ivf_ms = ratio = rec = "-"
        if "approx_single_ms" in r:
            ivf = f"{info['params']['nlist']}, {info['params']['nprobe']}"
            ivf_ms = f"{r['approx_single_ms']:.2f} ms"
            ratio = f"{r['exact_single_ms'] / r['approx_single_ms']:.0f}x"
            rec = f"{info['recall_at_10']:.4f} / {r['approx_recall_heldout']:.4f}"
        out.append(
            f"| {r['n']:,} | {r['scan_mb']:.0f} MB | {r['bw_floor_ms']:.2f} ms "
            f"| {r['numpy_single_ms']:.2f} ms "
            f"| {r['faiss_flat_single_ms']:.2f} ms | {r['exact_single_ms']:.2f} ms "
            f"| {r['exact_single_ms'] / r['bw_floor_ms']:.2f}x "
            f"| {ivf} | {ivf_ms} | {ratio} | {rec} |"
        )
    out += [
        "",
        f"Batch of {BATCH:,} queries (k=10), wall time:",
        "",
        "| n | compute floor | bandwidth floor | numpy brute force | faiss exact | exact / compute floor "
        "| numpy / exact | IVF | exact / IVF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ivf = ratio = "-"
        if "approx_batch_s" in r:
            ivf = f"{r['approx_batch_s']:.3f} s"
            ratio = f"{r['exact_batch_s'] / r['approx_batch_s']:.0f}x"
        out.append(
            f"| {r['n']:,} | {r['compute_floor_batch_s']:.3f} s | {r['bw_floor_batch_s']:.3f} s "
            f"| {r['numpy_batch_s']:.3f} s | {r['exact_batch_s']:.3f} s "
            f"| {r['exact_batch_s'] / r['compute_floor_batch_s']:.2f}x "
            f"| {r['numpy_batch_s'] / r['exact_batch_s']:.2f}x | {ivf} | {ratio} |"
        )
    out += ["", "IVF build (train + add + recall measurement):", ""]
    for r in res["rows"]:
        info = r["approx_info"]
        out.append(
            f"- {r['n']:,}: {info['kind']} {info.get('params', {})}, {info.get('build_seconds', 0):.1f} s"
            + (f" ({info['note']})" if info.get("note") else "")
        )
    mem = res.get("memory", {})
    if mem:
        out += [
            "",
            f"Peak memory, fresh process opening the {mem['n']:,}-vector index and answering 1 + "
            f"{BATCH:,} queries (VmHWM; RssAnon = private memory, RssFile = page cache mapped "
            "from the index file, shared and reclaimable):",
            "",
            "| index | file | open | maxrss | RssAnon | RssFile | open time |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("exact", "ivf"):
            if name not in mem:
                continue
            for how in ("mmap", "ram"):
                m = mem[name][how]
                out.append(
                    f"| {name} | {mem[name]['file_mb']:.0f} MB | {how} | {m['maxrss_mb']:.0f} MB "
                    f"| {m['rss_anon_mb']:.0f} MB | {m['rss_file_mb']:.0f} MB | {m['open_s'] * 1e3:.0f} ms |"
                )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    ap.add_argument("--stages", default="search,embed,e2e")
    ap.add_argument("--sizes", help="search sizes, comma-separated (default 10000,100000,1000000)")
    ap.add_argument("--json", type=Path, help="write raw numbers here")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 50_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    results: dict = {"machine": machine(), "quick": args.quick}
    sections = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['mem_gb']} GB RAM; numpy {results['machine']['numpy']}, faiss "
        f"{results['machine']['faiss']} ({results['machine']['faiss_simd']}); {results['machine']['date']}."
    ]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if "search" in stages:
            results["search"] = bench_search(sizes, 20 if args.quick else 50, workdir)
            sections += ["", "### Search", "", report_search(results["search"])]
    results["wall_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
