#!/usr/bin/env bash
# Set everything up from nothing, then open the course: a one-minute CGC-LoRA run on a tiny
# Llama (python -m cgc_edu.course.demo), then JupyterLab on notebooks/ at the ten-minute tour.
#
#   bash scripts/start.sh            # demo, then JupyterLab on http://127.0.0.1:8888 (Ctrl-C stops it)
#   bash scripts/start.sh --book     # demo, then build the static book instead (book/_build/html/index.html)
#   bash scripts/start.sh --demo     # the demo only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m cgc_edu.course.demo
case "${1:-}" in
    --demo) ;;
    --book) bash scripts/build_book.sh ;;
    *)
        ROOT_FLAG=""
        [ "$(id -u)" = 0 ] && ROOT_FLAG="--allow-root"
        echo "Opening the course in JupyterLab (notebooks/00_tour.ipynb). For the static book: bash scripts/start.sh --book"
        cd notebooks
        exec jupyter lab --ip=127.0.0.1 --port="${PORT:-8888}" $ROOT_FLAG 00_tour.ipynb ;;
esac
