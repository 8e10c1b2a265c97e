#!/usr/bin/env python
"""Small libraries (issue 14): does an index of one or two productions say "unknown" for the rest?

Every index starts with one title. For each one-title index (every production of the benchmark) and
each two-title index (every pair), built through `Matcher.create` / `add` from the benchmark's
references (scripts/bench_dataset.py), every query of scripts/bench_accuracy.py is matched, under every
transform:

* own seen: the indexed productions' seen queries that get their right title (decision, threshold on);
* own unseen: the same for their unseen queries (for information: recognised by look alone);
* false attribution: every other query (the productions not indexed, and the distractors) that gets
  any title. The right answer for them is "unknown".

    .venv/bin/python scripts/bench_small_index.py [--update-docs] [--limit N]

The queries are embedded once (the embedder is the same for every index).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_accuracy  # noqa: E402
import bench_dataset  # noqa: E402
import fetch_data  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402

BEGIN, END = "<!-- small-index-table:begin -->", "<!-- small-index-table:end -->"


def pct(n: int, d: int) -> str:
    return "n/a" if d == 0 else f"{100 * n / d:.1f}"


def run_index(titles: tuple[str, ...], refs, queries, vecs, spec: str) -> dict:
    from matcher import Matcher

    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        m = Matcher.create(Path(tmp) / "index", model=spec)
        bench_accuracy.add_references(m, [r for r in refs if r["title"] in titles])
        results = m.match_vectors(vecs)
        warning = m.info().get("calibration_warning")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # key -> [hits, total]
    for q, r in zip(queries, results, strict=True):
        t = q["transform"]
        if q["truth"] in titles:
            key = f"own_{q['role']}"
            hit = r.title == q["truth"]
        else:
            key = "fa"
            hit = r.title is not None
        for k in (key, f"{key}|{t}"):
            counts[k][0] += int(hit)
            counts[k][1] += 1
    return {"counts": counts, "warning": warning}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="classic")
    ap.add_argument("--limit", type=int, default=0, help="at most N queries per title and role")
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()

    out = bench_dataset.build(fetch_data.fetch_all())
    items = bench_accuracy.load_items(out)
    refs = [it for it in items if it["role"] == "ref"]
    qitems = [it for it in items if it["role"] != "ref"]
    if args.limit:
        n: dict = defaultdict(int)
        keep = []
        for it in qitems:
            if n[(it["title"], it["role"])] < args.limit:
                keep.append(it)
                n[(it["title"], it["role"])] += 1
        qitems = keep
    transforms = list(TRANSFORMS)
    queries = bench_accuracy.make_queries(qitems, transforms)
    from matcher.embed import create_embedder

    vecs = bench_accuracy.embed_queries(create_embedder(args.model), queries)
    productions = sorted({r["title"] for r in refs})
    indexes = [(t,) for t in productions] + list(itertools.combinations(productions, 2))
    rows = []
    for titles in indexes:
        t0 = time.perf_counter()
        res = run_index(titles, refs, queries, vecs, args.model)
        c = res["counts"]
        worst = max((c[f"fa|{t}"][0] / c[f"fa|{t}"][1], t) for t in transforms if c[f"fa|{t}"][1])
        rows.append((titles, c, worst, res["warning"]))
        print(
            f"{' + '.join(titles)}: own seen {pct(*c['own_seen'])} FA {pct(*c['fa'])} "
            f"({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr,
        )
    ok_seen = all(c["own_seen"][0] >= 0.8 * c["own_seen"][1] for _, c, _, _ in rows)
    ok_fa = all(c["fa"][0] <= 0.05 * c["fa"][1] for _, c, _, _ in rows)
    git = bench_accuracy.git_state()
    md = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared), no GPU; model {args.model}; matcher at commit {git}; "
        f"{len(queries)} queries ({len(transforms)} transforms each) per index.",
        "",
        "| index | refs | own seen % (clean) | own seen % (all transforms) | own unseen % (all) "
        "| false attribution % (clean) | false attribution % (all) | worst transform FA % "
        "| calibration warning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_n = defaultdict(int)
    for r in refs:
        ref_n[r["title"]] += 1
    for titles, c, worst, warning in rows:
        md.append(
            f"| {' + '.join(titles)} | {sum(ref_n[t] for t in titles)} | {pct(*c['own_seen|clean'])} "
            f"| {pct(*c['own_seen'])} | {pct(*c['own_unseen'])} | {pct(*c['fa|clean'])} | {pct(*c['fa'])} "
            f"| {100 * worst[0]:.1f} ({worst[1]}) "
            f"| {'yes' if warning else 'no'} |"
        )
    md += [
        "",
        f"Targets: own seen >= 80% {'met' if ok_seen else 'NOT met'}; false attribution <= 5% "
        f"{'met' if ok_fa else 'NOT met'} (every index, all transforms pooled).",
    ]
    text = "\n".join(md) + "\n"
    print(text)
    if args.update_docs:
        doc = HERE.parent / "docs" / "BENCHMARKS.md"
        body = doc.read_text()
        if BEGIN in body and END in body:
            a, b = body.index(BEGIN) + len(BEGIN), body.index(END)
            body = body[:a] + "\n" + text + body[b:]
        else:
            body = body.rstrip() + f"\n\n## Small libraries (issue 14)\n\n{BEGIN}\n{text}{END}\n"
        doc.write_text(body)


if __name__ == "__main__":
    main()
