"""Chapter 12's exercise: the paired count of wins and losses, written by hand and compared
with the stored study.

Taught in: notebooks/12_appendix_controls.ipynb.
"""
from __future__ import annotations

from pathlib import Path

from ...study.statistics import load_results, paired_comparison
from .checks import ChapterChecks, exercise, run_theirs, stored_results_folder


class Checks(ChapterChecks):
    """The self-check of chapter 12: ``Checks().ex1(paired_record)`` prints right / not yet
    and why, and returns True or False.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """

    chapter = "12"

    @exercise
    def ex1(answer, results=None):
        """Build the paired count: write paired_record(results, a, b) giving (wins, losses) of
        method a against method b: each seed's average exact match over the tasks, a against b
        on the same seed; the check compares it with statistics.paired_comparison on pairs of
        the stored study."""

        stored = load_results(Path(results) if results is not None else stored_results_folder())
        pairs = [("named", "one_plus_n", "cgc_lora"), ("named", "cgc_uniform", "cgc_lora"),
                 ("named", "integrated", "separate"), ("anonymous", "cgc_lora", "integrated")]
        for setting, a, b in pairs:
            runs = stored[stored["setting"] == setting]
            pair = paired_comparison(runs, a, b, n_boot=10)
            want = (pair["wins"], pair["losses"])
            got, why = run_theirs(answer, runs.copy(), a, b)
            if why:
                return False, why
            try:
                got = (int(got[0]), int(got[1]))
            except (TypeError, ValueError, IndexError):
                return False, f"answer (wins, losses), two ints; yours returned {got!r}."
            if got != want:
                return False, (f"{a} against {b} ({setting} prompts): {want[0]} wins and "
                               f"{want[1]} losses, yours {got}. Average each seed's exact match "
                               "over the tasks first, then compare the two methods seed by seed.")
        return True, (f"the same wins and losses as paired_comparison on {len(pairs)} pairs of "
                      "the stored study.")
