"""Line-art queries: scored with their own parameters, fitted on sketch probes, ranked by best still."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_frame

from matcher import Matcher
from matcher.score.calibration import _fit_logistic, probes_per_title
from matcher.score.scoring import Calibration, TitleScorer, is_sketch

DEMO = Path(__file__).resolve().parent.parent / "demo"


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """The README demo's index: three openly licensed productions, 26 stills."""
    m = Matcher.create(tmp_path_factory.mktemp("demo") / "idx", model="classic")
    for line in (DEMO / "titles.tsv").read_text().splitlines():
        folder, title = line.split("\t")
        m.add([DEMO / "references" / folder], title=title)
    return m


def test_line_art_of_a_frame_is_given_to_its_production(demo_index):
    # The sketch is inked from a Big Buck Bunny frame that is not in the index (demo/NOTICE.md).
    result = demo_index.match(DEMO / "queries" / "cel-lineart.png")
    assert result.error is None
    assert result.candidates[0].title == "Big Buck Bunny"
    assert result.title == "Big Buck Bunny"


def test_index_fits_separate_sketch_parameters(demo_index):
    cal = Calibration.from_dict(demo_index.store.manifest["calibration"])
    assert cal.sketch is not None and cal.sketch.fitted and cal.sketch.rank_by == "similarity"
    assert cal.rank_by == "z"
    kinds = demo_index.store.probes["kinds"]
    assert (kinds == "sketch").sum() == 3 * 16 and (kinds == "altered").sum() == 3 * probes_per_title(3)


def _two_band_scorer() -> TitleScorer:
    stats = {
        "mu": {"Big": 0.80, "Small": 0.60},
        "sigma": {"Big": 0.05, "Small": 0.05},
        "n": {"Big": 100, "Small": 100},
        "global_mu": 0.7,
        "global_sigma": 0.05,
        "fitted": True,
    }
    cal = Calibration(**stats, sketch=Calibration(**stats, rank_by="similarity"))
    return TitleScorer(cal, ["Big", "Small"])


def test_sketch_queries_are_ranked_by_their_best_still():
    scorer = _two_band_scorer()
    sims = np.array([0.84, 0.78, 0.70])
    titles = np.array(["Big", "Small", "Big"], dtype=object)
    # colour query: Small is further above its own background (imbalance correction)
    assert scorer.rank(sims, titles, np.arange(3), coverage=1.0).titles[0] == "Small"
    # sketch query: the most similar still decides; candidate scores still follow the ranking
    ranking = scorer.rank(sims, titles, np.arange(3), coverage=0.4)
    assert ranking.titles == ["Big", "Small"]
    _, confidence, candidates = scorer.score(ranking)
    assert [c.title for c in candidates] == ["Big", "Small"]
    assert candidates[1].score <= confidence


def test_blank_stills_are_not_sketches():
    # classic: colour ~1, grey ~0.6, line-art ~0.37-0.40, a flat colour or empty page ~0.19
    assert list(is_sketch(np.array([1.0, 0.62, 0.38, 0.19]))) == [False, False, True, False]


def test_index_written_before_sketch_probes_still_works(tmp_path, built_index):
    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    probes = copy / json.loads((copy / "manifest.json").read_text())["probes"]
    with np.load(probes) as z:
        old = {k: z[k] for k in ("vectors", "ref_ids", "titles")}  # the earlier format: no kinds
    np.savez(probes, **old)
    # as that writer would have recorded it: the manifest's checksum is of the file it wrote
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][probes.name] = {
        "sha256": hashlib.sha256(probes.read_bytes()).hexdigest(),
        "size": probes.stat().st_size,
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    m = Matcher.open(copy)
    assert set(m.store.probes["kinds"]) == {"altered"}
    assert m.match(draw_frame("Night Patrol", 3)).title == "Night Patrol"
    m.add([draw_frame("Sunny Farm", s) for s in range(500, 504)], title="Sunny Farm")
    sunny_sketches = (m.store.probes["titles"] == "Sunny Farm") & (m.store.probes["kinds"] == "sketch")
    assert sunny_sketches.sum() >= 1  # the append adds sketch probes in proportion


def test_logistic_fit_stays_finite_when_features_say_little():
    # Uninformative features, 21% positives: the plain Newton fit used to run off to a bias of -4e8
    # here (a sketch band with few probes looks like this); the damped fit lands near the base rate.
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second draw is the case that diverged
        x = np.column_stack(
            [
                rng.normal(rng.uniform(-1, 3), rng.uniform(0.05, 2), 100),
                np.abs(rng.normal(0, rng.uniform(0.01, 1), 100)),
            ]
        )
        y = (rng.random(100) < rng.uniform(0.05, 0.95)).astype(float)
    beta = _fit_logistic(x, y, np.ones(100))
    assert np.all(np.isfinite(beta)) and np.abs(beta).max() < 10
    p = 1 / (1 + np.exp(-(x @ beta[:2] + beta[2])))
    assert abs(p.mean() - y.mean()) < 0.05
