"""Every limit and default of matcher, once. Commands, the API and serve read them from here, so
`index add`, `match`, dump mode and serve cannot drift apart (issue 16: they did, `every` was 1.0 s
on the plain path and 2.0 s in dump mode, workers min(cores, 16) in one pool and min(8, cores) in
the other). This module imports nothing of matcher: it is the bottom layer."""

from __future__ import annotations

import os

# ------------------------------------------------------------------------------------------ decode
#: Pixels one image or video frame may have before it is decoded (~ a 10k x 8k still); checked on
#: the header and again on every decoded frame. $MATCHER_MAX_PIXELS overrides it.
MAX_PIXELS_DEFAULT = 80_000_000
#: Seconds between stills sampled from a video (index add, match, dump mode, serve).
EVERY = 1.0
#: Stills handed from a decode worker are reduced to this longest side (the embedders work at
#: <= 336 px), and so are the copies kept for calibration probes.
STILL_SIDE = 512
#: Stills / frames decoded per worker task; long videos are decoded in several segments.
SEGMENT = 32
#: Frames of one animation or pages of one TIFF matched at most (the rest are noted in the reason).
MAX_FRAMES = 2000

# --------------------------------------------------------------------------------- workers, timeouts
#: Decode processes at most, whatever the core count (each holds a decoded still or a segment).
MAX_WORKERS = 16
#: Seconds one decode task may take before its worker is killed and its file fails alone: reference
#: files (index add: whole videos decoded in one task), dump files (one segment per task), uploads.
DECODE_TIMEOUT_ADD = 300.0
DECODE_TIMEOUT_DUMP = 120.0
DECODE_TIMEOUT_SERVE = 60.0
#: Seconds an interrupted run has to close its workers and files before it exits regardless.
TERM_GRACE = 10.0

# ---------------------------------------------------------------------------------------- embedding
#: Stills embedded per batch.
BATCH = 32

# -------------------------------------------------------------------------------------------- serve
#: Stills one upload may produce (a video, an animation) before the rest are dropped.
SERVE_MAX_STILLS = 64
SERVE_MAX_UPLOAD_MB = 64
SERVE_MAX_FILES = 16
SERVE_WORKERS = 2


def default_workers(torch_on_cpu: bool = False) -> int:
    """Decode processes: one per core (at most MAX_WORKERS), except beside a torch model on CPU,
    which needs the cores itself (a ViT-B-32 forward costs ~3x a 1080p PNG decode): a quarter of
    them, at least one. Measured on 2 busy cores, clip on CPU: 1 worker 6.0 img/s, 2 workers
    3.4-3.5 img/s."""
    cores = os.cpu_count() or 1
    if torch_on_cpu:
        return max(1, cores // 4)
    return max(1, min(cores, MAX_WORKERS))
