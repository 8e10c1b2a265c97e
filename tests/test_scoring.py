"""TitleScorer and calibration: monotone confidence, imbalance correction, unknown decision."""

from __future__ import annotations

import numpy as np
from conftest import draw_frame

from matcher import Matcher
from matcher.score.calibration import PROBES_PER_TITLE, _fit_logistic, probes_per_title
from matcher.score.scoring import Calibration, TitleScorer


def test_confidence_is_monotone_in_evidence(built_index):
    cal = Calibration.from_dict(Matcher.open(built_index).store.manifest["calibration"])
    assert cal.fitted and cal.weights[0] >= 0 and cal.weights[1] >= 0
    z = np.linspace(-5, 15, 200)
    for margin in (0.0, 1.0, 5.0):
        p = cal.probability(z, margin)
        assert np.all(np.diff(p) >= 0)
    m = np.linspace(-5, 10, 200)
    assert np.all(np.diff(cal.probability(3.0, m)) >= 0)


def test_logistic_fit_keeps_weights_non_negative():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 2 * x[:, 1] + rng.normal(size=400) > 0).astype(float)  # margin 'hurts' here
    beta = _fit_logistic(x, y, np.ones(400))
    assert beta[0] > 0 and beta[1] == 0.0


def test_closer_query_gets_higher_confidence(built_index):
    m = Matcher.open(built_index)
    ref = m.match(draw_frame("Night Patrol", 3))  # an indexed still
    held_out = m.match(draw_frame("Night Patrol", 3003))
    assert ref.title == held_out.title == "Night Patrol"
    assert ref.confidence >= held_out.confidence


def test_big_title_does_not_win_by_numbers():
    """A title with 50x more stills has a higher background similarity; normalisation removes it."""
    cal = Calibration(
        mu={"Big": 0.80, "Small": 0.60},
        sigma={"Big": 0.05, "Small": 0.05},
        n={"Big": 100, "Small": 100},
        global_mu=0.7,
        global_sigma=0.05,
        fitted=True,
    )
    scorer = TitleScorer(cal, ["Big", "Small"])
    sims = np.array([0.84, 0.83, 0.82, 0.78, 0.77])
    titles = np.array(["Big", "Big", "Big", "Small", "Big"], dtype=object)
    ranking = scorer.rank(sims, titles, np.arange(5))
    # Raw similarity favours Big (0.84 vs 0.78) but Big is only 0.8 sigma above its own background
    # while Small is 3.6 sigma above its own.
    assert ranking.titles[0] == "Small"


def test_unknown_threshold_caps_false_attribution_on_probes(built_index):
    cal = Calibration.from_dict(Matcher.open(built_index).store.manifest["calibration"])
    assert 0.5 <= cal.threshold < 1.0
    # classic reports coverage, so grey probes got a threshold of their own (and sketches theirs)
    assert cal.grey_threshold is not None and 0.5 <= cal.grey_threshold < 1.0
    assert cal.threshold_for(0.6) == cal.grey_threshold and cal.threshold_for(0.98) == cal.threshold


def test_a_small_index_keeps_more_probes_per_title(built_index):
    # The 2% unknown threshold needs enough unknown probes in all: few titles, more probes each.
    probes = Matcher.open(built_index).store.probes
    altered = probes["titles"][probes["kinds"] == "altered"]
    assert {t: int((altered == t).sum()) for t in set(altered)} == dict.fromkeys(
        ("Sunny Farm", "Night Patrol", "Ice Kingdom"), probes_per_title(3)
    )
    assert probes_per_title(3) > probes_per_title(20) == PROBES_PER_TITLE == probes_per_title(5000)


def test_grey_queries_must_clear_their_own_threshold():
    # Same evidence, same confidence (0.6): a colour query is attributed, a grey one (coverage 0.6) must
    # clear the stricter grey threshold and stays unknown, unless the caller sets the threshold.
    cal = Calibration(
        mu={"A": 0.5, "B": 0.5},
        sigma={"A": 0.1, "B": 0.1},
        n={"A": 50, "B": 50},
        global_mu=0.5,
        weights=(0.0, 0.0, float(np.log(0.6 / 0.4))),
        threshold=0.5,
        grey_threshold=0.7,
        fitted=True,
    )
    scorer = TitleScorer(cal, ["A", "B"])
    sims, titles, ids = np.array([0.9, 0.6]), np.array(["A", "B"], dtype=object), np.arange(2)
    colour = scorer.score(scorer.rank(sims, titles, ids, coverage=0.98))
    grey = scorer.score(scorer.rank(sims, titles, ids, coverage=0.6))
    assert colour[0] == "A" and grey[0] is None
    assert colour[1] == grey[1] == 0.6 and grey[2][0].title == "A"  # the candidate is still shown
    assert scorer.score(scorer.rank(sims, titles, ids, coverage=0.6), threshold=0.55)[0] == "A"


def test_calibrations_saved_before_grey_thresholds_keep_one_threshold():
    old = Calibration(threshold=0.6, fitted=True).to_dict()
    del old["grey_threshold"]
    cal = Calibration.from_dict(old)
    assert cal.grey_threshold is None and cal.threshold_for(0.6) == cal.threshold_for(1.0) == 0.6


def test_one_title_index_answers_unknown_for_other_productions(tmp_path):
    # Before the background set, one title meant no unknown probe: everything got that title at ~1.0.
    m = Matcher.create(tmp_path / "i")
    m.add([draw_frame("Ice Kingdom", s) for s in range(20)], title="Ice Kingdom")
    cal = Calibration.from_dict(m.store.manifest["calibration"])
    assert cal.fitted and cal.background > 500  # unknown probes from the shipped background set
    assert m.match(draw_frame("Ice Kingdom", 2)).title == "Ice Kingdom"
    for style in ("Sunny Farm", "Night Patrol"):
        results = [m.match(draw_frame(style, 300 + s)) for s in range(4)]
        assert [r.title for r in results] == [None] * 4, style


def test_thin_calibration_is_said_in_the_result_and_in_index_info(tmp_path):
    m = Matcher.create(tmp_path / "i")
    m.add([draw_frame("Ice Kingdom", s) for s in range(5)], title="Ice Kingdom")
    r = m.match(draw_frame("Ice Kingdom", 2))
    assert r.to_dict()["calibration_warning"].startswith("calibrated on few probes")
    assert m.info()["calibration_warning"] == r.calibration_warning
    assert m.info()["calibration_probes"]["unknown"] >= 500


def test_evidence_scale_only_for_embedders_that_report_coverage():
    from matcher.score.scoring import evidence_scale, rescale

    v = np.ones((3, 4), np.float32)
    assert np.array_equal(evidence_scale(None, v), np.ones(3))
    scale = evidence_scale(lambda x: np.array([1.0, 0.5, 0.0]), v)
    assert np.allclose(scale, [1.0, 2.0, 5.0])  # floor: a blank query is not blown up without bound
    sims = np.array([[0.5, -3.4e38]], np.float32)
    out = rescale(sims, np.array([[7, -1]]), np.array([2.0]))
    assert out[0, 0] == 1.0 and out[0, 1] == sims[0, 1]  # missing neighbours stay as they are


def test_grey_copy_is_matched_and_evidence_keeps_the_raw_cosine(built_index):
    from PIL import ImageOps

    m = Matcher.open(built_index)
    grey = ImageOps.grayscale(draw_frame("Night Patrol", 5)).convert("RGB")  # an indexed still, greyed
    r = m.match(grey)
    assert r.candidates[0].title == "Night Patrol"
    assert all(-1.0 <= e.similarity <= 1.0 for e in r.evidence)


def test_unknown_share_prior_is_kept_and_moves_confidence(tmp_path, built_index):
    import shutil

    from typer.testing import CliRunner

    from matcher.cli import app

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    frame = draw_frame("Ice Kingdom", 4040)
    before = Matcher.open(copy).match(frame).confidence
    res = CliRunner().invoke(app, ["index", "calibrate", "--index", str(copy), "--unknown-share", "0.1"])
    assert res.exit_code == 0, res.output
    m = Matcher.open(copy)
    assert m.store.manifest["calibration"]["unknown_share"] == 0.1
    assert m.match(frame).confidence > before  # fewer expected unknowns: more confidence in a match
    m.recalibrate()  # a later refit (e.g. after add) keeps the investigator's prior
    assert Matcher.open(copy).store.manifest["calibration"]["unknown_share"] == 0.1
    bad = CliRunner().invoke(app, ["index", "calibrate", "--index", str(copy), "--unknown-share", "1.5"])
    assert bad.exit_code != 0
