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
          pipeline (matcher.run.pipeline) against the decode-only floor, the model's pure forward time
          on pre-decoded tensors, and a naive one-image-at-a-time loop.
  e2e     `matcher match cel.png` wall time and peak memory on a 10k-still index (--model: classic,
          anim, anim+classic), and
          `matcher match DIR` files/s on 1,000 files.
  pipeline  issue 16: `index add DIR` and `match DIR` files/s (100 960x540 PNG, classic) against
          decode-only, `match cel.png` on a 1k index and its imports; with --baseline DIR (a checkout
          of an older commit) both trees, interleaved round by round.
  ray     issue 16: decode + embed of 100 960x540 PNG on the Ray executor (local cluster, 2 CPUs)
          against the local pool, with 1 and 2 decode workers.
  serve   `matcher serve` on a 10k-still classic index over loopback (issue 18): requests/s and
          p50/p95 latency of POST /match (the 1080p cel) with 1, 4 and 16 concurrent clients,
          against `match cel.png` run in a loop; server memory (with its decode workers) before
          and after 10,000 requests of a small frame (8 clients); 100 concurrent hostile uploads (bombs,
          truncated files): every request answered, server alive.

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


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (decode workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


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
try:
    from matcher.search import ann
except ImportError:  # a tree from before the search/ layout
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

    from matcher.search import ann

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
        f"Copy bandwidth (np.copyto of 1 GB, best of 1 and {os.cpu_count()} threads): "
        f"{res['copy_bandwidth_gbs'] / 2:.1f} GB/s copied (memcpy convention), "
        f"{res['copy_bandwidth_gbs']:.1f} GB/s counting read + write traffic (STREAM convention). "
        "A scan only reads, so its floor is bytes / rate; the r+w rate gives the stricter floor. "
        f"sgemm: {res['sgemm_gflops']:.0f} GFLOP/s; faiss threads: {res['threads']}.",
        "",
        "Single query (k=10), median latency:",
        "",
        "| n | scanned | floor: memcpy rate / read+write rate | numpy brute force | faiss flat (1 thread) "
        "| exact (ann) | exact / floor (memcpy / r+w) | IVF (nlist, nprobe) | IVF | exact / IVF "
        "| recall@10 build / held-out |",
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
            f"| {r['n']:,} | {r['scan_mb']:.0f} MB | {2 * r['bw_floor_ms']:.2f} / {r['bw_floor_ms']:.2f} ms "
            f"| {r['numpy_single_ms']:.2f} ms "
            f"| {r['faiss_flat_single_ms']:.2f} ms | {r['exact_single_ms']:.2f} ms "
            f"| {r['exact_single_ms'] / (2 * r['bw_floor_ms']):.2f}x "
            f"/ {r['exact_single_ms'] / r['bw_floor_ms']:.2f}x "
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
# embedding throughput


def draw_still(rng: np.random.Generator, size=(1920, 1080), palette=None):
    """A cartoon-like frame: gradient sky, flat ground, inked flat-colour shapes, some texture.

    PNG decode cost depends on content; flat colours with line art and a gradient is what animation
    frames look like (and decode a little faster than photos)."""
    from PIL import Image, ImageDraw

    w, h = size
    palette = palette if palette is not None else rng.integers(0, 256, (5, 3))
    top, bottom = palette[0].astype(np.float32), palette[1].astype(np.float32)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    im = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).copy())
    d = ImageDraw.Draw(im)
    d.rectangle([0, int(h * 0.72), w, h], fill=tuple(int(c) for c in palette[2]))
    for _ in range(14):
        x, y = int(rng.integers(0, w - w // 24)), int(rng.integers(0, h - h // 14))
        bw, bh = int(rng.integers(w // 48, w // 4)), int(rng.integers(h // 27, h // 3))
        colour = tuple(int(c) for c in palette[int(rng.integers(2, 5))])
        shape = d.ellipse if rng.random() < 0.6 else d.rectangle
        shape([x, y, x + bw, y + bh], fill=colour, outline=(12, 12, 12), width=int(rng.integers(2, 7)))
    # Film grain / encoder noise: real 1080p frames are 2-4 MB as PNG, not 20 KB.
    a = np.asarray(im, dtype=np.int16) + rng.integers(-3, 4, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write_stills(directory: Path, n: int, size=(1920, 1080), seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = directory / f"still_{i:05d}.png"
        draw_still(rng, size).save(p)
        paths.append(p)
    return paths


def _decode_only(path: str) -> int:
    # PIL alone (open, decode, RGB): the floor does not depend on where matcher keeps its decoder.
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").size[0]


def decode_floor(paths: list[Path], workers: int) -> float:
    """images/s decoding (and nothing else) with one process per core."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        list(pool.map(_decode_only, [str(p) for p in paths[:workers]]))  # start + warm
        t = time.perf_counter()
        list(pool.map(_decode_only, [str(p) for p in paths], chunksize=1))
        return len(paths) / (time.perf_counter() - t)


def random_clip(workdir: Path, arch: str = "ViT-B-32"):
    """A ClipEmbedder with random-init weights saved as a local checkpoint (the air-gapped path)."""
    import logging

    import open_clip
    import torch

    logging.getLogger().setLevel(logging.ERROR)
    ckpt = workdir / f"random-{arch}.pt"
    if not ckpt.exists():
        model = open_clip.create_model(arch, pretrained=None)
        torch.save(model.state_dict(), ckpt)
        del model
    from matcher.embed.clip import ClipEmbedder

    return ClipEmbedder(arch, pretrained=str(ckpt), models_dir=workdir)


def bench_embed(n_images: int, workdir: Path, which: list[str]) -> dict:
    from matcher.decode.decoder import open_image
    from matcher.run.pipeline import default_workers, embed_stills

    cores = os.cpu_count() or 1
    log(f"embed: writing {n_images} 1080p PNG stills")
    paths = write_stills(workdir / "stills", n_images)
    res: dict = {"n_images": n_images, "size": "1920x1080 PNG"}
    res["png_mb_avg"] = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
    res["decode_floor"] = decode_floor(paths, cores)
    log(f"decode floor {res['decode_floor']:.1f} img/s")
    decoded = [open_image(p) for p in paths[: min(len(paths), 16)]]
    rows = {}
    for name in which:
        if name == "classic":
            from matcher.embed.classic import ClassicEmbedder

            emb = ClassicEmbedder()
            emb.embed(decoded[:2])
            per_core = len(decoded) / best(lambda e=emb: e.embed(decoded), repeat=3)
            model_floor = per_core * cores  # pure numpy, one core per image: scales with cores
            model_note = f"embed() on decoded images, {per_core:.1f}/s per core x {cores} cores"
        else:
            import torch

            emb = random_clip(workdir)
            torch.set_num_threads(cores)
            arrays = [emb.prepare(im) for im in decoded]
            bs = 32
            batch = (arrays * (bs // len(arrays) + 1))[:bs]
            emb.embed_prepared(batch)
            model_floor = bs / best(lambda e=emb, b=batch: e.embed_prepared(b), repeat=3)
            model_note = f"forward on pre-decoded batches of {bs}, {cores} torch threads"
        # naive: decode + embed one image at a time, one thread
        if name != "classic":
            torch.set_num_threads(1)
        n_naive = min(len(paths), 24 if name == "classic" else 12)
        emb.embed([open_image(paths[0])])
        t, c = time.perf_counter(), cpu_seconds()
        for p in paths[:n_naive]:
            emb.embed([open_image(p)])
        naive = n_naive / (time.perf_counter() - t)
        naive_cpu = (cpu_seconds() - c) / n_naive
        if name != "classic":
            torch.set_num_threads(cores)
        # the pipeline, as Matcher.add / match_many run it
        list(embed_stills(paths[: 2 * cores], emb))  # warm (fork, first batch)
        t, c = time.perf_counter(), cpu_seconds()
        out = list(embed_stills(paths, emb))
        pipe = len(out) / (time.perf_counter() - t)
        pipe_cpu = (cpu_seconds() - c) / len(out)
        assert all(e.vector is not None for e in out)
        dec, mod = res["decode_floor"], model_floor
        rows[name] = {
            "model_floor": mod,
            "model_note": model_note,
            "naive": naive,
            "pipeline": pipe,
            "workers": default_workers(emb),
            "naive_cpu_ms": naive_cpu * 1e3,
            "pipeline_cpu_ms": pipe_cpu * 1e3,
            "load_avg": os.getloadavg()[0],
            # both stages are CPU work on the same cores: the best possible is the harmonic sum
            "shared_core_bound": 1 / (1 / dec + 1 / mod),
            "max_floor_bound": min(dec, mod),
        }
        log(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k != 'model_note'})}")
    res["rows"] = rows
    return res


def report_embed(res: dict) -> str:
    out = [
        f"{res['n_images']} stills, {res['size']} (avg {res['png_mb_avg']:.1f} MB). "
        "Decode-only floor (Pillow, one process per core): "
        f"**{res['decode_floor']:.1f} img/s**.",
        "",
        "| embedder (decode workers) | naive loop | pipeline | pipeline / naive | model floor "
        "| bound: min(decode, model) "
        "| bound / pipeline | shared-core bound | shared-core bound / pipeline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        out.append(
            f"| {name} ({r['workers']}) | {r['naive']:.1f} img/s | {r['pipeline']:.1f} img/s "
            f"| {r['pipeline'] / r['naive']:.2f}x "
            f"| {r['model_floor']:.1f} img/s | {r['max_floor_bound']:.1f} img/s "
            f"| {r['max_floor_bound'] / r['pipeline']:.2f}x | {r['shared_core_bound']:.1f} img/s "
            f"| {r['shared_core_bound'] / r['pipeline']:.2f}x |"
        )
    out += [
        "",
        "CPU time per image (this process + decode workers; independent of how busy the machine is):",
        "",
        "| embedder | naive loop | pipeline | pipeline / naive | load average during the run |",
        "|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        out.append(
            f"| {name} | {r['naive_cpu_ms']:.0f} ms | {r['pipeline_cpu_ms']:.0f} ms "
            f"| {r['pipeline_cpu_ms'] / r['naive_cpu_ms']:.2f}x | {r['load_avg']:.1f} |"
        )
    out.append("")
    for name, r in res["rows"].items():
        out.append(f"- {name} model floor: {r['model_note']}.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# end to end

E2E_SNIPPET = r"""
import os, resource, runpy, sys, time
sys.argv = ["matcher"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("matcher.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
st = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')}
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"\nPEAK {st['VmHWM'] / 1024:.1f} {kids / 1024:.1f}\n")
sys.exit(code)
"""


def run_cli(args: list[str], pycache: Path | None = None, cwd: Path = ROOT) -> dict:
    """Run the CLI in a fresh interpreter. With `pycache`, bytecode is cached there (as an installed
    package has it: pip, or uv with --compile-bytecode); without, every module is compiled from
    source on each start when PYTHONDONTWRITEBYTECODE is set and the venv has no .pyc files."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", E2E_SNIPPET, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - t
    peak = [ln for ln in out.stderr.splitlines() if ln.startswith("PEAK ")]
    main_mb, kids_mb = (float(x) for x in peak[-1].split()[1:3]) if peak else (float("nan"), float("nan"))
    if out.returncode != 0:
        raise RuntimeError(f"matcher {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
    return {"wall_s": wall, "peak_mb": main_mb, "workers_peak_mb": kids_mb, "stdout": out.stdout}


def build_classic_index(root: Path, n: int, titles: int = 10, model: str = "classic") -> Path:
    """An index of n stills over `titles` productions (small drawn frames, each title with its own
    palette), built through the public API."""
    from matcher.api import Matcher

    rng = np.random.default_rng(7)
    m = Matcher.create(root / "index", model=model)
    per = n // titles
    for t in range(titles):
        palette = rng.integers(0, 256, (5, 3))
        images = [draw_still(rng, (192, 108), palette) for _ in range(per)]
        m.add(images, title=f"Title {t:02d}", names=[f"t{t}/{i}" for i in range(per)])
        log(f"  index: {m.store.count} stills")
    m.close()
    return root / "index"


def bench_e2e(workdir: Path, n_index: int, n_files: int, model: str = "classic") -> dict:
    # A snapshot of the package: the index build and every CLI run use the same code even if the
    # working tree changes during the run (a changed classic descriptor makes the index unusable).
    import shutil

    snap = workdir / "snapshot"
    shutil.copytree(ROOT / "matcher", snap / "matcher", ignore=shutil.ignore_patterns("__pycache__"))
    log(f"e2e: building a {n_index}-still {model} index")
    t = time.perf_counter()
    build_index_in(snap, workdir, n_index, model)
    index = workdir / "index"
    res: dict = {"n_index": n_index, "build_s": time.perf_counter() - t, "model": model}
    cel = workdir / "cel.png"
    draw_still(np.random.default_rng(123), (1920, 1080)).save(cel)
    # floor: the interpreter itself
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    res["python_start_s"] = time.perf_counter() - t
    pyc = workdir / "pycache"
    args = ["match", str(cel), "--index", str(index)]
    run_cli(args, pyc, snap)  # writes the bytecode cache
    best_run = min((run_cli(args, pyc, snap) for _ in range(3)), key=lambda r: r["wall_s"])
    res["match_one"] = {k: v for k, v in best_run.items() if k != "stdout"}
    cold = min((run_cli(args, None, snap) for _ in range(2)), key=lambda r: r["wall_s"])
    res["match_one_no_pyc"] = {k: v for k, v in cold.items() if k != "stdout"}
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "PYTHONPYCACHEPREFIX": str(pyc),
    }
    cmd = [sys.executable, "-c", "import matcher.cli, faiss"]
    res["import_s"] = best(lambda: subprocess.run(cmd, check=True, cwd=snap, env=env), repeat=3)
    log(f"match cel.png: {res['match_one']} (no bytecode cache: {res['match_one_no_pyc']['wall_s']:.2f} s)")
    files = write_stills(workdir / "dump", n_files, size=(960, 540), seed=5)
    res["n_files"] = n_files
    res["dump_decode_floor"] = decode_floor(files, os.cpu_count() or 1)
    r = run_cli(["match", str(workdir / "dump"), "--index", str(index)], pyc, snap)
    res["match_dir"] = {k: v for k, v in r.items() if k != "stdout"}
    res["match_dir"]["lines"] = len(r["stdout"].splitlines()) - 1
    res["match_dir"]["files_per_s"] = n_files / r["wall_s"]
    log(f"match DIR: {res['match_dir']}")
    return res


def report_e2e(res: dict) -> str:
    one, d = res["match_one"], res["match_dir"]
    return "\n".join(
        [
            f"{res.get('model', 'classic')} index of {res['n_index']:,} stills (10 titles), built through "
            "`Matcher.add` in "
            f"{res['build_s']:.0f} s.",
            "",
            "| command | wall | floor | peak RSS (main / worker) |",
            "|---|---|---|---|",
            f"| `matcher match cel.png` (1080p PNG) | **{one['wall_s']:.2f} s** | python start "
            f"{res['python_start_s']:.2f} s; + imports (matcher.cli, faiss) {res['import_s']:.2f} s "
            f"| {one['peak_mb']:.0f} MB / - |",
            f"| same, no bytecode cache (PYTHONDONTWRITEBYTECODE=1, venv without .pyc) "
            f"| {res['match_one_no_pyc']['wall_s']:.2f} s | "
            f"| {res['match_one_no_pyc']['peak_mb']:.0f} MB / - |",
            f"| `matcher match DIR` ({res['n_files']:,} 960x540 PNG) | {d['wall_s']:.1f} s = "
            f"**{d['files_per_s']:.1f} files/s** | decode-only {res['dump_decode_floor']:.1f} files/s "
            f"({res['dump_decode_floor'] / d['files_per_s']:.2f}x) | {d['peak_mb']:.0f} MB / "
            f"{d['workers_peak_mb']:.0f} MB |",
        ]
    )


# --------------------------------------------------------------------------------------------------
# pipeline: before/after of the one-pipeline redesign (issue 16), interleaved in one run


def build_index_in(tree: Path, workdir: Path, n_index: int, model: str = "classic") -> None:
    """build_classic_index in a child process that imports matcher from `tree` (a snapshot of this
    checkout or of a baseline), writing workdir/index."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('benchmod', {str(Path(__file__).resolve())!r})\n"
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
        f"sys.path = [p for p in sys.path if p != {str(ROOT)!r}]\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        f"b.build_classic_index(b.Path({str(workdir)!r}), {n_index}, model={model!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tree, check=True)


def _snapshot(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src / "matcher", dest / "matcher", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def bench_pipeline(workdir: Path, baseline: Path | None, n_index: int, n_files: int, rounds: int) -> dict:
    """files/s of `index add DIR` and `match DIR` (960x540 PNG, classic) against the decode-only
    rate on the same files, `match cel.png` on an n_index index and the import time, for this tree
    and (with --baseline, a checkout of an older commit) the baseline, interleaved round by round so
    both see the same machine load."""
    trees = {"after": _snapshot(ROOT, workdir / "after")}
    if baseline is not None:
        trees = {"before": _snapshot(baseline, workdir / "before"), **trees}
    first = next(iter(trees.values()))
    log(f"pipeline: building a {n_index}-still classic index")
    build_index_in(first, workdir, n_index)
    index = workdir / "index"
    cel = workdir / "cel.png"
    draw_still(np.random.default_rng(123), (1920, 1080)).save(cel)
    files = write_stills(workdir / "dir", n_files, size=(960, 540), seed=5)
    res: dict = {"n_index": n_index, "n_files": n_files, "rounds": rounds, "trees": {}}
    decode = []
    for r in range(rounds):
        decode.append(decode_floor(files, os.cpu_count() or 1))
        for name, snap in trees.items():
            pyc = workdir / f"pycache-{name}"
            env = {
                **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                "PYTHONPYCACHEPREFIX": str(pyc),
            }
            one_args = ["match", str(cel), "--index", str(index)]
            run_cli(one_args, pyc, snap)  # bytecode cache + page cache
            one = min(run_cli(one_args, pyc, snap)["wall_s"] for _ in range(3))
            imp = best(
                lambda snap=snap, env=env: subprocess.run(
                    [sys.executable, "-c", "import matcher.cli, faiss"], check=True, cwd=snap, env=env
                ),
                repeat=3,
            )
            m = run_cli(["match", str(workdir / "dir"), "--index", str(index)], pyc, snap)
            new_index = workdir / f"new-{name}-{r}"
            a = run_cli(
                ["index", "add", str(workdir / "dir"), "--title", "T", "--index", str(new_index)], pyc, snap
            )
            row = res["trees"].setdefault(
                name, {"match_one_s": [], "import_s": [], "match_dir_fps": [], "add_fps": []}
            )
            row["match_one_s"].append(one)
            row["import_s"].append(imp)
            row["match_dir_fps"].append(n_files / m["wall_s"])
            row["add_fps"].append(n_files / a["wall_s"])
            log(
                f"round {r} {name}: one {one:.2f} s, import {imp:.2f} s, "
                f"match DIR {n_files / m['wall_s']:.1f} files/s, "
                f"index add {n_files / a['wall_s']:.1f} files/s, decode-only {decode[-1]:.1f}"
            )
    res["decode_fps"] = decode
    return res


def report_pipeline(res: dict) -> str:
    dec = statistics.median(res["decode_fps"])
    lines = [
        f"{res['n_files']} 960x540 PNG, classic; `match cel.png` on a {res['n_index']:,}-still index; "
        f"median of {res['rounds']} interleaved rounds; decode-only {dec:.1f} files/s.",
        "",
        "| tree | `index add DIR` files/s (x decode) | `match DIR` files/s (x decode) "
        "| `match cel.png` | imports |",
        "|---|---|---|---|---|",
    ]
    for name, row in res["trees"].items():
        add, md = statistics.median(row["add_fps"]), statistics.median(row["match_dir_fps"])
        lines.append(
            f"| {name} | {add:.1f} ({dec / add:.2f}x) | {md:.1f} ({dec / md:.2f}x) | "
            f"{statistics.median(row['match_one_s']):.2f} s | {statistics.median(row['import_s']):.2f} s |"
        )
    return "\n".join(lines)


def bench_ray(workdir: Path, n_files: int) -> dict:
    """The Ray executor against the local pool on the same files (decode + embed, classic), in
    this process: a local Ray with 2 CPUs started once (its start-up is reported apart), then each
    engine run twice, best time; Ray with 1 and 2 decode workers."""
    import ray

    from matcher.embed import create_embedder
    from matcher.run.pipeline import embed_stills

    d = workdir / "raydir"
    if not d.exists():
        write_stills(d, n_files, size=(960, 540), seed=5)
    embedder = create_embedder("classic")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    res: dict = {"n_files": n_files, "ray_init_s": time.perf_counter() - t}

    def run(engine: str, workers: int) -> float:
        def once():
            n = sum(1 for e in embed_stills([d], embedder, engine=engine, workers=workers) if e.error is None)
            assert n == n_files, n

        return best(once, repeat=2)

    res["local_s"] = run("local", 2)
    res["ray_2_s"] = run("ray", 2)
    res["ray_1_s"] = run("ray", 1)
    res["local_again_s"] = run("local", 2)
    ray.shutdown()
    log(f"ray: {res}")
    return res


def report_ray(res: dict) -> str:
    local = min(res["local_s"], res["local_again_s"])
    n = res["n_files"]
    return "\n".join(
        [
            f"Decode + embed of {n} 960x540 PNG (classic), in one process; Ray local cluster "
            f"(`ray.init(num_cpus=2)`, started once in {res['ray_init_s']:.0f} s, not counted below).",
            "",
            "| engine | wall | files/s | vs local |",
            "|---|---|---|---|",
            f"| local pool, 2 workers | {local:.1f} s | {n / local:.1f} | 1.00x |",
            f"| Ray, 2 decode workers | {res['ray_2_s']:.1f} s | {n / res['ray_2_s']:.1f} "
            f"| {res['ray_2_s'] / local:.2f}x |",
            f"| Ray, 1 decode worker | {res['ray_1_s']:.1f} s | {n / res['ray_1_s']:.1f} "
            f"| {res['ray_1_s'] / local:.2f}x |",
        ]
    )


# --------------------------------------------------------------------------------------------------
# serve: matcher serve over loopback


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "matcherbench" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(conn, body: bytes, ctype: str) -> tuple[int, bytes]:
    conn.request("POST", "/match", body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _load(port: int, body: bytes, ctype: str, clients: int, requests_each: int) -> dict:
    """`clients` threads, each on its own keep-alive connection, posting back to back."""
    import http.client
    import threading

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = []
        for _ in range(requests_each):
            t = time.perf_counter()
            try:
                status, _ = _post(conn, body, ctype)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                status = -1
            mine.append(time.perf_counter() - t)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    lat = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "wall_s": wall,
        "rps": len(lat) / wall,
        "p50_s": lat[len(lat) // 2],
        "p95_s": lat[min(len(lat) - 1, int(len(lat) * 0.95))],
        "statuses": statuses,
    }


def _tree_rss_mb(pid: int) -> dict:
    """RSS of a process and of its children (the decode workers), from /proc."""

    def rss(p: int) -> float:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(rss(int(d.name)))
            except (OSError, ValueError, IndexError):
                pass
    return {"server_mb": rss(pid), "workers_mb": sum(kids), "workers": len(kids)}


def _hostile_uploads() -> list[tuple[str, bytes]]:
    """Bombs, truncated and corrupt files: what an adversary posts (tests/_hostile.py's kinds)."""
    import io
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb_png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    gif = io.BytesIO()
    Image.new("P", (1, 1)).save(gif, format="GIF")
    bomb_gif = bytearray(gif.getvalue())
    bomb_gif[6:10] = struct.pack("<HH", 12000, 12000)  # 144 Mpx: over the 80 Mpx limit
    good = io.BytesIO()
    draw_still(np.random.default_rng(3), (640, 360)).save(good, format="PNG")
    jpg = io.BytesIO()
    draw_still(np.random.default_rng(4), (640, 360)).save(jpg, format="JPEG")
    g = good.getvalue()
    # a PNG whose IDAT inflates to 1 GB of zeros while its header claims only 9 Mpx
    zeros = zlib.compressobj(9)
    idat = b"".join(zeros.compress(b"\0" * (1 << 24)) for _ in range(64)) + zeros.flush()
    zip_bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 3000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    kinds = [
        ("bomb.png", bomb_png),
        ("bomb.gif", bytes(bomb_gif)),
        ("inflate-bomb.png", zip_bomb),
        ("truncated.png", g[: len(g) // 2]),
        ("truncated.jpg", jpg.getvalue()[:900]),
        ("corrupt.png", g[:40] + bytes(range(256)) * 8),
        ("fake.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200),
        ("empty.png", b""),
        ("text.png", b"not an image\n" * 10),
        ("good.png", g),
    ]
    return [kinds[i % len(kinds)] for i in range(100)]


def bench_serve(workdir: Path, n_index: int, requests_per_level: int, soak: int) -> dict:
    import http.client
    import io
    import shutil
    import socket
    import threading

    snap = workdir / "snapshot-serve"
    shutil.copytree(ROOT / "matcher", snap / "matcher", ignore=shutil.ignore_patterns("__pycache__"))
    index = workdir / "index"
    res: dict = {"n_index": n_index}
    if not (index / "manifest.json").exists():
        log(f"serve: building a {n_index}-still classic index")
        t = time.perf_counter()
        code = (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('benchmod', {str(Path(__file__).resolve())!r})\n"
            "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
            f"sys.path = [p for p in sys.path if p != {str(ROOT)!r}]\n"
            f"sys.path.insert(0, {str(snap)!r})\n"
            f"b.build_classic_index(b.Path({str(workdir)!r}), {n_index})\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=snap, check=True)
        res["build_s"] = time.perf_counter() - t
    cel = workdir / "cel.png"
    draw_still(np.random.default_rng(123), (1920, 1080)).save(cel)
    res["cel_bytes"] = cel.stat().st_size
    pyc = workdir / "pycache"
    args = ["match", str(cel), "--index", str(index)]
    run_cli(args, pyc, snap)  # bytecode cache, as an installed package has it
    loop = [run_cli(args, pyc, snap)["wall_s"] for _ in range(10)]
    res["cli_loop"] = {"runs": len(loop), "rps": len(loop) / sum(loop), "p50_s": statistics.median(loop)}
    log(f"serve: match cel.png in a loop: {res['cli_loop']}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pyc)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-m", "matcher.cli", "serve", "--index", str(index), "--port", str(port)]
    cmd += ["--review-log", str(workdir / "reviews.jsonl"), "--workers", str(os.cpu_count() or 2)]
    # the server's stderr goes to a file: a pipe nobody reads would stall it once full
    server_log = open(workdir / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(cmd, cwd=snap, env=env, stderr=server_log, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (workdir / "serve.log").read_text()[-2000:]
                    raise RuntimeError(f"serve did not start: {log_text}") from None
                time.sleep(0.3)
        body, ctype = _multipart("cel.png", cel.read_bytes())
        _load(port, body, ctype, 2, 5)  # warm-up
        res["levels"] = []
        for clients in (1, 4, 16):
            r = _load(port, body, ctype, clients, max(2, requests_per_level // clients))
            log(f"serve: {clients} clients: {r}")
            res["levels"].append(r)

        small = io.BytesIO()
        draw_still(np.random.default_rng(9), (320, 180)).save(small, format="PNG")
        sbody, sctype = _multipart("small.png", small.getvalue())
        _load(port, sbody, sctype, 4, 50)
        res["mem_before"] = _tree_rss_mb(server.pid)
        half = _load(port, sbody, sctype, 8, soak // 16)
        res["mem_half"] = _tree_rss_mb(server.pid)
        rest = _load(port, sbody, sctype, 8, soak // 16)
        res["mem_after"] = _tree_rss_mb(server.pid)
        res["soak"] = {
            "requests": half["requests"] + rest["requests"],
            "rps": (half["requests"] + rest["requests"]) / (half["wall_s"] + rest["wall_s"]),
            "statuses": {
                k: half["statuses"].get(k, 0) + rest["statuses"].get(k, 0)
                for k in {*half["statuses"], *rest["statuses"]}
            },
        }
        log(f"serve: soak {res['soak']}; memory {res['mem_before']} -> {res['mem_after']}")

        uploads = _hostile_uploads()
        answers: list = [None] * len(uploads)

        def hostile(i: int) -> None:
            name, data = uploads[i]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            try:
                status, raw = _post(conn, *_multipart(name, data))
                answers[i] = (name, status, json.loads(raw))
            except Exception as e:  # noqa: BLE001 - a missing answer is what is measured
                answers[i] = (name, None, str(e))
            finally:
                conn.close()

        t = time.perf_counter()
        threads = [threading.Thread(target=hostile, args=(i,)) for i in range(len(uploads))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        by_kind: dict = {}
        for name, status, _ in answers:
            by_kind.setdefault(name, {}).setdefault(str(status), 0)
            by_kind[name][str(status)] += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/health")
        health = conn.getresponse()
        alive = health.status == 200 and json.loads(health.read())["status"] == "ok"
        after = _load(port, body, ctype, 1, 3)
        res["hostile"] = {
            "requests": len(uploads),
            "answered": sum(1 for a in answers if a[1] is not None),
            "wall_s": time.perf_counter() - t,
            "by_kind": by_kind,
            "alive": alive and server.poll() is None,
            "match_after": after["statuses"],
        }
        log(f"serve: hostile {res['hostile']}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    # anything the server logged (uvicorn prints a traceback for every 500) is a finding
    res["server_log_tracebacks"] = (workdir / "serve.log").read_text().count("Traceback")
    return res


def report_serve(res: dict) -> str:
    cli = res["cli_loop"]
    rows = [
        f"`matcher serve` on a classic index of {res['n_index']:,} stills, loopback, POST /match of a "
        f"1920x1080 PNG ({res['cel_bytes'] / 1e6:.1f} MB), each client on a keep-alive connection "
        "posting back to back; the server's own decode workers, one per core.",
        "",
        "| clients | requests | requests/s | p50 | p95 | answers |",
        "|---|---|---|---|---|---|",
        f"| `match cel.png` in a loop (new process each) | {cli['runs']} | {cli['rps']:.2f} | "
        f"{cli['p50_s'] * 1000:.0f} ms | - | - |",
    ]
    for r in res["levels"]:
        rows.append(
            f"| {r['clients']} | {r['requests']} | **{r['rps']:.2f}** | {r['p50_s'] * 1000:.0f} ms | "
            f"{r['p95_s'] * 1000:.0f} ms | {r['statuses']} |"
        )
    m0, m1, m2 = res["mem_before"], res["mem_half"], res["mem_after"]
    soak = res["soak"]
    h = res["hostile"]
    rows += [
        "",
        f"Memory over {soak['requests']:,} requests (320x180 PNG, 8 clients, {soak['rps']:.1f} requests/s, "
        f"answers {soak['statuses']}): server {m0['server_mb']:.0f} -> {m1['server_mb']:.0f} -> "
        f"{m2['server_mb']:.0f} MB RSS (start / half-way / end), decode workers "
        f"({m2['workers']}) {m0['workers_mb']:.0f} -> {m1['workers_mb']:.0f} -> {m2['workers_mb']:.0f} MB.",
        "",
        f"{h['requests']} concurrent hostile uploads: {h['answered']} answered in {h['wall_s']:.1f} s; "
        f"server alive afterwards: {'yes' if h['alive'] else 'NO'} (next matches: {h['match_after']}); "
        f"tracebacks in the server's log over the whole run: {res['server_log_tracebacks']}.",
        "",
        "| upload | answers (HTTP status: count) |",
        "|---|---|",
    ]
    rows += [f"| {k} | {v} |" for k, v in sorted(h["by_kind"].items())]
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    ap.add_argument("--stages", default="search,embed,e2e", help="any of search,embed,e2e,serve,scale")
    ap.add_argument("--sizes", help="search sizes, comma-separated (default 10000,100000,1000000)")
    ap.add_argument("--json", type=Path, help="write raw numbers here")
    ap.add_argument("--no-clip", action="store_true", help="skip clip:ViT-B-32 in the embed stage")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    ap.add_argument("--baseline", type=Path, help="pipeline stage: a checkout to time against this tree")
    ap.add_argument("--rounds", type=int, default=3, help="pipeline stage: interleaved rounds")
    ap.add_argument("--model", default="classic", help="e2e: the index's model (classic, anim, anim+classic)")
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
        if "embed" in stages:
            which = ["classic", "clip"] if not args.no_clip else ["classic"]
            results["embed"] = bench_embed(16 if args.quick else 96, workdir, which)
            sections += ["", "### Embedding throughput", "", report_embed(results["embed"])]
        if "e2e" in stages:
            n_idx, n_files = (1000, 100) if args.quick else (10_000, 1000)
            results["e2e"] = bench_e2e(workdir, n_idx, n_files, model=args.model)
            sections += ["", "### End to end", "", report_e2e(results["e2e"])]
        if "pipeline" in stages:
            results["pipeline"] = bench_pipeline(workdir, args.baseline, 1000, 100, args.rounds)
            sections += ["", "### One pipeline (issue 16)", "", report_pipeline(results["pipeline"])]
        if "ray" in stages:
            results["ray"] = bench_ray(workdir, 100)
            sections += ["", "### Ray executor (issue 16)", "", report_ray(results["ray"])]
        if "serve" in stages:
            n = 1000 if args.quick else 10_000
            soak = 1000 if args.quick else 10_000
            results["serve"] = bench_serve(workdir, n, 16 if args.quick else 96, soak)
            sections += ["", "### matcher serve (issue 18)", "", report_serve(results["serve"])]
        if "scale" in stages:
            # index building at scale (issue 16): shards on disk -> index, peak RSS, today vs after
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import bench_scale

            n = 100_000 if args.quick else 1_000_000
            results["scale"] = bench_scale.run(n, 279, None, 250_000, "a4bd21b", workdir)
            sections += [
                "",
                "### Index building at scale",
                "",
                "```",
                json.dumps(results["scale"], indent=1),
                "```",
            ]
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
