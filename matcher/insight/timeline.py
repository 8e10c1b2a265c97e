"""The work over time: files per day, per production (title) and per cluster.

A file's date is its embedded date when it has one (EXIF DateTimeOriginal, a video container's
creation_time: set when the picture was made), else its modification time in the dump (when the
file was last written on the server). Days are UTC."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable

from matcher.decode.dates import exif_date, normalise_date  # noqa: F401 - the timeline's dates


def file_day(rec: dict) -> str | None:
    """YYYY-MM-DD of a file line, or None when it records no date."""
    emb = rec.get("embedded_date")
    if isinstance(emb, str) and len(emb) >= 10 and emb[4] == "-" and emb[7] == "-":
        return emb[:10]
    m = rec.get("mtime")
    if isinstance(m, (int, float)):
        try:
            return dt.datetime.fromtimestamp(m, tz=dt.timezone.utc).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):
            return None
    return None


def files_per_day(records: Iterable[dict], key) -> dict[str, dict[str, int]]:
    """{series: {day: files}} for the file records; ``key(rec)`` names the series (None: left out)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        name = key(rec)
        day = file_day(rec)
        if name is None or day is None:
            continue
        out[str(name)][day] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
