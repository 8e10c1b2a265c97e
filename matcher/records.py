"""What a match returns: plain dataclasses that serialise to the `match --json` schema.

The JSON field names are a public contract (see README): fields may be added, never renamed or dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

#: What a report line is: a file's verdict, one still of a video, one frame of an animation / page
#: of a TIFF, a run's header, its summary.
FILE, STILL, FRAME, RUN, SUMMARY = "file", "still", "frame", "run", "summary"


def one_line(text, limit: int = 300) -> str:
    """A reason as one line of at most `limit` characters (valid UTF-8)."""
    s = " ".join(str(text).split())
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(frozen=True)
class Evidence:
    """One reference still that supports a title: the neighbour the decision rests on."""

    title: str
    reference: str  # source path of the reference still, as recorded when it was indexed
    similarity: float  # inner product of the two vectors: cosine for clip; for classic at most the
    # query's coverage (a grey query shows ~0.6 of the descriptor, so ~0.6 even against its own original)
    timestamp: float | None = None  # seconds into the reference video, None for still images
    episode: str | None = None
    timestamp_end: float | None = None  # the still stands for [timestamp, timestamp_end] of the video
    sha256: str | None = None  # of the reference file, as recorded when it was indexed


@dataclass(frozen=True)
class TitleScore:
    """A candidate title and its calibrated score (probability that this title is the right one)."""

    title: str
    score: float


@dataclass
class MatchResult:
    """The answer for one input (a file, a PIL image, or one still of a video).

    `title` is None when nothing in the index fits well enough ("unknown"); `confidence` is then the
    probability the best candidate would have been right. `error` carries a one-line reason when the
    input could not be read; the other fields are then empty.
    """

    path: str | None
    sha256: str | None
    title: str | None
    confidence: float
    candidates: list[TitleScore] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    error: str | None = None
    timestamp: float | None = None  # seconds into the query video, for stills sampled from a video
    # one line when the confidence rests on too few calibration probes (scoring.Calibration.warning)
    calibration_warning: str | None = None
    threshold: float | None = None  # the unknown threshold applied to this input (the override if given)
    # True when --min-confidence changed the verdict from what the index's own threshold gives
    override_changed: bool = False
    # {"reference", "sha256", "title"}: the input is byte for byte a reference file of the index
    identical: dict | None = None
    tie: list[str] = field(default_factory=list)  # titles tied for first place (then title is None)
    frame: int | None = None  # frame of an animation / page of a TIFF, for stills from one
    error_status: str = "error"  # with `error`: "error" (could not be read) or "skipped" (not media)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """`matched`, `unknown`, or for an input that gave no verdict `error` / `skipped` (not media,
        a link not followed)."""
        if self.error is not None:
            return self.error_status
        return "matched" if self.title is not None else "unknown"

    def to_dict(self) -> dict:
        """The `match --json` object for this result: a report line (`report_record`), the same
        fields in every mode (plain match, dump reports, serve)."""
        record = STILL if self.timestamp is not None else FRAME if self.frame is not None else FILE
        where = {"timestamp": self.timestamp} if self.timestamp is not None else {}
        if self.frame is not None:
            where["frame"] = self.frame
        return report_record(record, self.path, self.sha256, **where, **verdict_fields(self))

    def verdict(self) -> dict:
        """The verdict's fields (no path, sha256 or position): see verdict_fields."""
        out = {
            "title": self.title,
            "confidence": round(float(self.confidence), 6),
            "candidates": [{"title": c.title, "score": round(float(c.score), 6)} for c in self.candidates],
            "evidence": [
                {
                    "title": e.title,
                    "reference": e.reference,
                    "similarity": round(float(e.similarity), 6),
                    "timestamp": e.timestamp,
                    "sha256": e.sha256,
                }
                | ({"episode": e.episode} if e.episode is not None else {})
                | ({"timestamp_end": e.timestamp_end} if e.timestamp_end is not None else {})
                for e in self.evidence
            ],
            "calibration_warning": self.calibration_warning,
            "threshold": None if self.threshold is None else round(float(self.threshold), 6),
            "override_changed": self.override_changed,
            "identical": self.identical,
            "tie": list(self.tie),
        }
        return out

    @classmethod
    def failed(
        cls, path: str | None, reason: str, sha256: str | None = None, status: str = "error"
    ) -> MatchResult:
        return cls(path=path, sha256=sha256, title=None, confidence=0.0, error=reason, error_status=status)


# -- the one record schema: every line of a report, every `match --json` object, every serve answer --
def report_record(record: str | None, path, sha256, **fields) -> dict:
    """One report line with every field present (file verdicts and video stills / frames alike):
    record, path, sha256, size, kind, status, reason, title, confidence, candidates, evidence,
    error, plus `fields`. An error's reason is also its `error`."""
    rec = {
        "record": record,
        "path": path,
        "sha256": sha256,
        "size": None,
        "kind": None,
        "status": None,
        "reason": None,
        "title": None,
        "confidence": 0.0,
        "candidates": [],
        "evidence": [],
        "error": None,
    }
    rec.update(fields)
    if rec["status"] == "error":
        rec["error"] = rec["reason"]
    return rec


def verdict_fields(result: MatchResult) -> dict:
    """A MatchResult's verdict as report fields: its status and one-line reason (verdict_note, or
    the error) with the verdict itself."""
    reason = result.error if result.error is not None else verdict_note(result)
    return {**result.verdict(), "status": result.status, "reason": reason}


def verdict_note(r: MatchResult) -> str | None:
    """The one-line reason of a verdict that is not a plain match by similarity."""
    notes = []
    if r.identical:
        ref = r.identical
        notes.append(f"byte-identical to reference {ref['reference']} (sha256 {ref['sha256']})")
    if r.tie:
        notes.append(f"tie between {' and '.join(r.tie)}: no title chosen")
    if r.override_changed:
        notes.append(f"verdict changed by --min-confidence {r.threshold:g}")
    return "; ".join(notes) or None


def aggregate(parts: list[dict], kind: str) -> dict:
    """Verdict of a video / multi-frame file from its part records (majority of matched stills)."""
    ok = [p for p in parts if p.get("status") in ("matched", "unknown")]
    unit = "stills" if kind == "video" else "frames"
    if not ok:
        first = next(
            (p.get("reason") or p.get("error") for p in parts if p.get("reason") or p.get("error")), None
        )
        return {
            "status": "error",
            "title": None,
            "confidence": 0.0,
            "candidates": [],
            "evidence": [],
            "reason": f"no {unit} could be matched" + (f": {first}" if first else ""),
        }
    # One statistic per title, used for both the verdict and the candidates (so they never disagree):
    # the stills that matched it, the stills whose best candidate it is, and their mean confidence.
    votes = Counter(p["title"] for p in ok if p.get("status") == "matched")
    nearest: dict[str, list[float]] = defaultdict(list)
    for p in ok:
        if p.get("candidates"):
            nearest[p["candidates"][0]["title"]].append(float(p.get("confidence") or 0.0))
    for t in votes:
        nearest.setdefault(t, [])
    stat = {t: (votes.get(t, 0), len(c), round(sum(c) / len(c), 6) if c else 0.0) for t, c in nearest.items()}
    order = sorted(stat, key=lambda t: (-stat[t][0], -stat[t][1], -stat[t][2], t))
    candidates = [
        {"title": t, "score": stat[t][2], "matched": stat[t][0], "nearest": stat[t][1]} for t in order
    ]
    tie: list[str] = []
    if order:
        tie = [t for t in order if stat[t] == stat[order[0]]]
        tie = tie if len(tie) > 1 else []
    if votes and not tie:
        title = order[0]
        support = [p for p in ok if p.get("title") == title]
        confidence = stat[title][2]
        status = "matched"
        reason = f"{votes[title]} of {len(parts)} {unit} matched {title}"
        others = {t: n for t, n in votes.items() if t != title}
        if others:
            reason += "; others: " + ", ".join(
                f"{t} ({n})" for t, n in sorted(others.items(), key=lambda x: -x[1])
            )
    else:
        title = None
        support = ok
        confidence = stat[order[0]][2] if order else 0.0
        status = "unknown"
        if tie:
            reason = f"tie between {' and '.join(tie)} ({stat[tie[0]][0]} {unit} each): no title chosen"
        else:
            reason = f"none of {len(parts)} {unit} matched a title"
    evidence = []
    for p in support:
        for e in p.get("evidence") or []:
            if title is None or e.get("title") == title:
                where = (
                    {"query_timestamp": p.get("timestamp")}
                    if kind == "video"
                    else {"query_frame": p.get("frame")}
                )
                evidence.append({**e, **where})
    evidence.sort(key=lambda e: -float(e.get("similarity") or 0))
    seen_refs: set = set()
    unique = []
    for e in evidence:  # one entry per reference still: the leak still that matched it best
        ref = (e.get("reference"), e.get("timestamp"))
        if ref not in seen_refs:
            seen_refs.add(ref)
            unique.append(e)
    evidence = unique
    errors = sum(1 for p in parts if p.get("status") == "error")
    if errors:
        reason += f"; {errors} {unit} could not be decoded"
    return {
        "status": status,
        "title": title,
        "confidence": round(confidence, 6),
        "candidates": candidates[:10],
        "evidence": evidence[:8],
        "reason": reason,
        "tie": tie,
        # conservative: at least one still's verdict was changed by --min-confidence
        "override_changed": any(p.get("override_changed") for p in ok),
    }


__all__ = ["Evidence", "TitleScore", "MatchResult", "asdict", "report_record", "verdict_fields", "aggregate"]


# -- text for terminals and JSON lines (names come from a hostile dump) -------------------------------
#: Characters that would split a row or reorder what a terminal shows: C0/C1 controls, bidi
#: embeddings/overrides/isolates and marks, line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def safe_text(value) -> str:
    """One line of plain text for a terminal: controls and bidi overrides escaped (\\n, \\u202e),
    bytes that are not UTF-8 (surrogate escapes from the file system) shown as \\xNN."""
    s = str(value)
    if any("\ud800" <= c <= "\udfff" for c in s):
        try:
            s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that is not an escaped byte
            s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), s)


def json_line(record: dict) -> str:
    """One valid JSON line. A path that is not UTF-8 keeps its exact bytes in `path_bytes` (hex), and
    its undecodable bytes appear as JSON escapes (\\udcXX) instead of raw bytes."""
    path = record.get("path")
    if isinstance(path, str) and any("\ud800" <= c <= "\udfff" for c in path):
        record = dict(record, path_bytes=os.fsencode(path).hex())
    text = json.dumps(record, ensure_ascii=False, default=str)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
