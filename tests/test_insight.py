"""Dump insight on small real images: a shot in four states (sketch, cel, notes, final) is one
group whose verdict reaches each state; two unknown styles become two clusters; a cluster is
indexed from the report; the HTML report shows groups, clusters and the timeline (and Chromium
renders it under its CSP)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_frame, write_frames
from PIL import Image, ImageDraw, ImageOps
from test_html_chromium import CHROMIUM, dom
from typer.testing import CliRunner

from matcher import Matcher
from matcher.cli import app
from matcher.insight.postpass import load_insight
from matcher.run import dump
from matcher.score.calibration import make_sketch
from matcher.write.report import read_records


@pytest.fixture(scope="module")
def farm_index(tmp_path_factory):
    """An index of one production (Sunny Farm): the two other styles are unknown productions."""
    root = tmp_path_factory.mktemp("farm") / "idx"
    lib = write_frames(tmp_path_factory.mktemp("farmlib"), "Sunny Farm", range(30))
    with Matcher.create(root, model="classic") as m:
        m.add(lib, title="Sunny Farm")
    return root


@pytest.fixture(scope="module")
def dumped(farm_index, tmp_path_factory):
    d = tmp_path_factory.mktemp("dump")
    final = draw_frame("Sunny Farm", 7)  # an indexed still: its finished frame matches
    (d / "shot").mkdir()
    final.save(d / "shot" / "final.png")
    # the cel: flat colours without the finish (posterised); the frame with correction notes
    ImageOps.posterize(final, 3).save(d / "shot" / "cel.png")
    notes = final.copy()
    pen = ImageDraw.Draw(notes)
    pen.line([(20, 20), (120, 60), (200, 40)], fill=(255, 0, 0), width=3)
    pen.text((30, 200), "fix the ears", fill=(255, 0, 0))
    notes.convert("L").convert("RGB").save(d / "shot" / "notes.jpg", quality=80)
    make_sketch(final, np.random.default_rng(3)).save(d / "shot" / "sketch.png")  # its line-art
    write_frames(d / "night", "Night Patrol", range(500, 508))
    write_frames(d / "ice", "Ice Kingdom", range(600, 608))
    # a batch a day: the night files written on 1 and 2 March 2024, the rest on 4 March
    day = 1_709_251_200  # 2024-03-01T00:00:00Z
    for p in sorted(d.rglob("*.*")):
        when = day + (3 * 86400 if not p.parent.name == "night" else 86400 * (p.stem[-1] in "4567"))
        os.utime(p, (when + 3600, when + 3600))
    out, html = d.parent / f"{d.name}.jsonl", d.parent / f"{d.name}.html"
    with Matcher.open(farm_index) as m:
        stats = dump.run_dump(d, m, out=out, html=html, workers=1, quiet=True)
    return d, out, html, stats


def test_a_shot_in_its_states_is_one_group_and_its_verdict_reaches_them(dumped):
    _, out, _, stats = dumped
    ins = load_insight(read_records(out))
    assert stats.insight["groups"] == len(ins["groups"])
    shot = [g for g in ins["groups"] if {m["path"] for m in g["members"]} & {"shot/final.png"}]
    assert len(shot) == 1
    g = shot[0]
    states = {"shot/final.png", "shot/cel.png", "shot/notes.jpg", "shot/sketch.png"}
    assert {m["path"] for m in g["members"]} == states
    assert g["title"] == "Sunny Farm" and not g["conflict"]
    notes = next(m for m in g["members"] if m["path"] == "shot/notes.jpg")
    assert notes["group_title"] == "Sunny Farm" and notes["group_confidence"] > 0.5
    assert notes["group_edge"]["path"] in {"shot/final.png", "shot/cel.png"}
    # its own verdict is kept as the per-file pass wrote it
    own = next(r for r in read_records(out) if r.get("record") == "file" and r["path"] == "shot/notes.jpg")
    assert notes["title"] == own["title"] and notes["confidence"] == own["confidence"]
    sketch = next(m for m in g["members"] if m["path"] == "shot/sketch.png")
    assert sketch["group_title"] == "Sunny Farm" and sketch["group_edge"]["path"] in states
    # no file of the unknown productions is grouped with the shot
    assert all(not m["path"].startswith(("night/", "ice/")) for m in g["members"])


def test_two_unknown_styles_become_two_clusters(dumped):
    _, out, _, _ = dumped
    ins = load_insight(read_records(out))
    found = [{m["path"].split("/")[0] for m in c["members"]} for c in ins["clusters"]]
    assert sorted(map(sorted, found)) == [["ice"], ["night"]]
    assert sorted(c["size"] for c in ins["clusters"]) == [8, 8]


def test_file_lines_carry_mtime_and_rerun_adds_no_duplicates(dumped, farm_index):
    d, out, _, _ = dumped
    files = [r for r in read_records(out) if r.get("record") == "file"]
    ice = next(r for r in files if r["path"] == "ice/ice_kingdom_0600.png")
    assert ice["mtime"] == 1_709_251_200 + 3 * 86400 + 3600 and ice["embedded_date"] is None
    before = [r for r in read_records(out) if r.get("record") in ("group", "cluster", "insight")]
    with Matcher.open(farm_index) as m:
        again = dump.run_dump(d, m, out=out, workers=1, quiet=True)
    after = [r for r in read_records(out) if r.get("record") in ("group", "cluster", "insight")]
    assert again.written == 0 and after == before
    assert list(read_records(out))[-1]["record"] == "summary"


def test_html_shows_groups_clusters_and_timeline(dumped):
    _, out, html, _ = dumped
    text = Path(html).read_text()
    assert text.count('class="member" data-path=') >= 3
    assert 'data-path="shot/notes.jpg"' in text and "group verdict: Sunny Farm" in text
    assert text.count("data-cluster=") == 2 and "--cluster 0" in text
    timeline = text.split('id="timeline-clusters"')[1]
    night = next(
        c["cluster"]
        for c in load_insight(read_records(out))["clusters"]
        if "night" in c["representatives"][0]
    )
    row = timeline.split(f"<td>cluster {night}</td>")[1].split("</tr>")[0]
    assert (
        "8 files, 2 days" in row
        and 'aria-label="2024-03-01: 4"' in row
        and 'aria-label="2024-03-02: 4"' in row
    )
    assert "2024-03-01 to 2024-03-04" in timeline
    assert "Content-Security-Policy" in text and "http://" not in text.split("</head>")[1]


def test_index_add_from_report_cluster_adds_exactly_that_cluster(dumped, farm_index, tmp_path):
    d, out, _, _ = dumped
    idx = tmp_path / "idx"
    shutil.copytree(farm_index, idx)
    ins = load_insight(read_records(out))
    night = next(c for c in ins["clusters"] if c["members"][0]["path"].startswith("night/"))
    res = CliRunner().invoke(
        app,
        [
            "index",
            "add",
            "--index",
            str(idx),
            "--title",
            "Night Patrol",
            "--from-report",
            str(out),
            "--cluster",
            str(night["cluster"]),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "added 8 stills of 'Night Patrol'" in res.output
    with Matcher.open(idx) as m:
        assert m.info()["titles"] == {"Sunny Farm": 30, "Night Patrol": 8}
        ids = m.store.ids_of_title("Night Patrol")
        srcs = {os.path.basename(r.source) for r in m.store.references(ids).values()}
    assert srcs == {p["path"].split("/")[1] for p in night["members"]}
    # the same from Python
    api_idx = tmp_path / "api-idx"
    shutil.copytree(farm_index, api_idx)
    with Matcher.open(api_idx) as m:
        assert m.add_cluster(out, night["cluster"], title="Night Patrol") == 8
        assert m.info()["titles"] == {"Sunny Farm": 30, "Night Patrol": 8}


def test_index_add_from_report_refuses_a_changed_file(dumped, farm_index, tmp_path):
    d, out, _, _ = dumped
    copy = tmp_path / "dump"
    shutil.copytree(d, copy)
    rewritten = tmp_path / "r.jsonl"
    lines = []
    for rec in read_records(out):
        if rec.get("record") == "run":
            rec["dump_root"] = str(copy)
        lines.append(json.dumps(rec))
    rewritten.write_text("\n".join(lines) + "\n")
    ins = load_insight(read_records(out))
    c = ins["clusters"][0]
    victim = copy / c["members"][0]["path"]
    Image.new("RGB", (50, 50), "red").save(victim)
    idx = tmp_path / "idx"
    shutil.copytree(farm_index, idx)
    args = ["index", "add", "--index", str(idx), "--title", "X", "--from-report", str(rewritten)]
    res = CliRunner().invoke(app, [*args, "--cluster", str(c["cluster"])])
    assert res.exit_code == 2 and "content differs from the report" in res.output
    assert str(victim) in res.output
    res = CliRunner().invoke(app, [*args, "--cluster", "99"])
    assert res.exit_code == 2 and "no cluster 99" in res.output
    with Matcher.open(idx) as m:
        assert m.info()["titles"] == {"Sunny Farm": 30}


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="headless Chromium not installed")
def test_chromium_renders_groups_and_clusters_under_the_csp(dumped):
    _, _, html, _ = dumped
    scan, log = dom(Path(html))
    assert scan.title == "matcher evidence report"
    assert "Refused to" not in log, [x for x in log.splitlines() if "Refused" in x]
    assert all(src.startswith("data:image/") for src in scan.imgs)
    groups = "".join(scan.text_by_section["groups"])
    assert "shot/sketch.png" in groups and "group verdict: Sunny Farm" in groups
    clusters = "".join(scan.text_by_section["clusters"])
    assert clusters.count("files, ") == 2 and "night/" in clusters and "ice/" in clusters


def test_edge_threshold_lets_at_most_one_percent_of_false_links_through():
    from matcher.insight.groups import fit_edges

    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0.5, 0.1, 2000), rng.normal(0.9, 0.05, 500)
    cal = fit_edges(pos, neg)
    assert np.mean(neg >= cal.threshold) <= 0.01 and cal.false_link <= 0.01
    assert np.mean(neg >= cal.threshold - 0.02) > 0.01  # and not far above what that takes
    p = cal.probability(np.array([0.4, cal.threshold, 0.99]))
    assert p[0] < 0.1 < p[2] and p[0] < p[1] < p[2]


def test_clusters_are_deterministic_and_sampled_beyond_the_limit(monkeypatch):
    from matcher.insight import clusters

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=64), rng.normal(size=64)
    x = np.concatenate([a + 0.2 * rng.normal(size=(60, 64)), b + 0.2 * rng.normal(size=(60, 64))])
    x = x[rng.permutation(len(x))]
    truth = np.array([int(np.linalg.norm(v - b) < np.linalg.norm(v - a)) for v in x])
    full = clusters.cluster_units(x)
    assert len(set(full.tolist()) - {-1}) == 2 and np.array_equal(full, clusters.cluster_units(x))
    assert all(len(set(full[truth == t].tolist()) - {-1}) == 1 for t in (0, 1))
    monkeypatch.setattr(clusters, "MAX_SAMPLE", 40)  # HDBSCAN on every 4th file, the rest by nearest
    sampled = clusters.cluster_units(x)
    assert all(len(set(sampled[truth == t].tolist())) == 1 for t in (0, 1)) and sampled.min() >= 0


def test_a_set_cut_off_before_its_insight_line_is_ignored():
    recs = [
        {"record": "group", "insight": "d1", "group": 0, "members": [{"path": "a", "group_title": "T"}]},
        {"record": "insight", "digest": "d1"},
        {"record": "group", "insight": "d2", "group": 0, "members": [{"path": "b", "group_title": "U"}]},
    ]
    ins = load_insight(recs)
    assert ins["insight"]["digest"] == "d1" and set(ins["by_path"]) == {"a"}


def test_a_foreign_file_where_the_vectors_go_stops_the_run_before_any_line(farm_index, tmp_path):
    from matcher.write.report import ReportError

    d = tmp_path / "dump"
    write_frames(d, "Night Patrol", range(2))
    out = tmp_path / "r.jsonl"
    foreign = tmp_path / "r.jsonl.vectors"
    foreign.write_bytes(b"someone's notes\n")
    with Matcher.open(farm_index) as m, pytest.raises(ReportError, match="not this report's vector file"):
        dump.run_dump(d, m, out=out, workers=1, quiet=True)
    assert foreign.read_bytes() == b"someone's notes\n"
    assert not out.exists() or out.read_bytes() == b""


def test_embedded_dates_from_exif_and_containers(tmp_path):
    from matcher.insight.timeline import exif_date, file_day, normalise_date

    im = draw_frame("Ice Kingdom", 1)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:20:30"  # DateTimeOriginal
    im.save(tmp_path / "a.jpg", exif=exif)
    with Image.open(tmp_path / "a.jpg") as shot:
        assert exif_date(shot) == "2024-05-01T10:20:30"
    with Image.open(tmp_path / "a.jpg") as plain:
        plain.save(tmp_path / "b.jpg")
    with Image.open(tmp_path / "b.jpg") as b:
        assert exif_date(b) is None
    assert normalise_date("2023-11-14T22:13:20.000000Z") == "2023-11-14T22:13:20"  # video creation_time
    assert normalise_date("0000:00:00 00:00:00") is None and normalise_date("<script>") is None
    # the embedded date wins over the modification time
    assert file_day({"embedded_date": "2024-05-01T10:20:30", "mtime": 1_700_000_000}) == "2024-05-01"
    assert file_day({"embedded_date": None, "mtime": 1_700_000_000}) == "2023-11-14"
