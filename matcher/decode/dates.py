"""When a picture was made, as its file says: EXIF DateTimeOriginal of an image, creation_time of a video
container (read by the decoder, shown by the timeline of matcher.insight)."""

from __future__ import annotations

import datetime as dt


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
