#!/usr/bin/env bash
# Build the course book (Jupyter Book 1) as static HTML that works offline.
#
# Usage: bash scripts/build_book.sh [OUTPUT_DIR]   (relative to the repository root;
#        default book/, so the pages land in book/_build/html)
# Fetches the vendored JavaScript first (cached), uses the outputs committed in notebooks/
# (no execution) and treats every Sphinx warning as an error.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
OUT=$(mkdir -p "${1:-book}" && cd "${1:-book}" && pwd)

bash scripts/fetch_book_assets.sh
# -W --keep-going: report every warning, then fail. (Not -n: napoleon turns free-form
# return descriptions into type references that nitpicky mode reports as missing.)
jupyter-book build book --path-output "$OUT" -W --keep-going --quiet
echo "book built: $OUT/_build/html/index.html"
