"""HTML sections of the evidence report for the insight records: shot groups side by side,
clusters of unknown files with representative thumbnails, and files per day per production and per
cluster. Everything from the dump is escaped by the report's own ``_e``; pictures are data: URIs
(the report's CSP allows nothing else) and the day bars are SVG attributes, not inline styles
(forbidden by the CSP). Summarised for big dumps: the largest GROUPS_SHOWN groups, CLUSTERS_SHOWN
clusters and SERIES_SHOWN series are drawn, the rest counted (the JSONL has them all)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from matcher.insight.timeline import files_per_day

GROUPS_SHOWN = 100
MEMBERS_SHOWN = 8
CLUSTERS_SHOWN = 50
SERIES_SHOWN = 30
#: a timeline longer than this is drawn per month instead of per day
MAX_DAYS = 370

CSS = """
.shot{border:1px solid #ccc;border-radius:6px;padding:8px;margin:8px 0}
.row{display:flex;flex-wrap:wrap;gap:10px}
.member{font-size:12px;max-width:170px}
.member img{max-width:160px;max-height:120px;border:1px solid #999}
svg.days rect{fill:#2a6}
svg.days{background:#f4f4f4;border:1px solid #ccc}
"""


def _picture(img, thumb, rec: dict | None, path) -> str:
    uri = thumb(rec) if (thumb is not None and rec is not None) else None
    return img(uri, f"the input {path}", "no picture (see the JSONL)")


def _member_html(e, img, m: dict, rec: dict | None, thumb) -> str:
    pic = _picture(img, thumb, rec, m.get("path"))
    own = f"{e(m.get('title') or 'unknown')} {float(m.get('confidence') or 0):.3f}"
    grp = m.get("group_title") or "no title"
    edge = m.get("group_edge") or {}
    link = (
        f"<br>linked to {e(edge.get('path'))} (similarity {float(edge.get('similarity') or 0):.3f})"
        if edge
        else ""
    )
    return (
        f'<div class="member" data-path="{e(m.get("path"))}">{pic}<div class="mono">{e(m.get("path"))}</div>'
        f"own verdict: {own}<br>group verdict: {e(grp)} {float(m.get('group_confidence') or 0):.3f}"
        f"{link}</div>"
    )


def _bars(e, series: dict[str, int], days: list[str]) -> str:
    peak = max(series.values()) if series else 1
    w = max(2, min(12, 740 // max(1, len(days))))
    rects = []
    for x, d in enumerate(days):
        n = series.get(d, 0)
        if n:
            h = max(1, round(60 * n / peak))
            rects.append(
                f'<rect x="{x * w}" y="{60 - h}" width="{max(1, w - 1)}" height="{h}" '
                f'aria-label="{e(d)}: {n}" data-day="{e(d)}" data-files="{n}"></rect>'
            )
    return (
        f'<svg class="days" width="{len(days) * w}" height="60" role="img" '
        f'aria-label="files per day">{"".join(rects)}</svg>'
    )


def _axis(all_days: set[str]) -> tuple[list[str], Callable[[str], str]]:
    """Every day between the first and last (gaps are part of the story), or months if too long."""
    if not all_days:
        return [], lambda d: d
    first, last = dt.date.fromisoformat(min(all_days)), dt.date.fromisoformat(max(all_days))
    span = (last - first).days + 1
    if span <= MAX_DAYS:
        return [(first + dt.timedelta(i)).isoformat() for i in range(span)], lambda d: d
    months = sorted({d[:7] for d in all_days})
    return months, lambda d: d[:7]


def _timeline(e, title: str, series: dict[str, dict[str, int]], anchor: str) -> str:
    out = [f'<section id="{anchor}"><h3>{e(title)}</h3>']
    if not series:
        return out[0] + "<p>No dated files.</p></section>"
    all_days = {d for s in series.values() for d in s}
    axis, bucket = _axis(all_days)
    ranked = sorted(series, key=lambda k: (-sum(series[k].values()), k))
    out.append(f"<p>{e(axis[0])} to {e(axis[-1])}</p><table>")
    for name in ranked[:SERIES_SHOWN]:
        per: dict[str, int] = {}
        for d, n in series[name].items():
            per[bucket(d)] = per.get(bucket(d), 0) + n
        out.append(
            f"<tr><td>{e(name)}</td><td>{sum(per.values())} files, {len(per)} days</td>"
            f"<td>{_bars(e, per, axis)}</td></tr>"
        )
    out.append("</table>")
    if len(ranked) > SERIES_SHOWN:
        out.append(f"<p>{len(ranked) - SERIES_SHOWN} more not drawn (smallest).</p>")
    return "".join(out) + "</section>"


def sections(e, img, files: list[dict], insight: dict, thumb) -> str:
    """The groups, clusters and timeline sections; ``e`` escapes, ``img(uri, alt, missing)`` draws a
    picture as the rest of the report does, ``thumb(file_record)`` gives a data URI."""
    by_path = {r.get("path"): r for r in files}
    out = []
    groups = sorted(insight.get("groups") or [], key=lambda g: (-int(g.get("size") or 0), g.get("group", 0)))
    out.append(f'<section id="groups"><h2>Shot groups ({len(groups)})</h2>')
    if insight.get("insight") and insight["insight"].get("reason"):
        out.append(f"<p>{e(insight['insight']['reason'])}</p>")
    for g in groups[:GROUPS_SHOWN]:
        verdict = g.get("title") or ("conflicting titles" if g.get("conflict") else "no title")
        titles = ", ".join(f"{t} {c:.3f}" for t, c in (g.get("titles") or {}).items())
        out.append(
            f'<div class="shot" data-group="{int(g["group"])}"><h3>group {int(g["group"])}: '
            f"{int(g.get('size') or 0)} files, verdict {e(verdict)} {float(g.get('confidence') or 0):.3f}"
            f'{" (" + e(titles) + ")" if titles else ""}</h3><div class="row">'
        )
        for m in (g.get("members") or [])[:MEMBERS_SHOWN]:
            out.append(_member_html(e, img, m, by_path.get(m.get("path")), thumb))
        more = len(g.get("members") or []) - MEMBERS_SHOWN
        out.append("</div>" + (f"<p>{more} more members in the JSONL.</p>" if more > 0 else "") + "</div>")
    if len(groups) > GROUPS_SHOWN:
        out.append(f"<p>{len(groups) - GROUPS_SHOWN} smaller groups are in the JSONL.</p>")
    out.append("</section>")
    clusters = sorted(insight.get("clusters") or [], key=lambda c: c.get("cluster", 0))
    out.append(f'<section id="clusters"><h2>Clusters of unknown files ({len(clusters)})</h2>')
    for c in clusters[:CLUSTERS_SHOWN]:
        out.append(
            f'<div class="shot" data-cluster="{int(c["cluster"])}"><h3>cluster {int(c["cluster"])}: '
            f"{int(c.get('size') or 0)} files, {int(c.get('shots') or 0)} shots</h3>"
            f"<p>index it: <code>matcher index add --title NAME --from-report REPORT --cluster "
            f'{int(c["cluster"])}</code></p><div class="row">'
        )
        for p in c.get("representatives") or []:
            pic = _picture(img, thumb, by_path.get(p), p)
            out.append(f'<div class="member">{pic}<div class="mono">{e(p)}</div></div>')
        out.append("</div></div>")
    if len(clusters) > CLUSTERS_SHOWN:
        out.append(f"<p>{len(clusters) - CLUSTERS_SHOWN} more clusters are in the JSONL.</p>")
    out.append("</section>")
    cluster_of = {p: v.get("cluster") for p, v in (insight.get("by_path") or {}).items()}
    out.append('<section id="timeline"><h2>The work over time (files per day)</h2>')
    out.append(
        _timeline(
            e,
            "Per production",
            files_per_day(files, lambda r: r.get("title") if r.get("status") == "matched" else None),
            "timeline-titles",
        )
    )
    out.append(
        _timeline(
            e,
            "Per cluster of unknown files",
            files_per_day(
                files,
                lambda r: (
                    f"cluster {cluster_of[r.get('path')]}"
                    if cluster_of.get(r.get("path")) is not None
                    else None
                ),
            ),
            "timeline-clusters",
        )
    )
    out.append("</section>")
    return "".join(out)
