#!/usr/bin/env bash
# Set everything up from nothing, then run every test: library unit tests, nbval over
# every notebook, the book build and the real-browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
. .venv/bin/activate
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
python -m pytest -p no:cacheprovider "$@"
