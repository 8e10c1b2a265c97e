"""The work over time: files per day, per production (title) and per cluster.

A file's date is its embedded date when it has one (EXIF DateTimeOriginal, a video container's
creation_time: set when the picture was made), else its modification time in the dump (when the
file was last written on the server). Days are UTC."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable


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


def exif_date(im) -> str | None:
    """EXIF DateTimeOriginal (else DateTime) of a Pillow image as 'YYYY-MM-DDTHH:MM:SS', or None."""
    try:
        exif = im.getexif()
        value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no date, not an error
        return None
    return normalise_date(value)


def normalise_date(value) -> str | None:
    """'2024:05:01 10:00:00' / '2024-05-01T10:00:00.000000Z' -> '2024-05-01T10:00:00'; junk -> None."""
    if not isinstance(value, str):
        return None
    v = value.strip().replace("\x00", "")
    if len(v) < 10:
        return None
    date = v[:10].replace(":", "-")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        return None
    clock = v[11:19] if len(v) >= 19 else ""
    ok = len(clock) == 8 and clock[2] == ":" and clock[5] == ":" and clock.replace(":", "").isdigit()
    return date + ("T" + clock if ok else "")
