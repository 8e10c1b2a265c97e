"""One error type for one input (issue 16): plain `index add` / `match` and dump mode report an
unusable input through matcher.errors.ItemError, with the same status words as the reports."""

from __future__ import annotations

from conftest import write_frames

from matcher import Matcher
from matcher.decode import decoder
from matcher.errors import STATUSES, ItemError
from matcher.write import report


def test_index_add_reports_errors_and_duplicates_as_item_errors_with_a_status(tmp_path):
    frames = write_frames(tmp_path / "refs", "Sunny Farm", range(3))
    (tmp_path / "refs" / "notes.txt").write_text("not a picture\n")
    m = Matcher.create(tmp_path / "idx", model="classic")
    m.add(frames[:2], title="Sunny Farm")
    seen: list = []
    m.add([tmp_path / "refs"], title="Sunny Farm", on_error=seen.append)
    by_name = {e.path.rsplit("/", 1)[-1]: e for e in seen}
    assert all(isinstance(e, ItemError) for e in seen)
    assert by_name["notes.txt"].status == "skipped"  # not a picture: deliberately not added, as in dump mode
    assert by_name[frames[0].name].status == "skipped"  # already in the index: deliberately not added
    assert "already in the index" in by_name[frames[0].name].reason


def test_dump_problems_are_the_same_type_and_use_the_report_statuses():
    problem = decoder._problem("not a regular file", "skipped", "special")
    assert isinstance(problem, ItemError)
    assert (problem.status, problem.reason, problem.kind, problem.path) == (
        "skipped",
        "not a regular file",
        "special",
        None,
    )
    assert set(STATUSES) <= set(report.STATUSES)
