"""The terminal: `matcher index add|info|remove`, `matcher match`, the short `match`, JSON schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas
import pytest
from conftest import draw_frame
from typer.testing import CliRunner

from matcher import Matcher
from matcher.cli import TSV_COLUMNS, app

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
    assert bad["title"] is None and bad["error"].startswith("corrupt PNG image")
    # one record schema: a plain `match --json` object is a dump report line
    assert (
        good["record"] == "file" and good["status"] == "matched" and {"reason", "size", "kind"} <= set(good)
    )
    assert bad["status"] == "error" and bad["reason"] == bad["error"]


def test_match_table_and_env_index(cli_index, tmp_path):
    q = tmp_path / "frame.png"
    draw_frame("Ice Kingdom", 99).save(q)
    odd = tmp_path / 'tab\tand "quote".png'  # a hostile name must not add a column
    draw_frame("Night Patrol", 98).save(odd)
    res = run("match", q, odd, tmp_path / "bad.png", env={"MATCHER_INDEX": str(cli_index)})
    (tmp_path / "out.tsv").write_text(res.stdout)
    table = pandas.read_csv(tmp_path / "out.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == TSV_COLUMNS
    assert len(table) == 3
    first = table.iloc[0]
    assert first["path"] == str(q) and first["title"] == "Ice Kingdom" and 0.5 <= first["confidence"] <= 1
    assert first["status"] == "matched" and len(first["evidence_sha256"]) == 64
    assert table.iloc[1]["path"] == str(odd).replace("\t", "\\t") and table.iloc[1]["title"] == "Night Patrol"
    assert table.iloc[2]["status"] == "error" and "no such file" in table.iloc[2]["error"]
    assert res.exit_code == 1  # an input was missing


def test_exit_codes_missing_inputs_all_failed_empty_folder_empty_index(cli_index, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = run("match", "--index", cli_index, bad)
    assert res.exit_code == 1 and "none of the 1 input(s) could be matched" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("match", "--index", cli_index, empty)
    assert res.exit_code == 1 and "no files in" in res.stderr
    res = run("index", "add", "--index", tmp_path / "new", "--title", "T", empty)
    assert res.exit_code == 2 and "no files in" in res.stderr and "added 0" not in res.output
    res = run("index", "add", "--index", tmp_path / "new", "--title", "T", bad)
    assert res.exit_code == 2 and "added 0" not in res.output and "no stills were added" in res.stderr
    Matcher.create(tmp_path / "blank").close()
    q = tmp_path / "q.png"
    draw_frame("Ice Kingdom", 1).save(q)
    res = run("match", "--index", tmp_path / "blank", q)
    assert res.exit_code == 2 and "the index is empty" in res.stderr


def test_version_help_and_completion():
    from matcher import __version__

    assert run("--version").output.strip() == f"matcher {__version__}"
    assert run("-h").exit_code == 0 and "index" in run("-h").output
    assert run("index", "add", "-h").exit_code == 0
    assert "--install-completion" in run("--help").output


def test_re_adding_files_skips_exact_duplicates_and_refuses_them_under_another_title(tmp_path, library):
    idx = tmp_path / "idx"
    folder = library["Sunny Farm"][0].parent
    assert run("index", "add", "--index", idx, "--title", "Sunny Farm", folder).exit_code == 0
    res = run("index", "add", "--index", idx, "--title", "Sunny Farm", folder)
    assert res.exit_code == 0 and "nothing added: every input is already in" in res.output
    assert "already in the index (sha256" in res.stderr
    res = run("index", "add", "--index", idx, "--title", "Other", library["Sunny Farm"][0])
    assert res.exit_code == 2
    assert "already indexed as 'Sunny Farm'" in res.stderr and "not added under 'Other'" in res.stderr
    info = json.loads(run("index", "info", "--index", idx, "--json").output)
    assert info["titles"] == {"Sunny Farm": 60}


def test_rebuild_re_embeds_from_recorded_sources_and_says_which_moved(tmp_path, library):
    import shutil

    refs = tmp_path / "refs"
    shutil.copytree(library["Ice Kingdom"][0].parent, refs)
    idx = tmp_path / "idx"
    assert run("index", "add", "--index", idx, "--title", "Ice Kingdom", refs).exit_code == 0
    res = run("index", "rebuild", "--index", idx)
    assert res.exit_code == 0 and "rebuilt" in res.output and "12 references" in res.output
    assert json.loads(run("index", "info", "--index", idx, "--json").output)["titles"] == {"Ice Kingdom": 12}
    moved = sorted(refs.iterdir())[0]
    moved.rename(tmp_path / "elsewhere.png")
    res = run("index", "rebuild", "--index", idx)
    assert res.exit_code == 2 and f"{moved}: no longer there" in res.stderr
    assert json.loads(run("index", "info", "--index", idx, "--json").output)["references"] == 12


def test_model_mismatch_advice_is_a_command_that_works(tmp_path, library, monkeypatch):
    from matcher.embed import classic

    idx = tmp_path / "idx"
    assert (
        run("index", "add", "--index", idx, "--title", "Ice Kingdom", *library["Ice Kingdom"]).exit_code == 0
    )
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["embedder"]["fingerprint"] = "0000older0000"  # an index of an older descriptor
    (idx / "manifest.json").write_text(json.dumps(manifest))
    res = run("match", "--index", idx, library["Ice Kingdom"][0])
    assert res.exit_code == 2 and f"matcher index rebuild --index {idx}" in res.stderr
    res = run("index", "rebuild", "--index", idx)
    assert res.exit_code == 0, res.output
    assert run("match", "--index", idx, library["Ice Kingdom"][0]).exit_code == 0
    assert classic  # the descriptor itself is untouched: only the index was rebuilt


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


def test_progress_bar_on_a_terminal_only(cli_index, tmp_path):
    import pty

    queries = tmp_path / "q"
    queries.mkdir()
    for s in range(3):
        draw_frame("Sunny Farm", 500 + s).save(queries / f"q{s}.png")
    env = dict(os.environ, MATCHER_INDEX=str(cli_index), PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "matcher.cli", "match", str(queries)]
    master, slave = pty.openpty()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=slave, timeout=120)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert p.returncode == 0 and b"matching" in shown  # the bar, on the terminal
    assert b"matching" not in p.stdout and len(p.stdout.splitlines()) == 4  # header + 3 rows
    piped = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == b""  # no bar when stderr is not a terminal


def test_an_index_of_format_1_is_refused_with_the_command_that_rebuilds_it(tmp_path, library):
    # Format 1 (before per-file checksums and the background set): one metadata.sqlite, no "files".
    idx = tmp_path / "idx"
    for title in ("Sunny Farm", "Night Patrol"):
        assert run("index", "add", "--index", idx, "--title", title, *library[title][:12]).exit_code == 0
    manifest = json.loads((idx / "manifest.json").read_text())
    shutil.copyfile(idx / manifest["metadata"], idx / "metadata.sqlite")
    for key in ("background", "background_set", "metadata", "files"):
        del manifest[key]
    manifest["format_version"] = 1
    (idx / "manifest.json").write_text(json.dumps(manifest))
    res = run("index", "info", "--index", idx)
    assert res.exit_code == 2 and f"matcher index rebuild --index {idx}" in res.stderr
    res = run("index", "rebuild", "--index", idx)
    assert res.exit_code == 0 and "rebuilt" in res.output and "24 references, 2 titles" in res.output
    info = json.loads(run("index", "info", "--index", idx, "--json").output)
    assert info["format_version"] == 2 and info["background_set"]["images"] == 751
    assert info["calibration_probes"]["unknown"] > 500
