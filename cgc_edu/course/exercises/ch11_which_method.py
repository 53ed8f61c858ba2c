"""Chapter 11's exercises, each building a piece of the guide: the rank a task sees when a
CGC-LoRA bank cuts the budget, a test of whether the central model reads a prompt format,
and the guide's reading of the map's verdicts over every cell.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from dataclasses import replace

from ...data.tinytasks import build_tokenizer, format_prompt
from ...methods import METHODS
from ...models.central import load_central_model
from ...study.fair_map import METHODS_MAPPED, cell_verdicts, read_map, versus
from ..map_explorer import complete_cells
from ...train.loop import greedy_decode
from .checks import ChapterChecks, close, exercise, run_theirs, stored_results_folder


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
        """Write cgc_task_rank(budget, n_tasks, n_common, n_specific): the rank one task sees
        in a CGC-LoRA bank that holds the parameters of one LoRA of rank budget, cut into
        n_common common experts and n_specific private experts per task, all of one rank.
        Pass the function: check.ex1(cgc_task_rank)."""
        if not callable(answer):
            return False, (f"pass a function cgc_task_rank(budget, n_tasks, n_common, "
                           f"n_specific), not {answer!r}.")
        cases = [(24, 8, 4, 1), (48, 8, 4, 1), (24, 8, 8, 2), (24, 8, 16, 1), (36, 4, 2, 1),
                 (60, 26, 8, 2), (120, 26, 16, 4), (12, 2, 2, 1), (24, 8, 0, 3)]
        for budget, n, c, s in cases:
            bank = replace(METHODS["cgc_lora"], n_common=c, n_specific=s)
            want = bank.task_rank(budget, n, "params")
            got, why = run_theirs(answer, budget, n, c, s)
            if why:
                return False, why
            if got != want:
                experts = c + s * n
                return False, (f"cgc_task_rank({budget}, {n}, {c}, {s}) gave {got!r}: the bank "
                               f"holds {experts} experts, common and private, all of one "
                               "rank: what rank is each, and how many of them does a task "
                               "see?")
        return True, (f"right on {len(cases)} banks; at budget 24 a TinyTasks task sees rank "
                      "10 with 4 + 1 experts, 17 with 16 + 1: more common experts, more rank "
                      "a task sees.")

    @exercise
    def ex2(answer, good=None, bad=None):
        """Write reads(separator, words) -> the share of words the central model copies when
        the task's name `shift` and separator come before them (format_prompt(word, "shift",
        separator)); then find a separator other than the chapter's " " and ":" that it reads
        (share 0.9 or more) and one it does not (0.1 or less): check.ex2(reads, good, bad)."""
        if not callable(answer):
            return False, f"pass a function reads(separator, words), not {answer!r}."
        model, tok = load_central_model(), build_tokenizer()

        def share(separator, words):
            prompts = [format_prompt(w, "shift", separator) for w in words]
            outs = greedy_decode(model, tok, prompts)
            return sum(o.startswith(w) for o, w in zip(outs, words)) / len(words)

        words = ["yahm", "qda", "loavcf", "bgdwfs", "zhj", "cab"]
        for separator in (" ", ":", "-", ","):
            want = share(separator, words)
            got, why = run_theirs(answer, separator, list(words))
            if why:
                return False, why
            if not close(got, want):
                return False, (f"reads({separator!r}, {words}) gave {got!r}; the model copies "
                               f"{want:.2f} of them: decode each prompt and look.")
        if not (isinstance(good, str) and isinstance(bad, str)):
            return False, ("reads is right; now pass a separator it reads and one it does not: "
                           "check.ex2(reads, good, bad).")
        if {good, bad} & {" ", ":"}:
            return False, ("the chapter already showed ' ' and ':'; try others with reads "
                           "(two characters, or a space beside a sign, count too) and pass "
                           "a new pair.")
        vocab = tok.get_vocab()
        for separator in (good, bad):
            unknown = sorted({ch for ch in separator if ch not in vocab})
            if unknown or not separator:
                return False, (f"{separator!r}: the tokenizer reads "
                               f"{unknown or 'an empty separator'} as nothing it knows; use "
                               "its characters (tok.get_vocab()), such as '-', ',' or '.'.")
        fresh = ["mfozc", "tkeu", "pxaw", "ghlbnq", "wiry", "duvk", "onse", "zarq"]
        good_share, bad_share = share(good, fresh), share(bad, fresh)
        if good_share < 0.9 or bad_share > 0.1:
            return False, (f"on fresh words the model copies {good_share:.2f} after "
                           f"{good!r} and {bad_share:.2f} after {bad!r}; want 0.9 or more, and "
                           "0.1 or less.")
        return True, (f"after {good!r} it copies {good_share:.2f} of fresh words, after "
                      f"{bad!r} {bad_share:.2f}: test your prompt format before you train.")

    @exercise
    def ex3(answer, stored=None):
        """Write never_beaten(stored) -> set of method names: the methods that no other method
        is ahead of in any complete cell of the map (use complete_cells, and
        fair_map.versus(fair_map.cell_verdicts(stored, cell), method) for each method). Pass
        the function: check.ex3(never_beaten)."""
        if not callable(answer):
            return False, f"pass a function never_beaten(stored), not {answer!r}."
        stored = _map(stored)
        cases = [(stored, _never_beaten(stored))]
        if cases[0][1]:                     # a map where some method is never beaten
            turned, why_turned = _one_verdict_turned(stored)
            cases.append((turned, _never_beaten(turned)))
        for case, want in cases:
            try:
                got = answer(case)
            except Exception as err:  # the learner's code: report, do not crash
                return False, f"never_beaten(stored) raised {type(err).__name__}: {err}."
            if set(got or ()) != want:
                where = "" if case is stored else f" on a map where {why_turned}"
                return False, (f"never_beaten gave {sorted(set(got or ()))}{where}; a method "
                               "fails when, in some complete cell, another method is ahead of "
                               "it (read against that method as baseline: 'ahead' in the "
                               "verdict column). Read the verdicts of each cell.")
        return True, (f"{sorted(_never_beaten(stored))}: no method is ahead of them in any of "
                      f"the {len(complete_cells(stored))} complete cells.")


def _never_beaten(stored) -> set:
    """The methods no other method is ahead of in any complete cell (the check's answer)."""
    want = set(METHODS_MAPPED)
    for cell in complete_cells(stored):
        judged = cell_verdicts(stored, cell)
        want -= {m for m in METHODS_MAPPED if (versus(judged, m)["verdict"] == "ahead").any()}
    return want


def _one_verdict_turned(stored):
    """The map with one comparison rewritten so that a never-beaten method is clearly behind
    another in one complete cell, and a sentence that says so: an answer that reads the
    verdicts changes with it, a fixed one does not."""
    loser = sorted(_never_beaten(stored))[0]
    table = stored["map"].copy()
    cells = complete_cells(stored)
    row = table.index[table["cell"].isin(cells) & ((table["method"] == loser)
                                                   | (table["baseline"] == loser))
                      & table["method"].isin(METHODS_MAPPED)
                      & table["baseline"].isin(METHODS_MAPPED)][0]
    behind = table.at[row, "method"] == loser             # the row reads method - baseline
    table.loc[row, ["difference", "ci_low", "ci_high", "p"]] = (
        [-0.3, -0.35, -0.25, 1e-9] if behind else [0.3, 0.25, 0.35, 1e-9])
    other, cell = table.at[row, "baseline" if behind else "method"], table.at[row, "cell"]
    judged = cell_verdicts({"map": table}, cell).set_index(["method", "baseline"])
    mine = table["cell"] == cell                        # the stored columns agree with it
    pairs = list(zip(table.loc[mine, "method"], table.loc[mine, "baseline"]))
    table.loc[mine, "p_holm"] = judged.loc[pairs, "p_holm"].to_numpy()
    table.loc[mine, "verdict"] = judged.loc[pairs, "verdict"].to_numpy()
    return ({**stored, "map": table},
            f"{METHODS[other].short} is ahead of {METHODS[loser].short} in "
            f"{cell}")
