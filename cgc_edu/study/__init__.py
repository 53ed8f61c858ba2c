"""The study: the paper's comparison on TinyTasks and other suites, at equal budget, over
seeds. `methods` says what is compared and with which settings, `runner` trains and stores
the runs (``python -m cgc_edu.study``, resumable), `statistics` turns them into tables and
paired comparisons, `report` writes ``results.md`` and the figures.

Taught in: notebooks/07_experiments.ipynb.
"""
