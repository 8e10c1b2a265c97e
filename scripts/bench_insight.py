#!/usr/bin/env python
"""Dump insight benchmark (issue 17): does group evidence lift sketch / grey / notes files, does it
attribute distractors, how pure are the clusters of unknown files, and what do grouping and
clustering cost at 10k and 100k files.

    .venv/bin/python scripts/bench_insight.py accuracy [--limit N]   # benchmark set (cached)
    .venv/bin/python scripts/bench_insight.py scale 10000 100000      # synthetic embeddings

The dump: every ``seen`` item of scripts/bench_dataset.py (a frame 1-2 frames or one sibling away
from an indexed still) appears in seven states (final = the item itself, line-art, grey, notes,
cel, 60% crop, JPEG q25; scripts/bench_transforms.py), every distractor of a production that is not
indexed (freedroidrpg, photos) in four (final, line-art, grey, notes), and every ``unseen`` item
once (unrelated files of the indexed productions). The files are embedded by the index's own
embedder and scored by its own scorer (as `matcher match DUMP --out` does); the post-pass is
`matcher.insight.postpass.compute`, the very function the dump run calls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_accuracy  # noqa: E402
import bench_dataset  # noqa: E402
import fetch_data  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402

SHOT_STATES = ["clean", "lineart", "gray", "notes", "cel", "crop60", "jpeg25"]
DISTRACTOR_STATES = ["clean", "lineart", "gray", "notes"]


def build_dump(items: list[dict], limit: int) -> list[dict]:
    per: Counter = Counter()
    files = []
    for n, it in enumerate(items):
        role = it["role"]
        if role == "ref":
            continue
        per[(role, it["title"])] += 1
        if limit and per[(role, it["title"])] > limit:
            continue
        states = {"seen": SHOT_STATES, "distractor": DISTRACTOR_STATES, "unseen": ["clean"]}[role]
        for s in states:
            files.append(
                {
                    "path": f"{role}/{it['title']}/{n}/{s}",
                    "sha256": f"{n:032x}{len(s):032x}",
                    "role": role,
                    "production": it["title"],
                    "truth": None if role == "distractor" else it["title"],
                    "state": s,
                    "shot": n,
                    "image": TRANSFORMS[s](it["image"], (n * 1009 + len(s)) & 0xFFFFFFFF),
                }
            )
    return files


def accuracy(limit: int) -> str:
    from sklearn.metrics import adjusted_rand_score

    from matcher import Matcher
    from matcher.insight import groups as grp
    from matcher.insight.postpass import compute

    data = fetch_data.fetch_all()
    items = bench_accuracy.load_items(bench_dataset.build(data))
    refs = [it for it in items if it["role"] == "ref"]
    files = build_dump(items, limit)
    with tempfile.TemporaryDirectory(prefix="bench-insight-") as tmp:
        m = Matcher.create(Path(tmp) / "index", model="classic")
        t0 = time.perf_counter()
        bench_accuracy.add_references(m, refs)
        print(f"index: {len(refs)} refs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        vecs = bench_accuracy.embed_queries(m.embedder, files)
        results = m.match_vectors(vecs)
        threshold = float(m.info()["threshold"])
        for row, (f, r) in enumerate(zip(files, results)):
            f["row"] = row
            f["status"] = "matched" if r.title else "unknown"
            f["title"] = r.title
            f["confidence"] = float(r.confidence)
            f["top1"] = r.candidates[0].title if r.candidates else None
        t0 = time.perf_counter()
        cal = grp.calibrate_edges(m.store, m.embedder.coverage)
        group_recs, cluster_recs = compute(files, vecs, cal, threshold, coverage=m.embedder.coverage)
        t_post = time.perf_counter() - t0
        m.close()
    by_path = {f["path"]: f for f in files}
    for g in group_recs:
        known = any(
            by_path[x["path"]]["role"] != "distractor" and x["status"] == "matched" for x in g["members"]
        )
        for x in g["members"]:
            f = by_path[x["path"]]
            f["group"], f["group_title"], f["group_with_known"] = g["group"], x["group_title"], known
    lines = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared), no GPU; classic embedder, {len(refs)} references, "
        f"{len(files)} dump files; edge threshold {cal.threshold:.3f} (recall {cal.recall:.1%} of probe "
        f"pairs, {cal.false_link:.1%} cross-title false links), {len(group_recs)} groups, "
        f"{len(cluster_recs)} clusters; post-pass {t_post:.1f}s.",
        "",
        "| state | files | top-1 own | top-1 with group | decision own | decision with group |",
        "|---|---|---|---|---|---|",
    ]
    for s in SHOT_STATES:
        fs = [f for f in files if f["role"] == "seen" and f["state"] == s]
        if not fs:
            continue
        own_top = np.mean([f["top1"] == f["truth"] for f in fs])
        grp_top = np.mean([(f.get("group_title") or f["top1"]) == f["truth"] for f in fs])
        own_dec = np.mean([f["title"] == f["truth"] for f in fs])
        grp_dec = np.mean([(f["title"] or f.get("group_title")) == f["truth"] for f in fs])
        lines.append(f"| {s} | {len(fs)} | {own_top:.1%} | {grp_top:.1%} | {own_dec:.1%} | {grp_dec:.1%} |")
    dis = [f for f in files if f["role"] == "distractor"]
    fa_own = np.mean([f["title"] is not None for f in dis])
    fa_grp = np.mean([(f["title"] or f.get("group_title")) is not None for f in dis])
    with_known = np.mean([bool(f.get("group_with_known")) for f in dis])
    wrong = [f for f in files if f["role"] != "distractor" and f["title"] is None and f.get("group_title")]
    wrong_n = sum(f["group_title"] != f["truth"] for f in wrong)
    lines += [
        "",
        f"Distractor files ({len(dis)}): given a title by their own verdict {fa_own:.1%}, with group "
        f"evidence {fa_grp:.1%}; grouped with a matched known frame {with_known:.1%}. Files of indexed "
        f"productions that only the group titled: {len(wrong)}, {wrong_n} of them with a wrong title.",
    ]
    # clusters: truth = the production of each clustered file
    label = {x["path"]: c["cluster"] for c in cluster_recs for x in c["members"]}
    unexplained = [f for f in files if f["status"] == "unknown" and not f.get("group_title")]
    clustered = [f for f in unexplained if f["path"] in label]
    purity = (
        sum(
            Counter(f["production"] for f in clustered if label[f["path"]] == c).most_common(1)[0][1]
            for c in set(label.values())
        )
        / len(clustered)
        if clustered
        else 0.0
    )
    dis_un = [f for f in unexplained if f["role"] == "distractor"]
    ari = adjusted_rand_score(
        [f["production"] for f in dis_un], [label.get(f["path"], -1 - i) for i, f in enumerate(dis_un)]
    )
    # FAISS k-means with the true number of productions (an oracle k HDBSCAN does not get)
    import faiss

    from matcher.insight.clusters import reduce

    k = len({f["production"] for f in unexplained})
    x = reduce(np.stack([vecs[f["row"]] for f in unexplained])).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=1)
    km.train(x)
    pos = {f["path"]: i for i, f in enumerate(unexplained)}
    _, kl = km.index.search(x, 1)
    km_ari = adjusted_rand_score(
        [f["production"] for f in dis_un], [int(kl[pos[f["path"]], 0]) for f in dis_un]
    )
    km_purity = sum(
        Counter(f["production"] for f, c in zip(unexplained, kl[:, 0]) if c == j).most_common(1)[0][1]
        for j in set(kl[:, 0].tolist())
    ) / len(unexplained)
    # HDBSCAN's one setting, on the same unexplained files (the post-pass uses MIN_CLUSTER_SIZE)
    from matcher.insight.clusters import cluster_units

    xs = np.stack([vecs[f["row"]] for f in unexplained])
    sweep = []
    for mcs in (3, 5, 10, 20):
        lab = cluster_units(xs, mcs)
        d_lab = [
            int(lab[pos[f["path"]]]) if lab[pos[f["path"]]] >= 0 else -1 - i for i, f in enumerate(dis_un)
        ]
        ok = lab >= 0
        pur = sum(
            Counter(unexplained[i]["production"] for i in np.flatnonzero(lab == c)).most_common(1)[0][1]
            for c in set(lab[ok].tolist())
        ) / max(1, ok.sum())
        ari_m = adjusted_rand_score([f["production"] for f in dis_un], d_lab)
        sweep.append(
            f"min_cluster_size {mcs}: {lab.max() + 1} clusters, {ok.mean():.0%} clustered, "
            f"purity {pur:.1%}, ARI {ari_m:.3f}"
        )
    lines += [
        "",
        f"Clusters of unexplained files ({len(unexplained)} files, {len(clustered)} clustered, "
        f"{len(cluster_recs)} clusters): HDBSCAN purity {purity:.1%}, ARI on the distractor "
        f"productions {ari:.3f} (noise counted as singletons); FAISS k-means with the oracle k={k}: "
        f"purity {km_purity:.1%}, ARI {km_ari:.3f}.",
        "",
        "HDBSCAN by min_cluster_size: " + "; ".join(sweep) + ".",
    ]
    return "\n".join(lines)


def _scale_one(n: int) -> str:
    from matcher.insight.clusters import cluster_units
    from matcher.insight.groups import EdgeCalibration, group_files

    rng = np.random.default_rng(0)
    d, n_prod = 512, 50
    prod = rng.normal(size=(n_prod, d))
    shots = prod[rng.integers(0, n_prod, n // 5)] + 0.7 * rng.normal(size=(n // 5, d))
    x = shots[rng.integers(0, n // 5, n)] + 0.35 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cal = EdgeCalibration(0.8, 20.0, -15.0, 1, 1, 1.0, 0.0)
    t0 = time.perf_counter()
    _, groups, _ = group_files(x, [{"status": "unknown"}] * n, cal, 0.5)
    t_group = time.perf_counter() - t0
    mem_group = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    labels = cluster_units(x)
    t_cluster = time.perf_counter() - t0
    mem_cluster = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        f"| {n} | {t_group:.1f} s | {(mem_group - base) / 1024:.0f} MB | {len(groups)} | {t_cluster:.1f} s | "
        f"{(mem_cluster - base) / 1024:.0f} MB | {labels.max() + 1} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--limit", type=int, default=0, help="at most N items per title and role")
    s = sub.add_parser("scale")
    s.add_argument("sizes", nargs="+", type=int)
    s.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.what == "accuracy":
        print(accuracy(args.limit))
        return
    if args.one:
        print(_scale_one(args.sizes[0]))
        return
    import subprocess

    print("| files | grouping | peak memory | groups | clustering | peak memory | clusters |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:  # one process per size: peak memory is per process
        out = subprocess.run(
            [sys.executable, __file__, "scale", str(n), "--one"], capture_output=True, text=True
        )
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
