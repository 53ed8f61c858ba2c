#!/usr/bin/env bash
# Set everything up from nothing, then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m cgc_edu.demo
