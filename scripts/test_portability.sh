#!/usr/bin/env bash
# The portability run: nbval over every notebook and the library's tests (the training tests
# marked `slow` and all the others; not the book and browser tests) once more, with torch's
# portable CPU kernels on one thread AND another training seed (CGC_EDU_TRAINING_SEED), so one
# extra pass checks both ways a learner's run can differ from the committed one: another CPU's
# kernels and another trajectory (notebooks/README.md, "The portability rule").
#
#   bash scripts/test_portability.sh                 # what CI runs: training seed 1
#   CGC_EDU_TRAINING_SEED=3 bash .ci/run             # the whole CI at seed 3, this pass at 4
#   bash scripts/test_portability.sh --seeds 1,2,3,4 # each seed in turn (local checking)
#   bash scripts/test_portability.sh --seeds 2 notebooks/00_tour.ipynb
#
# Run it after scripts/test.sh, which sets up .venv. Other arguments pass to pytest; with
# paths among them, only those are run.
set -euo pipefail
cd "$(dirname "$0")/.."
# one more than the seed the rest of the run uses (CI: 0 + 1), so that the whole CI can be
# run at another seed (CGC_EDU_TRAINING_SEED=k bash .ci/run: test.sh at k, this pass at k+1)
seeds=$(( ${CGC_EDU_TRAINING_SEED:-0} + 1 ))
if [ "${1:-}" = "--seeds" ]; then
    seeds=${2:-}
    shift 2 || true
fi
if ! [[ "$seeds" =~ ^-?[0-9]+(,-?[0-9]+)*$ ]]; then
    echo "test_portability.sh: --seeds $seeds: give training seeds as integers separated by commas, e.g. --seeds 1,2,3,4" >&2
    exit 2
fi
. .venv/bin/activate
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1
export ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1
paths=()
for arg in "$@"; do [ -e "$arg" ] && paths+=("$arg"); done
failed=()
for seed in ${seeds//,/ }; do
    export CGC_EDU_TRAINING_SEED=$seed
    python -c "import torch; print('portability run: CPU capability', torch.backends.cpu.get_cpu_capability(), '| threads', torch.get_num_threads(), '| training seed +$seed')"
    if [ ${#paths[@]} -gt 0 ]; then
        python -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@" || failed+=("$seed")
    else
        # one thread per process, so two files at a time (pytest-xdist) use the second core
        python -m pytest -p no:cacheprovider -n 2 --dist loadfile notebooks tests \
            --ignore=tests/test_book.py --ignore=tests/test_browser_lab.py "$@" || failed+=("$seed")
    fi
done
# every seed runs even when one fails; the exit status says whether any did
if [ ${#failed[@]} -gt 0 ]; then
    echo "test_portability.sh: failures under training seed(s) ${failed[*]}" >&2
    exit 1
fi
