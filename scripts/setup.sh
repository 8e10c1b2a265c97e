#!/usr/bin/env bash
# Create ./.venv with matcher and its dependencies; a no-op when pyproject.toml has not changed.
# Uses uv when present (installing it with pip if needed): torch + torchvision come from PyPI as a
# matching pair, which `import open_clip` needs.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${MATCHER_EXTRAS:-dev}"
stamp=".venv/.matcher-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-${extras}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q --user uv >/dev/null 2>&1 \
    || python3 -m pip install -q uv
if python3 -m uv --version >/dev/null 2>&1; then
    [ -x .venv/bin/python ] || python3 -m uv venv -q .venv
    # Bytecode at install time: PYTHONDONTWRITEBYTECODE machines would otherwise recompile numpy,
    # faiss and typer on every `match cel.png` (0.8-1.2 s instead of 0.35-0.5 s, bench.py).
    python3 -m uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[${extras}]"
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q -e ".[${extras}]"  # pip compiles bytecode by default
fi
echo "$want" > "$stamp"
