"""The one post-pass a dump run calls after its per-file pass, and the reader of what it wrote.

It appends, to the report, one ``group`` record per shot group, one ``cluster`` record per
candidate production among the unknown files, and then one ``insight`` record that closes the set
(its ``digest`` is a sha256 of everything the result depends on: each file's path, sha256 and
verdict, its vector, the edge calibration and the threshold). A rerun whose digest is already
closed in the report's section writes nothing (no duplicates); a set cut off before its
``insight`` record is ignored by readers and computed again. File lines are never rewritten (the
report is append-only evidence): a file's ``group``, the group's verdict and the edge linking it
are in its group record's ``members``, and `load_insight` attaches them to file records."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import numpy as np

from matcher.insight import clusters as clu
from matcher.insight import groups as grp
from matcher.insight.vectors import path_key, read_vectors, sidecar_path

GROUP, CLUSTER, INSIGHT = "group", "cluster", "insight"


_KEPT = ("path", "sha256", "status", "title", "confidence")


def _latest_files(records: Iterable[dict]) -> dict[str, dict]:
    """The current verdict of each path, only the fields the post-pass reads (a 100k-file report's
    candidates and evidence would cost hundreds of MB)."""
    seen: dict[str, dict] = {}
    for rec in records:
        if rec.get("record") == "file":
            seen[rec.get("path")] = {k: rec.get(k) for k in _KEPT}
    return seen


def compute(
    files: list[dict],
    vectors: np.ndarray,
    cal: grp.EdgeCalibration,
    threshold: float,
    min_cluster_size: int = clu.MIN_CLUSTER_SIZE,
    coverage=None,
) -> tuple[list[dict], list[dict]]:
    """(group records, cluster records) for files (report lines, in a fixed order) and their vectors;
    ``coverage`` is the embedder's (line-art / grey evidence share), as the scorer uses it."""
    from matcher.score.scoring import evidence_scale

    scale = evidence_scale(coverage, vectors)
    labels, groups, per_file = grp.group_files(vectors, files, cal, threshold, scale=scale)
    group_recs = []
    for g in groups:
        members = []
        for f in g["members"]:
            pf = per_file[f]
            m = {
                "path": files[f]["path"],
                "sha256": files[f]["sha256"],
                "status": files[f].get("status"),
                "title": files[f].get("title"),
                "confidence": files[f].get("confidence"),
                "group_title": pf.get("group_title"),
                "group_confidence": pf.get("group_confidence", 0.0),
                "group_source": files[pf["group_source"]]["path"] if "group_source" in pf else None,
                "group_edge": None,
            }
            if pf.get("group_edge"):
                nb, sim = pf["group_edge"]
                m["group_edge"] = {"path": files[nb]["path"], "similarity": sim}
            if pf.get("group_conflict"):
                m["group_conflict"] = pf["group_conflict"]
            members.append(m)
        group_recs.append(
            {
                "record": GROUP,
                "group": g["id"],
                "title": g["title"],
                "confidence": g["confidence"],
                "titles": g["titles"],
                "conflict": g["conflict"],
                "size": len(members),
                "members": members,
                "edges": [
                    {"a": files[a]["path"], "b": files[b]["path"], "similarity": round(float(s), 6)}
                    for a, b, s in g["edges"]
                ],
            }
        )
    # unknown files that no group member's title reaches: one unit per group, or per lone file
    unexplained = [
        f
        for f in range(len(files))
        if files[f].get("status") == "unknown" and not per_file[f].get("group_title")
    ]
    cluster_recs = []
    if unexplained:
        uvecs = vectors[unexplained]
        ulabels = clu.cluster_units(uvecs, min_cluster_size)
        # the states of one shot land together: a group's unknown members take its majority cluster
        by_group: dict[int, list[int]] = {}
        for u, f in enumerate(unexplained):
            if labels[f] >= 0:
                by_group.setdefault(int(labels[f]), []).append(u)
        for us in by_group.values():
            votes = [int(ulabels[u]) for u in us if ulabels[u] >= 0]
            if votes:
                ulabels[us] = max(sorted(set(votes)), key=votes.count)
        reps = clu.representatives(uvecs, ulabels)
        for c in sorted(set(ulabels.tolist()) - {-1}):
            rows = [unexplained[u] for u in np.flatnonzero(ulabels == c)]
            shots = {int(labels[f]) if labels[f] >= 0 else -1 - f for f in rows}
            cluster_recs.append(
                {
                    "record": CLUSTER,
                    "cluster": c,
                    "size": len(rows),
                    "shots": len(shots),
                    "representatives": [files[unexplained[u]]["path"] for u in reps[c]],
                    "members": [
                        {
                            "path": files[f]["path"],
                            "sha256": files[f]["sha256"],
                            "group": int(labels[f]) if labels[f] >= 0 else None,
                        }
                        for f in rows
                    ],
                }
            )
    return group_recs, cluster_recs


def run_postpass(
    report: str,
    records: Callable[[], Iterable[dict]],
    store,
    threshold: float,
    write: Callable[[dict], None],
    coverage=None,
) -> dict | None:
    """Group and cluster the current section of ``report`` and append the records with ``write``.
    Returns the ``insight`` record (the existing one when this result is already in the report)."""
    latest = _latest_files(records())
    vecs = read_vectors(sidecar_path(report))
    files, rows = [], []
    for path in sorted(latest):
        rec = latest[path]
        v = vecs.get((path_key(path), rec.get("sha256") or ""))
        if v is None or rec.get("status") not in ("matched", "unknown"):
            continue
        files.append(rec)
        rows.append(v)
    try:
        cal = grp.calibrate_edges(store, coverage)
    except Exception as e:  # noqa: BLE001 - an index without probes cannot calibrate links: say so
        cal, problem = None, f"no groups: the index cannot calibrate links ({' '.join(str(e).split())})"
    else:
        problem = None
    h = hashlib.sha256()
    for rec, v in zip(files, rows):
        h.update(repr((rec["path"], rec["sha256"], rec.get("status"), rec.get("title"))).encode())
        h.update(repr(rec.get("confidence")).encode())
        h.update(np.asarray(v, "<f4").tobytes())
    h.update(repr((cal.to_dict() if cal else problem, threshold)).encode())
    digest = h.hexdigest()
    for rec in records():
        if rec.get("record") == INSIGHT and rec.get("digest") == digest:
            return rec
    group_recs, cluster_recs = ([], [])
    if cal is not None and files:
        group_recs, cluster_recs = compute(files, np.stack(rows), cal, threshold, coverage=coverage)
    for rec in (*group_recs, *cluster_recs):
        write({**rec, "insight": digest})
    closing = {
        "record": INSIGHT,
        "digest": digest,
        "files": len(files),
        "groups": len(group_recs),
        "clusters": len(cluster_recs),
        "edge_calibration": cal.to_dict() if cal else None,
        "threshold": threshold,
        "clustering": f"HDBSCAN(min_cluster_size={clu.MIN_CLUSTER_SIZE}), PCA {clu.PCA_DIMS}",
        "reason": problem,
    }
    write(closing)
    return closing


def load_insight(records: Iterable[dict]) -> dict:
    """The last complete insight set of a section: {"insight", "groups", "clusters", "by_path"};
    ``by_path[path]`` = {"group", "group_title", "group_confidence", "group_edge", "group_source",
    "cluster"}."""
    pending: dict[str, dict] = {}
    done = {"insight": None, "groups": [], "clusters": [], "by_path": {}}
    for rec in records:
        kind = rec.get("record")
        if kind == "run" and rec.get("new_section"):
            pending, done = {}, {"insight": None, "groups": [], "clusters": [], "by_path": {}}
        elif kind in (GROUP, CLUSTER):
            d = pending.setdefault(rec.get("insight"), {"groups": [], "clusters": []})
            d["groups" if kind == GROUP else "clusters"].append(rec)
        elif kind == INSIGHT:
            d = pending.pop(rec.get("digest"), {"groups": [], "clusters": []})
            done = {"insight": rec, **d, "by_path": {}}
            pending = {}
    by_path = done["by_path"]
    for g in done["groups"]:
        for m in g.get("members") or []:
            by_path[m["path"]] = {
                "group": g["group"],
                **{k: m.get(k) for k in ("group_title", "group_confidence", "group_edge", "group_source")},
            }
    for c in done["clusters"]:
        for m in c.get("members") or []:
            by_path.setdefault(m["path"], {})["cluster"] = c["cluster"]
    return done


def cluster_files(records: Iterable[dict], cluster: int) -> list[dict]:
    """Members ({"path", "sha256"}) of one cluster of a report's last insight set."""
    ins = load_insight(records)
    for c in ins["clusters"]:
        if c.get("cluster") == cluster:
            return list(c.get("members") or [])
    have = ", ".join(str(c.get("cluster")) for c in ins["clusters"]) or "none"
    raise KeyError(f"no cluster {cluster} in the report (clusters: {have})")


def cluster_sources(report, cluster: int) -> list:
    """Files on disk of one cluster of a dump report, each checked against the sha256 the report
    recorded (a file changed or swapped since the dump run is refused: it is not what was seen).
    Raises matcher.MatcherError with one line naming the report or the file."""
    import os
    from pathlib import Path

    from matcher.errors import MatcherError
    from matcher.write.report import read_records, section_records

    if not Path(report).is_file():
        raise MatcherError(f"{report}: no such report")
    run = next((r for r in read_records(report) if r.get("record") == "run"), None)
    if run is None or not run.get("dump_root"):
        raise MatcherError(f"{report}: not a matcher dump report (no run record with its dump root)")
    for r in section_records(report):
        if r.get("record") == "run" and r.get("dump_root"):
            run = r
    try:
        members = cluster_files(section_records(report), cluster)
    except KeyError as e:
        raise MatcherError(f"{report}: {e.args[0]}") from None
    root = Path(run["dump_root"])
    out = []
    for m in members:
        p = root / m["path"]
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise MatcherError(f"{p}: cannot read this cluster file: {e.strerror or e}") from None
        h = hashlib.sha256()
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != m["sha256"]:
            raise MatcherError(
                f"{p}: content differs from the report (sha256 {m['sha256'][:12]}…): not added"
            )
        out.append(p)
    return out
