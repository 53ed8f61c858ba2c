"""Chapter 11's exercises, read from the stored map (``results/map``): the map's rule
written by hand, the pick for one problem, and where CGC-LoRA is ahead of independent LoRAs.
Each check takes another map instead: ``check.ex2(answer, stored=read_map(folder))``.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from ...study.map_report import compare, read_map, verdicts
from .checks import ChapterChecks, close, exercise, same_text


def complete_cells(stored: dict) -> list[tuple[str, dict]]:
    """(cell, `verdicts`) of every cell of a stored map whose runs are all there."""
    names = list(dict.fromkeys(stored["seeds"]["cell"]))
    return [(n, v) for n in names for v in [verdicts(stored, n)] if v["complete"]]


class Checks(ChapterChecks):
    """The self-checks of chapter 11: ``Checks().ex1(ahead)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/11_which_method.ipynb.
    """

    chapter = "11"

    @exercise
    def ex1(answer, stored=None):
        """Write the map's rule yourself: ahead(a, b) takes two methods' scores in one cell as
        dicts {seed: score} and returns True when a is ahead of b on every seed they share,
        paired by seed. Pass the function: check.ex1(ahead)."""
        if not callable(answer):
            return False, (f"pass a function ahead(a, b) -> bool, not a "
                           f"{type(answer).__name__}.")
        stored = read_map() if stored is None else stored
        seeds, tried = stored["seeds"], 0
        for name, _ in complete_cells(stored):
            cell = seeds[seeds["cell"] == name]
            scores = {m: dict(zip(g["seed"], g["average"])) for m, g in cell.groupby("method")}
            for a in scores:
                for b in scores:
                    if a == b:
                        continue
                    want = compare(cell, a, b)["verdict"] == "ahead"
                    try:
                        got = bool(answer(dict(scores[a]), dict(scores[b])))
                    except Exception as err:  # the learner's code: report, do not crash
                        return False, f"ahead(...) raised {type(err).__name__}: {err}."
                    tried += 1
                    if got != want:
                        diffs = {s: round(100 * (scores[a][s] - scores[b][s]), 1)
                                 for s in sorted(scores[a]) if s in scores[b]}
                        return False, (f"in {name}, {a} against {b}: paired differences "
                                       f"{diffs} (points), so the rule says "
                                       f"{'ahead' if want else 'not ahead'}; yours says "
                                       f"{'ahead' if got else 'not ahead'}. Hint: every "
                                       "difference must be above 0.")
        return True, f"your rule agrees with map_report.compare on all {tried} ordered pairs."

    @exercise
    def ex2(answer, stored=None):
        """Your problem: 8 tasks, prompts that name the task, a total budget of rank 48
        (TinyTasks' cell tinytasks_named_r48). Which method does the map pick, and is the pick
        beyond the seed spread? Answer a pair (method key, True or False)."""
        stored = read_map() if stored is None else stored
        v = verdicts(stored, "tinytasks_named_r48")
        want = (v["winner"], bool(v["beyond_spread"]))
        if (isinstance(answer, (tuple, list)) and len(answer) == 2
                and same_text(answer[0], want[0]) and bool(answer[1]) == want[1]):
            level = ", ".join(v["level"]) or "no other method"
            return True, (f"{want[0]} ({100 * v['mean']:.1f} %); nothing separates it from "
                          f"{level}." if not want[1] else
                          f"{want[0]}, ahead of every other method on every seed.")
        return False, (f"read verdicts(stored, 'tinytasks_named_r48'): its winner is "
                       f"{want[0]}, beyond the spread: {want[1]}. Answer (method, bool).")

    @exercise
    def ex3(answer, stored=None):
        """In how many of the map's cells is CGC-LoRA ahead of independent LoRAs ('separate')
        by the map's rule, and in how many behind? Answer a pair (ahead, behind)."""
        stored = read_map() if stored is None else stored
        cells = complete_cells(stored)
        verdict = [v["versus"]["separate"]["verdict"] for _, v in cells]
        want = (verdict.count("ahead"), verdict.count("behind"))
        if close(answer, want):
            return True, (f"{want[0]} ahead, {want[1]} behind, {len(cells) - sum(want)} where "
                          f"nothing separates them, of {len(cells)} cells.")
        return False, ("count verdicts(stored, cell)['versus']['separate']['verdict'] over the "
                       f"cells: {want}, not {answer!r}.")
