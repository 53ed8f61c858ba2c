"""Chapter 11's exercises, each building a piece of the guide: the rank a task keeps when
the budget is cut into one LoRA per task, a test of whether the central model reads a
prompt format, and the guide's reading of the map's verdicts over every cell.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from ...data.tinytasks import build_tokenizer
from ...methods import METHODS
from ...models.central import load_central_model
from ...study.fair_map import METHODS_MAPPED, cell_verdicts, read_map, versus
from ..map_explorer import complete_cells
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
                held = got * n if isinstance(got, int) else got
                return False, (f"separate_rank({budget}, {n}) gave {got!r}: {n} LoRAs of that "
                               f"rank hold {held} rank units against the budget's {budget}; "
                               "find the largest rank whose n copies fit.")
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
                return False, (f"copies({prompt!r}, {word!r}) says {got}, which the model's "
                               "greedy answer does not bear out: decode it and look.")
        read = [p for (p, w), o in zip(COPY_PROMPTS, outs) if o.startswith(w)]
        return True, f"right on {len(COPY_PROMPTS)} prompts; the model copies after: {read}."

    @exercise
    def ex3(answer, stored=None):
        """Write never_beaten(stored) -> set of method names: the methods that no other method
        is ahead of in any complete cell of the map (use complete_cells, and
        fair_map.versus(fair_map.cell_verdicts(stored, cell), method) for each method). Pass
        the function: check.ex3(never_beaten)."""
        if not callable(answer):
            return False, f"pass a function never_beaten(stored), not {answer!r}."
        stored = _map(stored)
        want = set(METHODS_MAPPED)
        for cell in complete_cells(stored):
            judged = cell_verdicts(stored, cell)
            want -= {m for m in METHODS_MAPPED
                     if (versus(judged, m)["verdict"] == "ahead").any()}
        try:
            got = answer(stored)
        except Exception as err:  # the learner's code: report, do not crash
            return False, f"never_beaten(stored) raised {type(err).__name__}: {err}."
        if set(got or ()) != want:
            return False, (f"never_beaten gave {sorted(set(got or ()))}; a method fails when, "
                           "in some complete cell, another method is ahead of it (read "
                           "against that method as baseline: 'ahead' in the verdict "
                           "column). Check each cell.")
        return True, (f"{sorted(want)}: no method is ahead of them in any of the "
                      f"{len(complete_cells(stored))} complete cells.")
