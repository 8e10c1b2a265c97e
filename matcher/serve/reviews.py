"""Dump reports given with `--report`, and the reviewers' decisions about their verdicts.

The review log is a JSONL file written like a dump report (`matcher.write.report.JsonlReport`: one
``os.write`` per line on an O_APPEND descriptor, fsync-ed before the request is answered, an
exclusive lock so two servers never interleave, a torn tail repaired on open). It is append-only:
a later decision about the same verdict is a new line, and the export shows the latest one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from matcher.write import report as rpt

REVIEW = "review"
DECISIONS = ("confirm", "reject", "relabel")
MAX_REASON = 2000
MAX_NAME = 200


class ReviewError(ValueError):
    """A decision that cannot be recorded; str() is one line for the reviewer."""


class Report:
    """One dump report, read once at start-up (its verdicts, and the sha256 of the file as read)."""

    def __init__(self, number: int, path: str | Path):
        self.number = number
        self.path = Path(path).resolve()
        data = self.path.read_bytes()  # OSError: the caller names the file
        self.sha256 = hashlib.sha256(data).hexdigest()
        # parsed from the bytes that were hashed, so the sha256 is that of what was read
        self.records: list[dict] = list(rpt.parse_records(data.splitlines(keepends=True)))
        if not any(r.get("record") in (rpt.FILE, rpt.RUN) for r in self.records):
            raise ValueError("not a matcher dump report (no run or file lines)")
        self.files = rpt.latest_file_records(self.records)
        self.run = next((r for r in self.records if r.get("record") == rpt.RUN), {})

    @property
    def name(self) -> str:
        return self.path.name

    def titles(self) -> list[str]:
        return sorted({r["title"] for r in self.files if r.get("title")})

    def filtered(
        self,
        title: str | None = None,
        status: str | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
    ) -> list[dict]:
        out = []
        for r in self.files:
            best = (r.get("candidates") or [{}])[0].get("title")
            if title and r.get("title") != title and not (r.get("title") is None and best == title):
                continue
            if status and r.get("status") != status:
                continue
            conf = float(r.get("confidence") or 0.0)
            if min_confidence is not None and conf < min_confidence:
                continue
            if max_confidence is not None and conf > max_confidence:
                continue
            out.append(r)
        return out

    def verdict(self, path: str, sha256: str | None) -> dict | None:
        for r in self.files:
            if r.get("path") == path and r.get("sha256") == sha256:
                return {
                    "title": r.get("title"),
                    "confidence": r.get("confidence"),
                    "status": r.get("status"),
                    "path": path,
                }
        return None

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.files:
            counts[r.get("status") or "?"] = counts.get(r.get("status") or "?", 0) + 1
        return {
            "id": self.number,
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "files": len(self.files),
            "statuses": counts,
            "titles": self.titles(),
        }


class ReviewLog:
    """Append-only, fsync-ed JSONL log of reviewer decisions."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.lock = threading.Lock()
        self.log = rpt.JsonlReport(self.path, fsync=True)  # ReportError: locked by another server

    def record(
        self,
        *,
        reviewer: str,
        decision: str,
        reason: str,
        subject: dict,
        overrides: dict,
        title: str | None = None,
        index: dict | None = None,
    ) -> dict:
        reviewer = " ".join(str(reviewer or "").split())[:MAX_NAME]
        reason = str(reason or "").strip()[:MAX_REASON]
        if not reviewer:
            raise ReviewError("who is deciding? a reviewer name is required")
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if not reason:
            raise ReviewError("a reason is required")
        if decision == "relabel":
            title = " ".join(str(title or "").split())[:MAX_NAME]
            if not title:
                raise ReviewError("relabel needs the title the reviewer gives instead")
            if title == overrides.get("title"):
                raise ReviewError(f"relabel to {title!r} is the verdict itself; use confirm")
        elif decision == "confirm":
            if overrides.get("title") is None:
                raise ReviewError("an unknown verdict cannot be confirmed; relabel it or reject it")
            title = overrides.get("title")
        else:
            title = None
        rec = {
            "record": REVIEW,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "reviewer": reviewer,
            "decision": decision,
            "title": title,
            "reason": reason,
            "subject": subject,
            "overrides": overrides,
        }
        if index is not None:
            rec["index"] = index
        with self.lock:
            self.log.write(rec)
        return rec

    def entries(self) -> list[dict]:
        with self.lock:
            return [r for r in rpt.read_records(self.path) if r.get("record") == REVIEW]

    def close(self) -> None:
        self.log.close()


def export(report: Report, reviews: list[dict]) -> Iterator[bytes]:
    """The report as read, each file line with the latest decision about it added as ``review``,
    then every decision about this report (the full history) as ``review`` lines."""
    mine = [
        r
        for r in reviews
        if (r.get("subject") or {}).get("report_sha256") == report.sha256
        or (r.get("subject") or {}).get("report") == str(report.path)
    ]
    latest: dict[tuple, dict] = {}
    for r in mine:
        s = r.get("subject") or {}
        latest[(s.get("path"), s.get("sha256"))] = r
    for rec in report.records:
        if rec.get("record") == rpt.FILE:
            r = latest.get((rec.get("path"), rec.get("sha256")))
            if r is not None:
                rec = {
                    **rec,
                    "review": {k: r[k] for k in ("decision", "title", "reason", "reviewer", "time_utc")},
                }
        yield rpt._dumps(rec)
    for r in mine:
        yield rpt._dumps(r)
