"""Chapter 07's exercises: the fair protocol's pieces, built by the learner and checked
against the library's (`cgc_edu.study.protocol`) on the stored map (``results/fair_map``).
Exercise 1 takes the learner's own map instead: ``check.ex1(answer, stored=read_map(path))``.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

import numpy as np

from ...study import fair_map
from ...study.protocol import VERDICTS, compare, holm, verdict
from .checks import ChapterChecks, close, exercise, run_theirs, stored_results_folder

#: The map's cell the chapter reads: TinyTasks, prompts that name the task, budget 24.
CELL = "tinytasks_named_r24"


def task_interval(stored: dict, method: str, baseline: str, task: str) -> dict:
    """``method`` minus ``baseline`` on one task of the chapter's cell, paired by seed and
    item (`cgc_edu.study.protocol.compare` on that task's items)."""
    items = stored["items"]
    rows = items[(items["cell"] == CELL) & (items["task"] == task)]
    by = {m: {int(s): g.sort_values("item")["exact_match"].tolist()
              for s, g in rows[rows["method"] == m].groupby("seed")} for m in (method, baseline)}
    return compare(by[method], by[baseline])


def _verdict_cases(rng) -> list[tuple]:
    """(ci_low, ci_high, p_holm, margin): each verdict, its edges and random rows."""
    cases = [(0.05, 0.2, 0.01, 0.02), (-0.2, -0.05, 0.01, 0.02), (-0.01, 0.015, 0.5, 0.02),
             (-0.05, 0.2, 0.2, 0.02), (0.05, 0.2, 0.06, 0.02), (-0.02, 0.01, 0.9, 0.02),
             (0.001, 0.015, 0.01, 0.02), (0.0, 0.3, 0.01, 0.02)]
    for _ in range(40):
        low = rng.uniform(-0.3, 0.3)
        cases.append((low, low + rng.uniform(0, 0.2), rng.choice([0.001, 0.04, 0.2]), 0.02))
    return cases


class Checks(ChapterChecks):
    """The self-checks of chapter 07: ``Checks().ex2(your_function)`` prints right / not
    yet and why, and returns True or False.

    Taught in: notebooks/07_experiments.ipynb.
    """

    chapter = "07"

    @exercise
    def ex1(answer, stored=None):
        """Build one paired interval yourself, from the map's items: MoE-LoRA minus CGC-LoRA on
        the task `rotate` alone. Per seed, the mean over rotate's test items of MoE-LoRA's
        exact match minus CGC-LoRA's; then the 95 % Student's t interval of those differences
        over the seeds (scipy.stats). Answer (low, high) in points."""
        stored = stored if stored is not None else fair_map.read_map(stored_results_folder() / "fair_map")
        row = task_interval(stored, "moe_lora", "cgc_lora", "rotate")
        want = (round(100 * row["ci_low"], 1), round(100 * row["ci_high"], 1))
        if close(answer, want, tol=0.06):
            return True, (f"{want[0]:+.1f} to {want[1]:+.1f} points over {row['n_seeds']} seeds "
                          f"(mean {100 * row['difference']:+.1f}).")
        return False, (f"not {answer!r}: take, seed by seed, the mean of the item differences, "
                       "then scipy.stats.ttest_1samp(differences, 0).confidence_interval(); "
                       "in points, (low, high).")

    @exercise
    def ex2(fn):
        """Write verdict(ci_low, ci_high, p_holm, margin) that returns the protocol's word for
        a comparison: 'ahead' or 'behind' when the Holm-adjusted p is below 0.05 and the
        interval is above or below 0, 'equivalent' when the interval lies inside +-margin,
        else 'inconclusive'. Pass the function itself."""
        for case in _verdict_cases(np.random.default_rng(7)):
            want = verdict((case[0] + case[1]) / 2, *case)
            got, error = run_theirs(fn, *case)
            if error:
                return False, error
            if got not in VERDICTS:
                return False, f"{got!r} is not one of {list(VERDICTS)}."
            if got != want:
                low, high, p, margin = case
                return False, (f"for the interval [{low:.3f}, {high:.3f}], p_holm {p}, margin "
                               f"{margin}: yours says {got!r}, the protocol {want!r}.")
        return True, "the four verdicts agree with cgc_edu.study.protocol.verdict on 48 rows."

    @exercise
    def ex3(fn):
        """Write holm(pvalues) that returns Holm's adjusted p-values, in the order given: sort
        the m p-values, multiply the i-th smallest (i from 0) by m - i, carry the running
        maximum upwards, cap at 1. Pass the function itself."""
        rng = np.random.default_rng(11)
        tests = [[0.01, 0.04, 0.03], [0.5, 0.001], [0.02] * 4, list(rng.uniform(0, 0.2, 14))]
        for pvalues in tests:
            got, error = run_theirs(fn, list(pvalues))
            if error:
                return False, error
            want = holm(pvalues)
            if not close(np.asarray(got, float).ravel(), want, tol=1e-9):
                return False, (f"for p = {np.round(pvalues, 4).tolist()}: yours gives "
                               f"{np.round(np.asarray(got, float), 4).tolist()}, Holm's "
                               f"{np.round(want, 4).tolist()}.")
        return True, "Holm's adjustment, in the input's order, on four families of p-values."
