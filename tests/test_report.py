"""JSONL/CSV/summary/HTML report writers: crash safety, resume index, escaping."""

from __future__ import annotations

import csv
import json

import pytest

from matcher.write.report import (
    CsvReport,
    JsonlReport,
    ReportError,
    format_summary,
    latest_file_records,
    read_records,
    summarize,
    write_html,
)


def rec(path, sha="ab" * 32, status="matched", title="Alpha", conf=0.9, record="file", **kw):
    return {
        "record": record,
        "path": path,
        "sha256": sha,
        "size": 10,
        "kind": "image",
        "status": status,
        "reason": None,
        "title": title if status == "matched" else None,
        "confidence": conf,
        "candidates": [{"title": title or "Alpha", "score": conf}],
        "evidence": [
            {"title": title or "Alpha", "reference": "ref/a.png", "similarity": 0.8, "timestamp": None}
        ],
        "error": None,
        **kw,
    }


def test_jsonl_append_resume_and_torn_tail(tmp_path):
    out = tmp_path / "r.jsonl"
    with JsonlReport(out) as r:
        r.write({"record": "run"})  # every report of ours opens with its run's custody line
        r.write(rec("a.png"))
        r.write(rec("v.mp4", record="still", timestamp=0.0))
        r.write(rec("v.mp4", record="still", timestamp=2.0))
    # a killed run left half a line
    with open(out, "ab") as fh:
        fh.write(b'{"record": "file", "path": "b.png", "sha2')
    with JsonlReport(out) as r:
        assert r.repaired_bytes > 0
        assert r.is_done("a.png", "ab" * 32)
        assert not r.is_done("a.png", "cd" * 32)  # same path, other content: not done
        assert not r.is_done("b.png", "ab" * 32)
        assert set(r.parts_of("v.mp4", "ab" * 32)) == {("still", 0.0), ("still", 2.0)}
        r.write(rec("v.mp4"))
        assert r.parts_of("v.mp4", "ab" * 32) == {}
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert all(json.loads(x) for x in lines) and len(lines) == 5


def test_jsonl_lock_refuses_second_writer(tmp_path):
    out = tmp_path / "r.jsonl"
    with JsonlReport(out):
        with pytest.raises(ReportError, match="in use"):
            JsonlReport(out)


def test_odd_names_round_trip(tmp_path):
    out = tmp_path / "r.jsonl"
    names = ["a\nb.png", "<script>alert(1)</script>.png", "日本語 ファイル.png", "bad\udcffbyte.png"]
    with JsonlReport(out) as r:
        r.write({"record": "run"})
        for n in names:
            r.write(rec(n))
    assert [x["path"] for x in read_records(out) if x["record"] == "file"] == names
    with JsonlReport(out) as r:
        assert all(r.is_done(n, "ab" * 32) for n in names)


def test_csv_mirror_rebuilt_and_formula_safe(tmp_path):
    out = tmp_path / "r.jsonl"
    with JsonlReport(out) as r:
        r.write({"record": "run"})
        r.write(rec("=HYPERLINK(1).png"))
        r.write(rec("x\ny.png", status="unknown", title=None, conf=0.2))
    c = CsvReport(tmp_path / "r.csv", source=out)
    c.write(rec("z.png", status="error", title=None, conf=0.0, reason="truncated"))
    c.close()
    rows = list(csv.DictReader(open(tmp_path / "r.csv", newline="", encoding="utf-8")))
    assert [r["path"] for r in rows] == ["'=HYPERLINK(1).png", "x\ny.png", "z.png"]
    assert rows[0]["candidates"].startswith("Alpha=0.9")


def test_summary():
    files = [
        rec("a", conf=0.9),
        rec("b", conf=0.7),
        rec("c", title="Beta", conf=0.5),
        rec("d", status="unknown", title=None, conf=0.1),
        rec("e", status="skipped", title=None),
        rec("f", status="error", title=None),
    ]
    s = summarize(files)
    alpha = next(t for t in s["titles"] if t["title"] == "Alpha")
    assert alpha == {"title": "Alpha", "files": 2, "unknown": 1, "mean_confidence": 0.8}
    assert s["totals"] == {"files": 6, "matched": 3, "unknown": 1, "skipped": 1, "error": 1}
    assert "Alpha" in format_summary(s)


def test_latest_file_records_dedupes():
    rs = [rec("a", conf=0.1), rec("b"), rec("a", sha="cd" * 32, conf=0.3), {"record": "summary"}]
    assert [(r["path"], r["confidence"]) for r in latest_file_records(rs)] == [("a", 0.3), ("b", 0.9)]


def test_html_escapes_and_is_self_contained(tmp_path):
    evil = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>.png'
    records = [rec(evil), rec("u.png", status="unknown", title=None, conf=0.2), rec("z", status="error")]
    out = write_html(tmp_path / "r.html", records, {"tool": "matcher <b>x</b>", "time": "now"})
    text = out.read_text()
    assert "<script>document" not in text and "&lt;script&gt;document" in text
    assert "<b>x</b>" not in text
    assert "Content-Security-Policy" in text
    assert "http://" not in text and "https://" not in text
    assert text.count("<script>") == 1
