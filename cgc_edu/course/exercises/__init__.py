"""Exercises that check themselves, one module per chapter: chapter NN's checks are in
``chNN_<its notebook's name>.py`` (``ch05_cgc_lora``), the machinery they share in `checks`.

    from cgc_edu.course.exercises.ch05_cgc_lora import Checks
    check = Checks()
    check.questions()          # prints the chapter's questions
    check.ex1(answer)          # prints right or not yet, and why; returns a bool

Each check computes the right answer from the library (never a number typed in), compares
the learner's answer with it and says why. Some checks read the learner's own objects
(``check.ex1(answer, recording)``): the answer is then judged on their run, not ours.
``Checks("05")`` finds a chapter's checks by its number.

Taught in: notebooks/00_tour.ipynb.
"""
from __future__ import annotations

from . import (ch00_tour, ch01_lora_from_scratch, ch02_mixture_of_experts,
               ch03_multitask_learning, ch04_moe_lora, ch05_cgc_lora, ch06_one_plus_n,
               ch07_experiments, ch08_gate_lab, ch09_your_model, ch10_real_model,
               ch11_which_method, ch12_appendix_controls)
from .checks import ChapterChecks, stored_results_folder

#: chapter number -> its checks
CHAPTERS: dict[str, type[ChapterChecks]] = {module.Checks.chapter: module.Checks for module in (
    ch00_tour, ch01_lora_from_scratch, ch02_mixture_of_experts, ch03_multitask_learning,
    ch04_moe_lora, ch05_cgc_lora, ch06_one_plus_n, ch07_experiments, ch08_gate_lab,
    ch09_your_model, ch10_real_model, ch11_which_method, ch12_appendix_controls)}


def Checks(chapter) -> ChapterChecks:  # noqa: N802 - the name the chapters have always called
    """The self-checks of a chapter by its number: ``Checks("05")`` (or ``Checks(5)``) is
    ``cgc_edu.course.exercises.ch05_cgc_lora.Checks()``; ``.ex2(answer)`` prints right /
    not yet and why, and returns True or False; ``questions()`` prints what each exercise
    asks.

    Taught in: notebooks/07_experiments.ipynb.
    """
    chapter = f"{int(chapter):02d}" if str(chapter).isdigit() else str(chapter)
    if chapter not in CHAPTERS:
        raise ValueError(f"Checks: no exercises for chapter {chapter!r}; choose one of "
                         f"{sorted(CHAPTERS)}.")
    return CHAPTERS[chapter]()


__all__ = ["Checks", "CHAPTERS", "ChapterChecks", "stored_results_folder"]
