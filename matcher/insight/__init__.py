"""Insight over a whole dump, computed after the per-file pass: shot groups (near-duplicate graph
over the dump's own embeddings, with a consensus verdict), clusters of unknown files into candidate
productions, and the work over time. Plain functions over arrays and records: the dump run calls
`matcher.insight.postpass.run_postpass` once; nothing here touches the per-file pass."""

from matcher.insight.clusters import cluster_units
from matcher.insight.groups import EdgeCalibration, calibrate_edges, group_files, near_duplicate_edges
from matcher.insight.timeline import files_per_day

__all__ = [
    "EdgeCalibration",
    "calibrate_edges",
    "cluster_units",
    "files_per_day",
    "group_files",
    "near_duplicate_edges",
]
