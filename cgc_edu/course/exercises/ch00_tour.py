"""Chapter 00's exercises: what the experts train, the suite's prompts and its rules.

``from cgc_edu.course.exercises.ch00_tour import Checks``; ``check = Checks()``, then
``check.ex1(answer)``; ``check.questions()`` prints the questions.

Taught in: notebooks/00_tour.ipynb.
"""
from __future__ import annotations

from ...adapters.config import AdapterConfig, adapter_parameter_count
from ...data.tinytasks import TASKS, make_tiny_tasks
from .checks import ChapterChecks, exercise, run_theirs


class Checks(ChapterChecks):
    """The self-checks of chapter 00: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/00_tour.ipynb.
    """

    chapter = "00"

    @exercise
    def ex1(answer):
        """Count what the experts train: write expert_params(config, d_in, d_out), the numbers
        one adapted d_out x d_in projection holds in its experts (each expert an A of
        config.expert_rank x d_in and a B of d_out x config.expert_rank; the gate left out).
        Pass the function: check.ex1(expert_params)."""
        if not callable(answer):
            return False, f"pass a function expert_params(config, d_in, d_out), not {answer!r}."
        cases = [(AdapterConfig.cgc_lora(rank=12, alpha=24, n_tasks=8), 128, 128),
                 (AdapterConfig.cgc_lora(rank=12, alpha=24, n_tasks=8), 128, 344),
                 (AdapterConfig.cgc_lora(rank=6, n_tasks=2, n_common=4, n_specific=2), 64, 32),
                 (AdapterConfig.lora(rank=8), 4096, 4096),
                 (AdapterConfig.cgc_lora(rank=24, n_tasks=8, n_common=4, budget="total"),
                  128, 128)]
        for config, d_in, d_out in cases:
            want = adapter_parameter_count(config, d_in, d_out)["experts"]
            got, why = run_theirs(answer, config, d_in, d_out)
            if why:
                return False, why
            if got != want:
                return False, (f"on a {d_out} x {d_in} projection with {config.n_experts} "
                               f"experts of rank {config.expert_rank} you gave {got!r}, not "
                               f"{want}: every expert of the bank trains, not only the ones a "
                               "task uses, and each holds an A and a B.")
        return True, (f"right on {len(cases)} banks: a CGC-LoRA module trains all its experts "
                      "(config.n_experts), though each task uses only "
                      "config.experts_per_task of them.")

    @exercise
    def ex2(answer):
        """Name the task in the prompt: write named_prompt(task, word), the prompt that
        make_tiny_tasks(..., name_in_prompt=True) writes for that task and word. Pass the
        function: check.ex2(named_prompt)."""
        if not callable(answer):
            return False, f"pass a function named_prompt(task, word), not {answer!r}."
        rows = make_tiny_tasks(seed=7, n_train=2, n_low=2, n_validation=0, n_test=0,
                               name_in_prompt=True)["train"]
        plain = make_tiny_tasks(seed=7, n_train=2, n_low=2, n_validation=0, n_test=0)["train"]
        for row, bare in zip(rows, plain):
            word = bare["prompt"][:-1]                           # "cab=" -> "cab"
            got, why = run_theirs(answer, row["task"], word)
            if why:
                return False, why
            if got != row["prompt"]:
                return False, (f"named_prompt({row['task']!r}, {word!r}) gave {got!r}; the "
                               f"suite writes {row['prompt']!r}.")
        return True, (f"as make_tiny_tasks writes all {len(rows)} rows: with the name in the "
                      "prompt one LoRA can tell the tasks apart; without it, only the task id "
                      "can (chapter 11).")

    @exercise
    def ex3(answer):
        """Build the tasks: write answer(task, word) giving the target of each TinyTasks task (e.g.
        answer("rotate", "cab") == "abc"); the check runs it on a fresh suite's rows."""

        rows = make_tiny_tasks(seed=5, n_train=12, n_low=12, n_validation=0, n_test=0,
                               name_in_prompt=True)["train"]
        for row in rows:
            word = row["prompt"].split(":", 1)[1][:-1]          # "task:word=" -> word
            got, why = run_theirs(answer, row["task"], word)
            if why:
                return False, why
            if got != row["target"]:
                return False, (f"{row['task']}({word!r}) should be {row['target']!r}, yours gave "
                               f"{got!r}; chapter 00's table of tasks says what each one does.")
        return True, f"all {len(rows)} rows of all {len(TASKS)} tasks, as make_tiny_tasks writes them."
