"""Chapter 11's exercises, each building a piece of the guide: the rank a task keeps when
the budget is cut into one LoRA per task, a test of whether the central model reads a
prompt format, and the guide's reading of one cell's verdicts.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from ...data.tinytasks import build_tokenizer
from ...methods import METHODS
from ...models.central import load_central_model
from ...study.fair_map import METHODS_MAPPED, cell_verdicts, read_map, versus
from ...train.loop import greedy_decode
from .checks import ChapterChecks, exercise, stored_results_folder

#: prompts the copy check tries: the word after a space, a colon, other marks and none
COPY_PROMPTS = [("yahm=", "yahm"), ("shift yahm=", "yahm"), ("shift:yahm=", "yahm"),
                ("rotate qda=", "qda"), ("rotate:qda=", "qda"), ("ends|loavcf=", "loavcf"),
                ("ends,loavcf=", "loavcf"), ("first-bgdwfs=", "bgdwfs"), ("3:zhj=", "zhj"),
                ("3 zhj=", "zhj")]


def _map(stored):
    return read_map(stored_results_folder() / "fair_map") if stored is None else stored


class Checks(ChapterChecks):
    """The self-checks of chapter 11: ``Checks().ex1(separate_rank)`` prints right / not yet
    and why, and returns True or False.

    Taught in: notebooks/11_which_method.ipynb.
    """

    chapter = "11"

    @exercise
    def ex1(answer):
        """Write separate_rank(budget, n_tasks): the largest rank each of n_tasks independent
        LoRAs can have when together they hold the parameters of one LoRA of rank budget
        (on the same layers). Pass the function: check.ex1(separate_rank)."""
        if not callable(answer):
            return False, f"pass a function separate_rank(budget, n_tasks), not {answer!r}."
        cases = [(b, n) for b in (8, 12, 24, 48, 60, 120) for n in (1, 2, 3, 8, 26) if b >= n]
        for budget, n in cases:
            want = METHODS["separate"].task_rank(budget, n, "params")
            try:
                got = answer(budget, n)
            except Exception as err:  # the learner's code: report, do not crash
                return False, f"separate_rank({budget}, {n}) raised {type(err).__name__}: {err}."
            if got != want:
                return False, (f"separate_rank({budget}, {n}) is {want}: {n} LoRAs of rank "
                               f"{want} hold {n * want} rank units, within {budget}; "
                               f"yours gave {got!r}.")
        return True, (f"right on {len(cases)} budgets; at budget 24 each of TinyTasks' 8 "
                      "tasks keeps rank 3, where one shared LoRA gives every task 24.")

    @exercise
    def ex2(answer):
        """Write copies(prompt, word) -> bool: True when the central model's greedy answer to
        prompt starts with word (the copy skill every transform task builds on). Use
        greedy_decode(model, tokenizer, [prompt]). Then try a separator of your own."""
        if not callable(answer):
            return False, f"pass a function copies(prompt, word), not {answer!r}."
        model, tok = load_central_model(), build_tokenizer()
        outs = greedy_decode(model, tok, [p for p, _ in COPY_PROMPTS])
        for (prompt, word), out in zip(COPY_PROMPTS, outs):
            want = out.startswith(word)
            try:
                got = bool(answer(prompt, word))
            except Exception as err:
                return False, f"copies({prompt!r}, {word!r}) raised {type(err).__name__}: {err}."
            if got != want:
                return False, (f"copies({prompt!r}, {word!r}): the model answers {out!r}, so "
                               f"{want}; yours says {got}.")
        read = [p for (p, w), o in zip(COPY_PROMPTS, outs) if o.startswith(w)]
        return True, f"right on {len(COPY_PROMPTS)} prompts; the model copies after: {read}."

    @exercise
    def ex3(answer, stored=None):
        """Write not_beaten(rows) -> bool: rows are one cell's verdicts against a baseline
        (fair_map.versus(cell_verdicts(stored, cell), baseline)); True when no method is
        ahead of the baseline there, the guide's test of a default. Pass the function."""
        if not callable(answer):
            return False, f"pass a function not_beaten(rows), not {answer!r}."
        stored = _map(stored)
        tried = 0
        for cell in dict.fromkeys(stored["map"]["cell"]):
            judged = cell_verdicts(stored, cell)
            for base in [m for m in METHODS_MAPPED
                         if m in set(judged["method"]) | set(judged["baseline"])]:
                rows = versus(judged, base)
                want = not (rows["verdict"] == "ahead").any()
                try:
                    got = bool(answer(rows.copy()))
                except Exception as err:
                    return False, f"not_beaten(...) raised {type(err).__name__}: {err}."
                tried += 1
                if got != want:
                    ahead = list(rows.loc[rows["verdict"] == "ahead", "method"])
                    return False, (f"in {cell} against {base}: methods ahead {ahead}, so "
                                   f"{want}; yours says {got}. Read the verdict column.")
        return True, f"right on {tried} (cell, baseline) pairs of the map."
