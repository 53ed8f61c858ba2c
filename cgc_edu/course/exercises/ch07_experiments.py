"""Chapter 07's exercises, read from the stored study (``results/results.csv``, instruction
prompts): a task's seed spread, the best method, and paired wins and losses. Each check
takes the learner's own table instead: ``check.ex1(answer, results=load_results(path))``.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

from ...study.statistics import load_results, paired_comparison, summary
from .checks import ChapterChecks, close, exercise, same_text, stored_results_folder


def named_results(results=None):
    """The stored study's instruction-prompt rows (or the learner's own table's)."""
    if results is None:
        results = load_results(stored_results_folder())
    return results[results["setting"] == "named"] if "setting" in results else results


class Checks(ChapterChecks):
    """The self-checks of chapter 07: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/07_experiments.ipynb.
    """

    chapter = "07"

    @exercise
    def ex1(answer, results=None):
        """In the stored study (instruction prompts), which task has the largest seed spread (std)
        under CGC-LoRA?"""
        stats = summary(named_results(results))
        cgc = stats[(stats["method"] == "cgc_lora") & (stats["task"] != "average")].set_index("task")
        want = cgc["std"].idxmax()
        if same_text(answer, want):
            return True, f"{want} (std {100 * cgc['std'].max():.1f} points)."
        return False, (f"read statistics.summary(results) for cgc_lora: the largest std is {want}'s "
                       f"({100 * cgc['std'].max():.1f} points), not {answer!r}.")

    @exercise
    def ex2(answer, results=None):
        """In the stored study (instruction prompts), which method has the best average exact
        match? (Its key, e.g. 'cgc_lora'.)"""
        stats = summary(named_results(results))
        average = stats[stats["task"] == "average"].set_index("method")["mean"]
        want = average.idxmax()
        if same_text(answer, want):
            return True, f"{want} ({100 * average.max():.0f} % on average over tasks and seeds)."
        mine = average.get(str(answer))
        hint = f"; {answer} has {100 * mine:.0f} %" if mine is not None else ""
        return False, f"the best average is {want}'s ({100 * average.max():.0f} %){hint}."

    @exercise
    def ex3(answer, results=None):
        """On how many seeds does CGC-LoRA beat the independent models ('separate'), and on how
        many does it lose? Answer a pair (wins, losses)."""

        pair = paired_comparison(named_results(results), "cgc_lora", "separate")
        want = (pair["wins"], pair["losses"])
        if close(answer, want):
            verdict = ("CGC-LoRA beats the independent models here" if pair["ci_low"] > 0 else
                       "the independent models beat CGC-LoRA here" if pair["ci_high"] < 0 else
                       "no clear winner: the bootstrap interval contains 0")
            return True, (f"{want} of {pair['n_seeds']} seeds, mean {100 * pair['mean_diff']:+.1f} "
                          f"points: {verdict}.")
        return False, (f"statistics.paired_comparison(results, 'cgc_lora', 'separate') pairs the "
                       f"seeds: {want[0]} wins and {want[1]} losses, not {answer!r}.")
