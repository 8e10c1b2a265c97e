#!/usr/bin/env bash
# The main job on the bundled demo data: build an index of three openly licensed productions
# (demo/references, see demo/NOTICE.md), then match a held-out cel and a line-art sketch of it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MATCHER_INDEX="${MATCHER_INDEX:-index/demo}"
rm -rf "$MATCHER_INDEX"
while IFS=$'\t' read -r dir title; do
    .venv/bin/matcher index add --model classic --title "$title" "demo/references/$dir"
done < demo/titles.tsv
.venv/bin/matcher index info
echo
.venv/bin/match demo/queries/cel.png demo/queries/cel-lineart.png
echo
echo "web page and HTTP API over this index: .venv/bin/matcher serve --index $MATCHER_INDEX  (docs/SERVE.md)"
