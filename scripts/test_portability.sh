#!/usr/bin/env bash
# The portability run: nbval over every notebook and the library's tests (the training tests
# marked `slow` and all the others, 70 s; not the book and browser tests) once more, with
# torch's portable CPU kernels on one thread. Another CPU (AVX2 instead of AVX-512, a
# laptop's) runs other kernels whose sums differ in the last bits; these two settings change
# the numerics on this machine the same way, so a trained claim that holds here holds there
# (notebooks/README.md, "The portability rule"). Run it after scripts/test.sh, which sets up
# .venv; extra arguments pass to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export PYTHONHASHSEED=0 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
export ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1
python -c "import torch; print('portability run: CPU capability', torch.backends.cpu.get_cpu_capability(), '| threads', torch.get_num_threads())"
python -m pytest -p no:cacheprovider notebooks "$@"
python -m pytest -p no:cacheprovider tests --ignore=tests/test_book.py --ignore=tests/test_browser_lab.py "$@"
