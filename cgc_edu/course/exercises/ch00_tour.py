"""Chapter 00's exercises: the TinyTasks suite, its prompts and its rules.

``from cgc_edu.course.exercises.ch00_tour import Checks``; ``check = Checks()``, then
``check.ex1(answer)``; ``check.questions()`` prints the questions.

Taught in: notebooks/00_tour.ipynb.
"""
from __future__ import annotations

import pandas as pd

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
        """make_tiny_tasks(seed=0, n_train=100, n_low=10): how many training rows does the suite
        hold in all?"""

        rows = make_tiny_tasks(seed=0, n_train=100, n_low=10, n_validation=0, n_test=0)["train"]
        want = len(rows)
        counts = pd.Series(rows["task"]).value_counts()
        low = sorted(counts.index[counts == 10])
        if answer == want:
            return True, (f"{want}: {len(TASKS) - len(low)} tasks with n_train = 100 rows and the "
                          f"{len(low)} low-data tasks {low} with n_low = 10.")
        return False, (f"not every task gets n_train rows: the low-data tasks {low} get n_low; "
                       f"you said {answer!r}.")

    @exercise
    def ex2(answer):
        """With make_tiny_tasks(..., name_in_prompt=True), what is the prompt of task `reverse` on
        the word `cab`?"""

        row = make_tiny_tasks(seed=0, tasks=["reverse"], n_train=1, n_low=1, n_validation=0,
                              n_test=0, name_in_prompt=True)["train"][0]
        word = row["target"][::-1]
        want = row["prompt"].replace(word, "cab")
        if answer == want:
            return True, f"{want!r}: the task's name, a colon, the word and '='."
        return False, (f"the prompt carries the task's name before the word: it is {want!r} "
                       f"(you gave {answer!r}).")

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
