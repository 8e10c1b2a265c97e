#!/usr/bin/env python
"""Imbalance benchmark (issue 2): does a title win by the number of its stills?

Builds the classic index of the accuracy benchmark (scripts/bench_accuracy.py: reference counts from
30 to 1164 per title) and answers every query (all transforms) with three title-scoring rules on the
very same neighbours:
- vote: the most frequent title among the 10 nearest stills (what a plain kNN classifier does);
- raw max: each title's best still, no normalisation;
- matcher: each title's best still normalised by that title's own background spread (TitleScorer).
Prints a markdown table: overall and macro top-1, per-title unseen top-1, and the share of
distractors (productions not in the index) given to the biggest title.

    .venv/bin/python scripts/bench_imbalance.py
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_accuracy  # noqa: E402
import bench_dataset  # noqa: E402
import bench_metrics  # noqa: E402
import fetch_data  # noqa: E402
from bench_transforms import TRANSFORMS  # noqa: E402

from matcher import Matcher  # noqa: E402
from matcher.score.scoring import Calibration, TitleScorer, coverage_of, evidence_scale, rescale  # noqa: E402


def main() -> None:
    items = bench_accuracy.load_items(bench_dataset.build(fetch_data.fetch_all()))
    refs = [it for it in items if it["role"] == "ref"]
    queries = bench_accuracy.make_queries([it for it in items if it["role"] != "ref"], list(TRANSFORMS))
    with tempfile.TemporaryDirectory() as tmp:
        m = Matcher.create(Path(tmp) / "index", model="classic")
        bench_accuracy.add_references(m, refs)
        vecs = bench_accuracy.embed_queries(m.embedder, queries)
        sims, ids = m.store.search(vecs, m.k)
        # the similarities Matcher scores with (grey / sketch queries rescaled, see scoring.py)
        sims = rescale(sims, ids, evidence_scale(getattr(m.embedder, "coverage", None), vecs))
        # line-art queries are scored with their own parameters, as in Matcher
        coverage = coverage_of(getattr(m.embedder, "coverage", None), vecs)
        titles = m.store.title_array(ids)
        counts = m.store.titles()
        raw = Calibration.from_dict(m.scorer.calibration.to_dict())
        raw.n = {}  # every title falls back to the global stats: no per-title normalisation
        rules = {
            "vote among 10 nearest": None,
            "best still per title (raw)": TitleScorer(raw, m.scorer.all_titles),
            "best still per title, normalised (matcher)": m.scorer,
        }
        role = np.array([q["role"] for q in queries])
        truth = np.array([q["truth"] for q in queries], dtype=object)
        known = role != "distractor"
        names = sorted(counts, key=counts.get)
        biggest = names[-1]
        head = ["rule", "seen top-1", "seen macro", "unseen top-1", "unseen macro"]
        head += [f"unseen {t} ({counts[t]})" for t in names] + [f"distractors -> {biggest}"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for name, scorer in rules.items():
            if scorer is None:
                top = [Counter(row[:10]).most_common(1)[0][0] for row in titles]
            else:
                top = [
                    scorer.rank(sims[r], titles[r], ids[r], coverage=float(coverage[r])).titles[0]
                    for r in range(len(queries))
                ]
            top = np.array(top, dtype=object)
            cells = []
            for rl in ("seen", "unseen"):
                mk = role == rl
                macro = bench_metrics.macro_top1(truth[mk], top[mk])
                cells += [100 * np.mean(top[mk] == truth[mk]), 100 * macro]
            cells += [100 * np.mean(top[(role == "unseen") & (truth == t)] == t) for t in names]
            cells.append(100 * np.mean(top[~known] == biggest))
            print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
