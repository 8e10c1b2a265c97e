"""The Ray executor (issue 16) on a real local Ray (num_cpus=2, started once per session): it runs
the same decode and embed stages as the local pool, so an index built with --engine ray equals one
built locally, a directory matched with --engine ray gives the same lines, and a decode worker that
dies mid-run loses nothing (Ray runs its batch again: exactly one result per file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
from conftest import write_frames, write_video
from typer.testing import CliRunner

from matcher import Matcher
from matcher.cli import app
from matcher.embed import create_embedder
from matcher.run import ray_engine
from matcher.run.pipeline import embed_stills


@pytest.fixture(scope="module")
def ray_session():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayin")
    refs = {
        "Sunny Farm": write_frames(root / "farm", "Sunny Farm", range(6)),
        "Night Patrol": write_frames(root / "night", "Night Patrol", range(6)),
    }
    write_video(root / "night" / "patrol.mp4", "Night Patrol", seconds=2.0)
    queries = root / "queries"
    write_frames(queries, "Sunny Farm", range(100, 103))
    write_frames(queries, "Night Patrol", range(100, 102))
    (queries / "notes.txt").write_text("not a picture\n")
    return root, refs, queries


def build(root, inputs, engine: str):
    _, refs, _ = inputs
    m = Matcher.create(root, model="classic")
    m.add(refs["Sunny Farm"], title="Sunny Farm", engine=engine)
    m.add([refs["Night Patrol"][0].parent], title="Night Patrol", engine=engine)  # a directory with a video
    return m


def snapshot(m: Matcher) -> tuple:
    ids = np.sort(np.concatenate([m.store.ids_of_title(t) for t in m.store.titles()]))
    assert len(ids) == m.store.count
    refs = m.store.references(ids)
    rows = [(r.title, r.source, r.sha256, r.timestamp, r.timestamp_end) for _, r in sorted(refs.items())]
    probes = {k: np.asarray(v) for k, v in m.store.probes.items()}
    return m.store.vectors(ids), rows, probes


def test_an_index_built_on_ray_equals_one_built_locally(ray_session, inputs, tmp_path):
    local = build(tmp_path / "local", inputs, "local")
    on_ray = build(tmp_path / "ray", inputs, "ray")
    v_local, rows_local, probes_local = snapshot(local)
    v_ray, rows_ray, probes_ray = snapshot(on_ray)
    assert any(r[3] is not None for r in rows_local)  # the video's stills are in
    assert rows_ray == rows_local
    assert np.array_equal(v_ray, v_local)
    assert probes_ray.keys() == probes_local.keys()
    for k in probes_local:
        assert np.array_equal(probes_ray[k], probes_local[k]), k
    # the same verdicts, lines and all, from either index and either engine
    _, _, queries = inputs
    lines_local = [json.dumps(r.to_dict()) for r in local.match_many([queries])]
    lines_ray = [json.dumps(r.to_dict()) for r in on_ray.match_many([queries], engine="ray")]
    assert lines_ray == lines_local
    assert sum('"status": "skipped"' in line for line in lines_local) == 1  # notes.txt: not a picture


def test_cli_index_add_and_match_with_engine_ray(ray_session, inputs, tmp_path):
    _, refs, queries = inputs
    runner = CliRunner()
    out = {}
    for engine in ("local", "ray"):
        idx = tmp_path / engine
        folder = str(refs["Sunny Farm"][0].parent)
        args = ["index", "add", folder, "--title", "Sunny Farm", "--index", str(idx), "--engine", engine]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "added 6 stills" in res.output
        res = runner.invoke(app, ["match", str(queries), "--index", str(idx), "--json", "--engine", engine])
        assert res.exit_code == 0, res.output
        out[engine] = [json.loads(line) for line in res.stdout.splitlines()]
    assert out["ray"] == out["local"]
    assert len(out["ray"]) == 6  # 5 frames and the text file, one line each


def _lines(report) -> list[dict]:
    """The file / still / frame lines of a report, in path order (a line is written when its file is
    done, and the executors finish files in different orders)."""
    from matcher.write.report import read_records

    lines = [r for r in read_records(report) if r["record"] in ("file", "still", "frame")]
    return sorted(lines, key=lambda r: (r["path"], r["record"], r.get("timestamp") or 0, r.get("frame") or 0))


def test_dump_mode_on_ray_writes_the_same_report(ray_session, inputs, tmp_path):
    root, _, _ = inputs
    dump_dir = root / "night"  # six frames and a video, decoded in segments of one still each
    m = build(tmp_path / "idx", inputs, "local")
    reports = {}
    for engine in ("local", "ray"):
        reports[engine] = tmp_path / f"{engine}.jsonl"
        stats = m.match_dump(dump_dir, out=reports[engine], engine=engine, segment=1, workers=2)
        assert stats.written == 7
    local, on_ray = _lines(reports["local"]), _lines(reports["ray"])
    assert on_ray == local
    assert [r["record"] for r in local].count("still") == 2  # the video's stills, from two segments


def test_cli_dump_mode_with_engine_ray(ray_session, inputs, built_index, tmp_path):
    _, _, queries = inputs
    out = tmp_path / "r.jsonl"
    args = ["match", str(queries), "--index", str(built_index), "--out", str(out), "--engine", "ray"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = _lines(out)
    assert len(lines) == 6 and {r["status"] for r in lines} >= {"matched", "skipped"}


def test_a_decode_worker_killed_mid_run_loses_nothing(ray_session, inputs, tmp_path):
    from matcher.decode.decoder import Limits, Task

    class _DyingClassic:
        """classic, whose decode-side prepare kills its Ray worker on the first still (a segfault)."""

        spec, pretrained = "classic", None

        def __init__(self, flag):
            self.flag = str(flag)
            self._prepare = create_embedder("classic").prepare

        def prepare(self, image):
            import os

            if not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os._exit(1)
            return self._prepare(image)

    _, refs, _ = inputs
    paths = [str(p) for p in refs["Sunny Farm"]]
    tasks = [(n, Task(idx=n, rel=p, abspath=p.encode())) for n, p in enumerate(paths)]
    flag = tmp_path / "killed"
    got = list(ray_engine.decode_and_embed(tasks, _DyingClassic(flag), Limits(), batch_size=4))
    assert flag.exists()  # a worker did die
    assert [key for key, _ in got] == list(range(len(paths)))  # exactly one result per file, in order
    local = {e.still.path: e.vector for e in embed_stills(paths, create_embedder("classic"), workers=0)}
    for key, result in got:
        assert result["status"] is None and len(result["parts"]) == 1
        assert np.array_equal(result["parts"][0][1], local[paths[key]])
