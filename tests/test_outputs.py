"""What matcher writes can be trusted: it never overwrites a file that is not its own report, resumes
a report only under the same index and verdict options, fingerprints every index file in the chain
of custody, and prints names from a hostile dump so that they cannot split rows, reorder text or
break JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_frame
from typer.testing import CliRunner

from matcher.cli import app
from matcher.write.report import read_records

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line_error(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matcher: error: "), res.stderr
    return lines[0]


@pytest.fixture()
def small_dump(tmp_path, library):
    d = tmp_path / "dump"
    d.mkdir()
    for title in library:
        shutil.copyfile(library[title][1], d / f"{title.replace(' ', '_')}.png")
    return d


def dump_args(dump_dir, index, *extra):
    return ("match", dump_dir, "--index", index, "--workers", "1", "--quiet", *extra)


# ------------------------------------------------------------------------------------- never clobber
def test_out_onto_a_file_that_is_not_a_report_is_refused_untouched(tmp_path, small_dump, built_index):
    victim = tmp_path / "x.bmp"
    victim.write_bytes(b"BM" + bytes(range(256)) * 10 + b"\nno newline at the end")
    before = victim.read_bytes()
    line = one_line_error(run(*dump_args(small_dump, built_index, "--out", victim)))
    assert "x.bmp: exists and is not a matcher JSONL report; refusing to overwrite it" in line
    assert victim.read_bytes() == before


@pytest.mark.parametrize("flag", ["--csv", "--html"])
def test_csv_or_html_onto_a_foreign_file_is_refused_untouched(tmp_path, small_dump, built_index, flag):
    victim = small_dump / "Ice_Kingdom.png"  # a picture inside the dump itself
    before = victim.read_bytes()
    out = tmp_path / "r.jsonl"
    line = one_line_error(run(*dump_args(small_dump, built_index, "--out", out, flag, victim)))
    assert "Ice_Kingdom.png: exists and is not a matcher" in line and "refusing to overwrite" in line
    assert victim.read_bytes() == before
    assert not out.exists() or out.read_bytes() == b""  # refused before the run started


def test_our_own_reports_are_resumed_and_rewritten(tmp_path, small_dump, built_index):
    out, csv_path, html = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "r.html"
    args = dump_args(small_dump, built_index, "--out", out, "--csv", csv_path, "--html", html)
    assert run(*args).exit_code == 0
    res = run(*args)
    assert res.exit_code == 0, res.stderr
    assert "(3 already in the report)" in res.output


# ------------------------------------------------------------------------------------- resume rules
def test_resume_refuses_another_index_or_verdict_option_and_new_section_starts_afresh(
    tmp_path, small_dump, built_index, library
):
    out = tmp_path / "r.jsonl"
    assert run(*dump_args(small_dump, built_index, "--out", out)).exit_code == 0
    before = out.read_bytes()

    line = one_line_error(run(*dump_args(small_dump, built_index, "--out", out, "--min-confidence", "0.9")))
    assert "not resumed: min_confidence was None, this run has 0.9" in line and "--new-section" in line

    other = tmp_path / "other"
    shutil.copytree(built_index, other)
    extra = tmp_path / "extra.png"
    draw_frame("Ice Kingdom", 999).save(extra)  # new content: the same file under a second title is refused
    assert run("index", "add", "--index", other, "--title", "Extra", extra).exit_code == 0
    line = one_line_error(run(*dump_args(small_dump, other, "--out", out)))
    assert "not resumed: index_fingerprint was 'sha256:" in line
    assert out.read_bytes() == before  # a refused run writes nothing

    res = run(*dump_args(small_dump, other, "--out", out, "--new-section"))
    assert res.exit_code == 0, res.stderr
    records = list(read_records(out))
    runs = [i for i, r in enumerate(records) if r["record"] == "run"]
    assert len(runs) == 2 and records[runs[1]]["new_section"] is True
    section = records[runs[1] :]
    assert len([r for r in section if r["record"] == "file"]) == 3  # every file matched again
    assert section[-1]["record"] == "summary" and section[-1]["totals"]["files"] == 3
    # the new section resumes under its own options
    res = run(*dump_args(small_dump, other, "--out", out))
    assert res.exit_code == 0 and "(3 already in the report)" in res.output


def test_custody_fingerprint_covers_every_file_of_the_generation(tmp_path, small_dump, built_index):
    out = tmp_path / "r.jsonl"
    assert run(*dump_args(small_dump, built_index, "--out", out)).exit_code == 0
    (custody,) = [r for r in read_records(out) if r["record"] == "run"]
    manifest = json.loads((built_index / "manifest.json").read_text())
    names = {manifest[k] for k in ("vectors", "probes", "metadata", "background")}
    assert set(custody["index_files"]) == names
    for name, digest in custody["index_files"].items():
        assert digest == hashlib.sha256((built_index / name).read_bytes()).hexdigest()
    assert custody["index_fingerprint"] == (
        "sha256:" + hashlib.sha256((built_index / "manifest.json").read_bytes()).hexdigest()
    )


# ------------------------------------------------------------------------------------- names
def test_plain_match_escapes_controls_and_bidi_overrides(tmp_path, built_index, library):
    name = "a\nb\tc\r\u202egnp.exe.png"
    path = tmp_path / name
    shutil.copyfile(library["Night Patrol"][0], path)
    res = run("match", path, "--index", built_index)
    assert res.exit_code == 0
    lines = res.stdout.split("\n")
    assert len(lines) == 3 and lines[2] == ""  # header, one row, final newline
    assert "a\\nb\\tc\\r\\u202egnp.exe.png\t\tmatched\tNight Patrol" in lines[1]
    assert "\r" not in res.stdout and "\u202e" not in res.stdout


def test_json_lines_stay_valid_for_names_that_are_not_utf8(tmp_path, built_index, library):
    d = tmp_path.as_posix().encode() + b"/dump"
    os.makedirs(d)
    shutil.copyfile(library["Night Patrol"][0], d + b"/cel-\xff.png")
    shutil.copyfile(library["Ice Kingdom"][0], d + b"/ok.png")
    p = subprocess.run(
        [sys.executable, "-m", "matcher.cli", "match", "--json", "--index", str(built_index), os.fsdecode(d)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode("utf-8").splitlines()  # strict UTF-8: no raw 0xff byte
    records = [json.loads(line) for line in lines]
    odd = next(r for r in records if "path_bytes" in r)
    assert bytes.fromhex(odd["path_bytes"]) == d + b"/cel-\xff.png"
    assert os.fsencode(odd["path"]) == d + b"/cel-\xff.png" and odd["title"] == "Night Patrol"
