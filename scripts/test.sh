#!/usr/bin/env bash
# Set everything up from nothing, then run every test: library unit tests, nbval over
# every notebook, the book build and the real-browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
. .venv/bin/activate
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
# Two test files at a time, one thread each (pytest-xdist; a notebook's cells stay together
# in one kernel): on two cores about twice as fast as one process on two threads, whose
# small matrix products leave the second core mostly idle. WORKERS=1 runs them one by one.
python -m pytest -p no:cacheprovider -n "${WORKERS:-2}" --dist loadfile "$@"
