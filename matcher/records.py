"""What a match returns: plain dataclasses that serialise to the `match --json` schema.

The JSON field names are a public contract (see README): fields may be added, never renamed or dropped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field


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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """`matched`, `unknown` or `error` (batch reports add `skipped` for files that are not media)."""
        if self.error is not None:
            return "error"
        return "matched" if self.title is not None else "unknown"

    def to_dict(self) -> dict:
        """The `match --json` object for this result."""
        out = {
            "path": self.path,
            "sha256": self.sha256,
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
            "error": self.error,
            "calibration_warning": self.calibration_warning,
            "threshold": None if self.threshold is None else round(float(self.threshold), 6),
            "override_changed": self.override_changed,
            "identical": self.identical,
            "tie": list(self.tie),
        }
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        return out

    @classmethod
    def failed(cls, path: str | None, reason: str, sha256: str | None = None) -> MatchResult:
        return cls(path=path, sha256=sha256, title=None, confidence=0.0, error=reason)


__all__ = ["Evidence", "TitleScore", "MatchResult", "asdict"]


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
