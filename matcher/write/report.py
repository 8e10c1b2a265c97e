"""Evidence reports for a dump run: an append-only JSONL log (the source of truth), a CSV mirror,
a per-title summary and a self-contained HTML report an investigator can hand to a lawyer.

JSONL report
    One JSON object per line, written with a single ``os.write`` on an ``O_APPEND`` descriptor and
    ``fsync``-ed before the next line, so a run killed at any moment leaves only complete lines (a
    torn tail from a power cut is truncated back to the last newline when the report is reopened).
    Each line has a ``record`` field:

    - ``run``      chain-of-custody header of one run (tool version, index/model fingerprints, time)
    - ``file``     the verdict for one input file: exactly one per (path, sha256) across all runs
    - ``still``    one still sampled from a video (``timestamp`` in seconds), written before its file line
    - ``frame``    one frame/page of an animated or multi-page image (``frame`` index)
    - ``summary``  the per-title summary at the end of a run (the last one covers the whole report)

    File and part lines carry the `MatchResult.to_dict` fields (path, sha256, title, confidence,
    candidates, evidence, error, timestamp) plus size, status (matched/unknown/skipped/error), reason
    and kind. Resuming is keyed by (path, sha256): a file with a ``file`` line is done; the part lines
    of a file interrupted mid-way are kept and reused, never written twice.

CSV mirror
    Rebuilt from the JSONL at the start of every run (so it can never disagree with it or carry a
    torn row) and then appended to line by line. Cells that a spreadsheet would evaluate as a formula
    (leading ``= + - @``, tab, CR) are prefixed with ``'``: file names come from a hostile server.

HTML report
    A single file with no external loads (a CSP meta forbids them; thumbnails are ``data:`` URIs; the
    one inline script and stylesheet are allowed by hash). Every string from the dump is escaped.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import errno
import hashlib
import html
import io
import json
import math
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from matcher.errors import MatcherError
from matcher.records import FILE, FRAME, RUN, STILL, SUMMARY  # noqa: F401 - report.FILE etc.

PART_RECORDS = (STILL, FRAME)
STATUSES = ("matched", "unknown", "skipped", "error")

CSV_FIELDS = [
    "path",
    "record",
    "frame",
    "timestamp",
    "sha256",
    "size",
    "kind",
    "status",
    "reason",
    "title",
    "confidence",
    "candidates",
    "evidence",
]


#: Descriptors of open reports. Forked decode workers close them first thing, so that a worker
#: never holds the report's flock (or a copy of its descriptor) after the run ends.
OPEN_FDS: set[int] = set()


class ReportError(MatcherError):
    """The report file itself cannot be used (locked by another run, unwritable, not a report)."""


#: What each output of ours starts with: a file that does not is never truncated, appended to or
#: replaced (an --out / --csv / --html mistyped onto evidence must not destroy it).
_HTML_MARK = b"<title>matcher evidence report"


def check_ours(path: str | os.PathLike, kind: str) -> None:
    """Raise ReportError unless ``path`` is absent, empty, or one of our ``kind`` outputs
    ('jsonl', 'csv', 'html'). Reads at most the first 64 KiB, without following a link."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ReportError(f"{path}: is a symbolic link; refusing to write a report through it") from None
        raise ReportError(f"{path}: cannot read the existing file ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReportError(f"{path}: not a regular file; refusing to write a report there")
        head = os.read(fd, 1 << 16) if st.st_size else b""
    finally:
        os.close(fd)
    if not head:
        return
    if kind == "jsonl":
        first = head.split(b"\n", 1)[0]
        try:
            ours = json.loads(first).get("record") == RUN
        except (ValueError, AttributeError):
            # the first line torn by a power cut while it was written
            ours = b"\n" not in head and head.startswith(b'{"record": "run"')
    elif kind == "csv":  # our header, whatever columns a later version adds
        header = next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8", "replace")]), [])
        ours = {"path", "record", "sha256", "status"} <= set(header)
    else:
        ours = _HTML_MARK in head
    if not ours:
        raise ReportError(
            f"{path}: exists and is not a matcher {kind.upper()} report; refusing to overwrite it "
            f"(choose another file name)"
        )


#: Fields of a run record that change verdicts: a report is resumed only when they are the same.
VERDICT_FIELDS = (
    "index_fingerprint",
    "model_spec",
    "model_fingerprint",
    "min_confidence",
    "every_s",
    "all_frames",
    "max_pixels",
)


def run_difference(previous: dict, current: dict) -> str | None:
    """The first verdict-changing option in which two run records differ, as words, or None."""
    for key in VERDICT_FIELDS:
        if previous.get(key) != current.get(key):
            return f"{key} was {previous.get(key)!r}, this run has {current.get(key)!r}"
    return None


def part_key(rec: dict) -> tuple:
    """Identity of a part line inside its file: ('still', t) or ('frame', i)."""
    if rec.get("record") == STILL:
        return (STILL, round(float(rec.get("timestamp") or 0.0), 3))
    return (FRAME, int(rec.get("frame") or 0))


def _dumps(rec: dict) -> bytes:
    # ensure_ascii=False keeps names readable; a lone surrogate (undecodable byte in a file name) is
    # written as its JSON escape by backslashreplace, which json.loads reads back unchanged.
    return (json.dumps(rec, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def section_records(path: str | os.PathLike) -> Iterator[dict]:
    """The records of the report's last section (from its last ``new_section`` run record on)."""
    start = 0
    for n, rec in enumerate(read_records(path)):
        if rec.get("record") == RUN and rec.get("new_section"):
            start = n
    for n, rec in enumerate(read_records(path)):
        if n >= start:
            yield rec


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Complete, valid JSON lines of a report (a torn last line or a corrupt line is skipped)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        yield from parse_records(fh)


def parse_records(lines: Iterable[bytes]) -> Iterator[dict]:
    """The records among a report's lines (bytes, each with its newline): a torn last line ends
    them, a line that is not a JSON object is skipped."""
    for raw in lines:
        if not raw.endswith(b"\n"):
            break  # torn tail of a killed run
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


class JsonlReport:
    """Append-only, crash-safe JSONL report with a resume index keyed by (path, sha256).

    Opening takes an exclusive lock (two runs appending to one report would interleave), repairs a
    torn last line, and loads which files are already reported.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        # path -> sha256s with a verdict line. Only keys, never the records: a report of a million
        # files must not cost gigabytes to resume.
        self._done: dict[str, set[str | None]] = defaultdict(set)
        self._n_done = 0
        self._parts: dict[tuple[str, str | None], dict[tuple, dict]] = defaultdict(dict)
        self.repaired_bytes = 0
        self.bad_lines = 0
        #: the run record that opened the report's current section (None: an empty report)
        self.section_run: dict | None = None
        check_ours(self.path, "jsonl")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
            )
        except OSError as e:
            raise ReportError(f"{self.path}: cannot open report: {e.strerror or e}") from None
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ReportError(f"{self.path}: report is in use by another matcher run") from None
            raise ReportError(f"{self.path}: cannot lock report: {e.strerror or e}") from None
        OPEN_FDS.add(self.fd)
        try:
            check_ours(self.path, "jsonl")  # again, now that the lock is ours
        except ReportError:
            self.close()
            raise
        self._repair_tail()
        self._load()

    # -- opening ------------------------------------------------------------------------------------
    def _repair_tail(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        # Find the last newline, reading backwards in blocks.
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            chunk = os.pread(self.fd, pos - start, start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            os.ftruncate(self.fd, keep)
            self.repaired_bytes = size - keep

    def _load(self) -> None:
        for rec in read_records(self.path):
            if "record" not in rec:
                self.bad_lines += 1
                continue
            self._index(rec)

    def _index(self, rec: dict) -> None:
        kind = rec.get("record")
        if kind == RUN:
            if self.section_run is None or rec.get("new_section"):
                # a new section: the verdicts above it were reached under other options
                self.section_run = rec
                self._done.clear()
                self._parts.clear()
                self._n_done = 0
        elif kind == FILE:
            shas = self._done[rec.get("path")]
            if rec.get("sha256") not in shas:
                shas.add(rec.get("sha256"))
                self._n_done += 1
            self._parts.pop((rec.get("path"), rec.get("sha256")), None)
        elif kind in PART_RECORDS:
            key = (rec.get("path"), rec.get("sha256"))
            if not self.is_done(*key):
                self._parts[key][part_key(rec)] = rec

    # -- resume queries -----------------------------------------------------------------------------
    def is_done(self, path: str, sha256: str | None) -> bool:
        shas = self._done.get(path)
        return shas is not None and sha256 in shas

    def done_shas(self, path: str) -> frozenset:
        """The contents (sha256) of this path that already have a verdict line."""
        return frozenset(self._done.get(path, ()))

    def parts_of(self, path: str, sha256: str | None) -> dict[tuple, dict]:
        """Part lines already written for a file whose verdict line is missing (an interrupted run)."""
        return self._parts.get((path, sha256), {})

    @property
    def done_count(self) -> int:
        return self._n_done

    # -- writing ------------------------------------------------------------------------------------
    def write(self, rec: dict) -> None:
        """Append one record as one line, flushed to disk before returning."""
        data = _dumps(rec)
        _write_all(self.fd, data)
        if self.fsync:
            os.fsync(self.fd)
        self._index(rec)

    def close(self) -> None:
        if self.fd >= 0:
            OPEN_FDS.discard(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JsonlReport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- CSV ------------------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        s = f"{value:.6g}"
    else:
        s = str(value)
    if s.startswith(_FORMULA_START) and not _is_number(s):
        s = "'" + s
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def csv_row(rec: dict) -> list[str]:
    cands = "; ".join(f"{c['title']}={c['score']:.3f}" for c in rec.get("candidates") or [])
    ev = "; ".join(
        f"{e['title']} <- {e['reference']}"
        + (f" [episode {e['episode']}]" if e.get("episode") else "")
        + (f" @{format_ts(e['timestamp'])}" if e.get("timestamp") is not None else "")
        + f" ({e['similarity']:.3f})"
        + (f" sha256 {e['sha256']}" if e.get("sha256") else "")
        for e in rec.get("evidence") or []
    )
    row = dict(rec, candidates=cands, evidence=ev)
    return [_csv_cell(row.get(f)) for f in CSV_FIELDS]


class CsvReport:
    """CSV mirror of the JSONL report: rebuilt from it on open, then appended row by row."""

    def __init__(self, path: str | os.PathLike, source: str | os.PathLike | None = None):
        self.path = Path(path)
        check_ours(self.path, "csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(CSV_FIELDS)
                if source is not None:
                    for rec in section_records(source):
                        if rec.get("record") in (FILE, *PART_RECORDS):
                            w.writerow(csv_row(rec))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self.fh = open(self.path, "a", newline="", encoding="utf-8")
        except OSError as e:
            raise ReportError(f"{self.path}: cannot write CSV: {e.strerror or e}") from None
        self.writer = csv.writer(self.fh)

    def write(self, rec: dict) -> None:
        if rec.get("record") not in (FILE, *PART_RECORDS):
            return
        self.writer.writerow(csv_row(rec))
        self.fh.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


# -- summary ---------------------------------------------------------------------------------------
_SLIM = ("path", "sha256", "status", "title", "confidence")


def latest_file_records(records: Iterable[dict], slim: bool = False) -> list[dict]:
    """The current verdict of each path of a report (the latest line wins: a file that changed or
    became readable since an earlier run is counted once, as it is now), in first-seen order.

    ``slim`` keeps only what `summarize` needs (~10x less memory on a big report)."""
    seen: dict[str, dict] = {}
    for rec in records:
        if rec.get("record") == FILE:
            if slim:
                cands = rec.get("candidates") or []
                rec = {k: rec.get(k) for k in _SLIM} | {"candidates": cands[:1]}
            seen[rec.get("path")] = rec
    return list(seen.values())


def summarize(file_records: Iterable[dict]) -> dict:
    """Per-title summary: matched files, mean confidence, and unknown files whose best guess it was."""
    titles: dict[str, dict] = {}
    totals = {s: 0 for s in STATUSES}
    totals["files"] = 0

    def row(t: str) -> dict:
        return titles.setdefault(t, {"title": t, "files": 0, "_conf": 0.0, "unknown": 0})

    for rec in file_records:
        status = rec.get("status") or "error"
        totals["files"] += 1
        totals[status] = totals.get(status, 0) + 1
        if status == "matched" and rec.get("title") is not None:
            r = row(rec["title"])
            r["files"] += 1
            r["_conf"] += float(rec.get("confidence") or 0.0)
        elif status == "unknown":
            cands = rec.get("candidates") or []
            if cands:
                row(cands[0]["title"])["unknown"] += 1
    out = []
    for r in titles.values():
        n = r.pop("_conf")
        r["mean_confidence"] = round(n / r["files"], 4) if r["files"] else None
        out.append(r)
    out.sort(key=lambda r: (-r["files"], -r["unknown"], r["title"]))
    return {"record": SUMMARY, "titles": out, "totals": totals}


def format_summary(summary: dict) -> str:
    """Plain-text table of a summary (for terminals and logs)."""
    lines = []
    width = max([5] + [len(r["title"]) for r in summary["titles"]])
    width = min(width, 60)
    lines.append(f"{'title':<{width}}  {'files':>6}  {'mean conf':>9}  {'unknown*':>8}")
    for r in summary["titles"]:
        t = r["title"].replace("\n", " ")
        t = t if len(t) <= width else t[: width - 1] + "…"
        mc = f"{r['mean_confidence']:.3f}" if r["mean_confidence"] is not None else "-"
        lines.append(f"{t:<{width}}  {r['files']:>6}  {mc:>9}  {r['unknown']:>8}")
    tot = summary["totals"]
    lines.append(
        f"{tot['files']} files: {tot['matched']} matched, {tot['unknown']} unknown, "
        f"{tot['skipped']} skipped, {tot['error']} error"
    )
    lines.append("* unknown: files left unknown whose best (rejected) candidate was this title")
    return "\n".join(lines)


# -- HTML ------------------------------------------------------------------------------------------
def format_ts(t: float | None) -> str:
    if t is None:
        return ""
    t = float(t)
    if not math.isfinite(t):
        return str(t)
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}" if h else f"{int(m)}:{s:04.1f}"


def thumbnail_data_uri(image, max_side: int = 160, quality: int = 70) -> str:
    """A small JPEG of a PIL image as a data: URI."""
    im = image.copy()
    im.thumbnail((max_side, max_side))
    if im.mode != "RGB":
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
:root{font-family:system-ui,sans-serif;font-size:14px;color:#111}
body{margin:1.5em;max-width:1400px}
h1{font-size:1.5em;margin:0 0 .3em} h2{border-bottom:2px solid #333;margin-top:1.8em}
table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.item{display:flex;gap:12px;border:1px solid #ccc;border-radius:6px;padding:8px;margin:8px 0}
.item .q img,.ev img{max-width:160px;max-height:160px;border:1px solid #999}
.evs{display:flex;flex-wrap:wrap;gap:8px}
.ev{font-size:12px;max-width:170px}
.noimg{width:120px;height:80px;background:#eee;display:flex;align-items:center;justify-content:center;
 color:#666;font-size:11px;text-align:center}
.conf{font-weight:bold} .hi{color:#060} .mid{color:#a60} .lo{color:#a00}
.stills{font-size:12px}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ccc}
[hidden]{display:none!important}
img.zoomable{cursor:zoom-in}
img.zoomed{position:fixed;top:4vh;left:4vw;width:92vw;height:92vh;max-width:none!important;
 max-height:none!important;object-fit:contain;background:#fff;z-index:10;cursor:zoom-out;
 box-shadow:0 0 0 100vmax rgba(0,0,0,.6)}
@page{margin:14mm;@bottom-right{content:"page " counter(page) " of " counter(pages)}}
@media print{.controls{display:none} .item,tr,.ev{break-inside:avoid;page-break-inside:avoid}
 .item[hidden]{display:flex!important} body{margin:0;max-width:none} details>*{display:block}
 img.zoomed{position:static;width:auto;height:auto;box-shadow:none}}
"""

_JS = """
(function(){
var r=document.getElementById('minconf'),o=document.getElementById('minconf-val'),
s=document.getElementById('shown');
function apply(){var v=parseFloat(r.value);if(isNaN(v))v=0;o.textContent=v.toFixed(2);var n=0;
document.querySelectorAll('.item[data-conf]').forEach(function(e){
var h=parseFloat(e.getAttribute('data-conf'))<v;
e.hidden=h;if(!h)n++;});s.textContent=String(n);}
r.addEventListener('input',apply);
var m=/(?:^#|&)min=([0-9.]+)/.exec(location.hash);if(m){r.value=m[1];}
apply();
document.querySelectorAll('img.zoomable').forEach(function(i){i.addEventListener('click',function(){
i.classList.toggle('zoomed');});});})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute; undecodable bytes shown as escapes."""
    s = "" if value is None else str(value)
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(s, quote=True)


def _conf_class(c: float) -> str:
    return "hi" if c >= 0.8 else "mid" if c >= 0.5 else "lo"


ThumbFn = Callable[[dict], "str | None"]
RefThumbFn = Callable[[str, "float | None"], "str | None"]


def _img(uri: str | None, alt: str, missing: str) -> str:
    """The picture with a true ``alt`` (what it shows), or a box saying why there is none."""
    if uri and uri.startswith("data:image/"):
        return f'<img class="zoomable" src="{_e(uri)}" alt="{_e(alt)}" title="click to enlarge">'
    return f'<div class="noimg">{_e(missing)}</div>'


#: Human names of the run header's fields (others: the key with spaces)
HEADER_LABELS = {
    "tool_version": "matcher version",
    "model_spec": "model",
    "model_fingerprint": "model fingerprint (weights / algorithm)",
    "index": "index (as given)",
    "index_path": "index (absolute path)",
    "index_generation": "index generation",
    "index_references": "reference stills in the index",
    "index_titles": "titles in the index",
    "index_fingerprint": "index fingerprint (sha256 of its manifest)",
    "threshold": "unknown threshold (colour queries)",
    "grey_threshold": "unknown threshold (grey queries)",
    "sketch_threshold": "unknown threshold (line-art queries)",
    "unknown_share": "assumed share of unknown material",
    "calibration_probes": "calibration probes (known / unknown)",
    "calibration_warning": "calibration warning",
    "background_set": "background set (sha256)",
    "min_confidence_override": "--min-confidence override (replaces the thresholds above)",
    "command_line": "command line",
    "dump_root": "dump folder",
    "started_utc": "started (UTC)",
    "every_s": "seconds between video stills",
    "all_frames": "every frame of animations",
    "max_pixels": "largest image decoded (pixels)",
}


def _evidence_html(evidence: list[dict], ref_thumb: RefThumbFn | None, limit: int = 4) -> str:
    out = ['<div class="evs">']
    for ev in evidence[:limit]:
        uri = ref_thumb(ev.get("reference"), ev.get("timestamp")) if ref_thumb else None
        ts = f" @ {format_ts(ev.get('timestamp'))}" if ev.get("timestamp") is not None else ""
        out.append(
            '<div class="ev">'
            + _img(
                uri,
                f"reference still of {ev.get('title')}: {ev.get('reference')}{ts}",
                "reference still not available",
            )
            + f"<div><b>{_e(ev.get('title'))}</b></div>"
            + (f"<div>episode {_e(ev['episode'])}</div>" if ev.get("episode") else "")
            + f'<div class="mono">{_e(ev.get("reference"))}{_e(ts)}</div>'
            + f"<div>similarity {float(ev.get('similarity') or 0):.3f}</div>"
            + (
                f'<div>reference sha256 <span class="mono">{_e(ev["sha256"])}</span></div>'
                if ev.get("sha256")
                else ""
            )
            + (
                f"<div>leak still @ {_e(format_ts(ev['query_timestamp']))}</div>"
                if ev.get("query_timestamp") is not None
                else f"<div>leak frame {_e(ev['query_frame'])}</div>"
                if ev.get("query_frame") is not None
                else ""
            )
            + "</div>"
        )
    out.append("</div>")
    return "".join(out)


def _item_html(
    rec: dict,
    parts: list[dict],
    thumb: ThumbFn | None,
    ref_thumb: RefThumbFn | None,
    total_parts: int | None = None,
) -> str:
    conf = float(rec.get("confidence") or 0.0)
    uri = thumb(rec) if thumb else None
    total_parts = max(total_parts or 0, len(parts))
    cands = ", ".join(f"{_e(c['title'])} {float(c['score']):.3f}" for c in (rec.get("candidates") or [])[:5])
    head = (
        f'<article class="item" data-conf="{conf:.4f}" data-status="{_e(rec.get("status"))}">'
        + f'<div class="q">{_img(uri, "the input " + str(rec.get("path")), "file no longer readable")}</div>'
        '<div class="body">'
        f'<div class="mono path">{_e(rec.get("path"))}</div>'
        f"<div>{_e(rec.get('kind'))} · {_e(rec.get('size'))} bytes · sha256 "
        f'<span class="mono">{_e(rec.get("sha256"))}</span></div>'
        f"<div>verdict: <b>{_e(rec.get('title') or 'unknown')}</b> · confidence "
        f'<span class="conf {_conf_class(conf)}">{conf:.3f}</span>'
        + (" · <b>changed by the --min-confidence override</b>" if rec.get("override_changed") else "")
        + (f" · <b>tie</b>: {_e(' and '.join(rec['tie']))}" if rec.get("tie") else "")
        + "</div>"
        + (
            f"<div><b>byte-identical</b> to reference {_e(rec['identical'].get('reference'))} (sha256 "
            f'<span class="mono">{_e(rec["identical"].get("sha256"))}</span>)</div>'
            if rec.get("identical")
            else ""
        )
    )
    body = [head]
    if rec.get("reason"):
        body.append(f"<div>{_e(rec.get('reason'))}</div>")
    if cands:
        body.append(f"<div>candidates: {cands}</div>")
    body.append(_evidence_html(rec.get("evidence") or [], ref_thumb))
    if parts:
        rows = []
        for p in parts[:MAX_PARTS_SHOWN]:
            where = format_ts(p.get("timestamp")) if p.get("record") == STILL else f"frame {p.get('frame')}"
            rows.append(
                f"<tr><td>{_e(where)}</td><td>{_e(p.get('status'))}</td>"
                f"<td>{_e(p.get('title') or '')}</td><td>{float(p.get('confidence') or 0):.3f}</td>"
                f"<td>{_e(p.get('reason') or p.get('error') or '')}</td></tr>"
            )
        hidden = total_parts - len(parts)
        more = f"<p>… {hidden} more in the JSONL report</p>" if hidden > 0 else ""
        body.append(
            f'<details class="stills"><summary>{total_parts} stills/frames</summary><table>'
            "<tr><th>at</th><th>status</th><th>title</th><th>confidence</th><th>note</th></tr>"
            + "".join(rows)
            + f"</table>{more}</details>"
        )
    body.append("</div></article>")
    return "".join(body)


#: Items shown with thumbnails; beyond this the HTML lists files without pictures (the JSONL has all),
#: so a report of a huge dump stays a file a browser and a mail server can handle (~20 KB per item).
MAX_THUMB_ITEMS = 3000
#: Stills/frames listed per file in the HTML (all of them are in the JSONL).
MAX_PARTS_SHOWN = 200


def write_html(
    out: str | os.PathLike,
    records: Iterable[dict] | Callable[[], Iterable[dict]],
    custody: dict,
    thumb: ThumbFn | None = None,
    ref_thumb: RefThumbFn | None = None,
    max_thumb_items: int = MAX_THUMB_ITEMS,
) -> Path:
    """Write the evidence report; ``records`` are report lines (file and part records), or a function
    returning a fresh iterator over them (read twice, so memory holds only the file verdicts and up to
    MAX_PARTS_SHOWN parts per file, not every line of the report).

    ``thumb(file_record)`` and ``ref_thumb(reference, timestamp)`` return data: URIs or None.
    The file is written to a temporary name and renamed, so a half-written report never exists.
    """
    out = Path(out)
    check_ours(out, "html")
    if callable(records):
        source = records
    else:
        kept = list(records)

        def source():
            return iter(kept)

    files = latest_file_records(source())
    parts: dict[tuple, list[dict]] = defaultdict(list)
    n_parts: Counter = Counter()
    current = {(r.get("path"), r.get("sha256")) for r in files}
    for rec in source():
        if rec.get("record") in PART_RECORDS:
            key = (rec.get("path"), rec.get("sha256"))
            if key not in current:
                continue
            n_parts[key] += 1
            if len(parts[key]) < MAX_PARTS_SHOWN:
                parts[key].append(rec)
    for lst in parts.values():
        lst.sort(key=part_key)
    summary = summarize(files)
    shown = 0

    def item(rec: dict) -> str:
        nonlocal shown
        shown += 1
        key = (rec.get("path"), rec.get("sha256"))
        pictures = shown <= max_thumb_items
        return _item_html(
            rec,
            parts.get(key, []),
            thumb if pictures else None,
            ref_thumb if pictures else None,
            total_parts=n_parts.get(key, 0),
        )

    by_title: dict[str, list[dict]] = defaultdict(list)
    unknown, other = [], []
    for rec in files:
        if rec.get("status") == "matched":
            by_title[rec["title"]].append(rec)
        elif rec.get("status") == "unknown":
            unknown.append(rec)
        else:
            other.append(rec)

    # insight hook: shot groups, clusters of unknown files, timeline (matcher.insight)
    from matcher.insight import html as insight_html
    from matcher.insight.postpass import load_insight

    insight = load_insight(source())
    css = _CSS + insight_html.CSS
    csp = (
        "default-src 'none'; img-src data:; "
        f"style-src {_csp_hash(css)}; script-src {_csp_hash(_JS)}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        w = fh.write
        w("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
        w(f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">')
        w('<meta name="referrer" content="no-referrer">')
        w(f"<title>matcher evidence report</title><style>{css}</style></head><body>")
        # chain of custody
        w('<header id="custody"><h1>matcher evidence report</h1><table>')
        for k, v in custody.items():
            if isinstance(v, (dict, list)):
                v = json.dumps(v, ensure_ascii=False, default=str)
            label = HEADER_LABELS.get(k, k.replace("_", " "))
            w(f'<tr><th>{_e(label)}</th><td class="mono" data-key="{_e(k)}">{_e(v)}</td></tr>')
        tot = summary["totals"]
        w(
            f"<tr><th>inputs</th><td>{tot['files']} files: {tot['matched']} matched, "
            f"{tot['unknown']} unknown, {tot['skipped']} skipped, {tot['error']} error</td></tr>"
        )
        w("</table>")
        w(f'<details id="inputs"><summary>sha256 of every input ({len(files)} files)</summary>')
        w("<table><tr><th>path</th><th>size</th><th>sha256</th><th>status</th></tr>")
        for rec in sorted(files, key=lambda r: str(r.get("path"))):
            w(
                f'<tr><td class="mono">{_e(rec.get("path"))}</td><td>{_e(rec.get("size"))}</td>'
                f'<td class="mono">{_e(rec.get("sha256") or "")}</td><td>{_e(rec.get("status"))}</td></tr>'
            )
        w("</table></details></header>")
        # controls
        w(
            '<div class="controls"><label>minimum confidence '
            '<input type="range" id="minconf" min="0" max="1" step="0.01" value="0"></label> '
            '<output id="minconf-val">0.00</output> · <span id="shown">0</span> items shown</div>'
        )
        # summary
        w('<section id="summary"><h2>Summary by title</h2><table>')
        w("<tr><th>title</th><th>files</th><th>mean confidence</th><th>unknown (best guess)</th></tr>")
        for r in summary["titles"]:
            mc = f"{r['mean_confidence']:.3f}" if r["mean_confidence"] is not None else "–"
            w(f"<tr><td>{_e(r['title'])}</td><td>{r['files']}</td><td>{mc}</td><td>{r['unknown']}</td></tr>")
        w("</table></section>")
        # at most GROUPS_SHOWN x MEMBERS_SHOWN + CLUSTERS_SHOWN x 6 pictures, whatever the dump's size
        w(insight_html.sections(_e, _img, files, insight, thumb))
        # matched, grouped by title
        w('<section id="matched"><h2>Matched files</h2>')
        order = sorted(by_title, key=lambda t: (-len(by_title[t]), t))
        for i, title in enumerate(order):
            recs = sorted(by_title[title], key=lambda r: -float(r.get("confidence") or 0))
            w(f'<section class="title-group" id="t{i}"><h3>{_e(title)} ({len(recs)} files)</h3>')
            for rec in recs:
                w(item(rec))
            w("</section>")
        if not order:
            w("<p>No file matched a title.</p>")
        w("</section>")
        # unknowns
        w(f'<section id="unknown"><h2>Unknown ({len(unknown)} files)</h2>')
        for rec in sorted(unknown, key=lambda r: -float(r.get("confidence") or 0)):
            w(item(rec))
        w("</section>")
        # errors and skipped
        w(f'<section id="other"><h2>Errors and skipped ({len(other)} files)</h2><table>')
        w("<tr><th>path</th><th>status</th><th>reason</th><th>size</th><th>sha256</th></tr>")
        for rec in sorted(other, key=lambda r: (str(r.get("status")), str(r.get("path")))):
            w(
                f'<tr class="{_e(rec.get("status"))}"><td class="mono">{_e(rec.get("path"))}</td>'
                f"<td>{_e(rec.get('status'))}</td><td>{_e(rec.get('reason') or rec.get('error'))}</td>"
                f'<td>{_e(rec.get("size"))}</td><td class="mono">{_e(rec.get("sha256") or "")}</td></tr>'
            )
        w("</table></section>")
        w(f"<script>{_JS}</script></body></html>\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out
