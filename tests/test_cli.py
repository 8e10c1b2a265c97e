"""The terminal: `matcher index add|info|remove`, `matcher match`, the short `match`, JSON schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_frame
from typer.testing import CliRunner

from matcher.cli import app

BIN = Path(sys.executable).parent
SCHEMA = {"path", "sha256", "title", "confidence", "candidates", "evidence", "error"}


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture()
def cli_index(tmp_path, library):
    idx = tmp_path / "idx"
    for title, paths in library.items():
        res = run("index", "add", "--index", idx, "--model", "classic", "--title", title, paths[0].parent)
        assert res.exit_code == 0, res.output
        assert f"added {len(paths)} stills of {title!r}" in res.output
    return idx


def test_index_info_lists_titles_model_and_size(cli_index):
    res = run("index", "info", "--index", cli_index)
    assert res.exit_code == 0
    assert "classic" in res.output and "Sunny Farm" in res.output and "MB" in res.output
    info = json.loads(run("index", "info", "--index", cli_index, "--json").output)
    assert info["titles"] == {"Ice Kingdom": 12, "Night Patrol": 12, "Sunny Farm": 60}
    assert info["references"] == 84 and info["calibrated"] is True
    assert 0.5 <= info["threshold"] < 1.0
    assert 0.5 <= info["sketch_threshold"] < 1.0 and 0.5 <= info["grey_threshold"] < 1.0
    assert "line-art queries" in res.output and "grey queries" in res.output


def test_match_json_follows_the_schema(cli_index, tmp_path):
    q = tmp_path / "cel.png"
    draw_frame("Night Patrol", 4321).save(q)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = run("match", "--index", cli_index, "--json", q, tmp_path / "bad.png")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert len(lines) == 2
    good, bad = lines
    assert SCHEMA <= set(good) and SCHEMA <= set(bad)
    assert good["title"] == "Night Patrol" and good["error"] is None
    assert set(good["candidates"][0]) == {"title", "score"}
    assert {"title", "reference", "similarity", "timestamp"} <= set(good["evidence"][0])
    assert bad["title"] is None and bad["error"].startswith("not a readable image")


def test_match_table_and_env_index(cli_index, tmp_path):
    q = tmp_path / "frame.png"
    draw_frame("Ice Kingdom", 99).save(q)
    res = run("match", q, env={"MATCHER_INDEX": str(cli_index)})
    assert res.exit_code == 0
    row = res.output.splitlines()[1].split("\t")
    assert row[0] == str(q) and row[1] == "Ice Kingdom" and 0.5 <= float(row[2]) <= 1.0


def test_short_match_command_answers(cli_index, tmp_path):
    q = tmp_path / "cel.png"
    draw_frame("Sunny Farm", 31337).save(q)
    env = dict(os.environ, MATCHER_INDEX=str(cli_index))
    out = subprocess.run([BIN / "match", "--json", q], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["title"] == "Sunny Farm"


def test_run_level_errors_are_one_line(tmp_path):
    res = run("match", "--index", tmp_path / "none", tmp_path)
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "no index here" in res.output
    assert "Traceback" not in res.output


def test_model_mismatch_on_append_is_refused(cli_index, library):
    res = run(
        "index", "add", "--index", cli_index, "--model", "clip", "--title", "X", library["Sunny Farm"][0]
    )
    assert res.exit_code == 2 and "model mismatch" in res.output


def test_remove_title(cli_index):
    res = run("index", "remove", "--index", cli_index, "--title", "Ice Kingdom")
    assert res.exit_code == 0 and "removed 12" in res.output
    info = json.loads(run("index", "info", "--index", cli_index, "--json").output)
    assert "Ice Kingdom" not in info["titles"]
    assert run("index", "remove", "--index", cli_index, "--title", "Ice Kingdom").exit_code == 2
