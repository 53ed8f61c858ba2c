"""Chapter 10's exercises: a cautious router that sends the requests it is unsure of to
the bare model, and the labels that put the loss on a chat-formatted answer alone.

Taught in: notebooks/10_real_model.ipynb.
"""
from __future__ import annotations

import pandas as pd
import torch
from datasets import Dataset

from ...data.tinytasks import TinyTasksCollator
from ...framework.task_router import NO_TASK
from ...train.finetune import chat_format
from .checks import ChapterChecks, exercise, run_theirs


class Checks(ChapterChecks):
    """The self-checks of chapter 10: ``Checks().ex4(answer_labels, tokenizer)`` prints right /
    not yet and why, and returns True or False.

    Taught in: notebooks/10_real_model.ipynb.
    """

    chapter = "10"

    @exercise
    def ex1(answer):
        """A cautious router: write cautious(probabilities, threshold) that routes each row of
        router.probabilities(prompts) (a column per task, and "(no task)") to its most
        probable task where that probability is at least threshold, and to None (the bare
        model) otherwise, or where the most probable class is "(no task)". Return a list, one
        task name or None per row: check.ex1(cautious)."""
        if not callable(answer):
            return False, f"pass a function cautious(probabilities, threshold), not {answer!r}."
        gen = torch.Generator().manual_seed(0)
        columns = ["upper", "plural", "past", NO_TASK]
        weights = torch.rand(12, len(columns), generator=gen) ** 4
        table = pd.DataFrame((weights / weights.sum(1, keepdim=True)).numpy(), columns=columns)
        table.iloc[0] = [0.05, 0.05, 0.1, 0.8]             # sure it is no task
        table.iloc[1] = [0.6, 0.2, 0.1, 0.1]
        for threshold in (0.0, 0.5, 0.7, 0.95):
            top, sure = table.idxmax(axis=1), table.max(axis=1)
            want = [t if t != NO_TASK and p >= threshold else None for t, p in zip(top, sure)]
            got, why = run_theirs(answer, table.copy(), threshold)
            if why:
                return False, why
            if not isinstance(got, (list, tuple)) or len(got) != len(want):
                return False, (f"return one route per row ({len(want)}), a task name or None; "
                               f"you returned {got!r}.")
            wrong = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
            if wrong:
                i = wrong[0]
                row = ", ".join(f"{c} {table.iat[i, k]:.2f}" for k, c in enumerate(columns))
                return False, (f"at threshold {threshold}, row {i} ({row}) should go to "
                               f"{want[i]!r}, yours to {got[i]!r}: the most probable class, if "
                               "it is a task and sure enough; else None.")
        return True, ("a request the router is unsure of goes to the bare model: fewer general "
                      "questions reach an adapter, at the price of task items the router was "
                      "right about but unsure of.")

    @exercise
    def ex4(answer, tokenizer):
        """Put the loss on the answer alone: write answer_labels(tokenizer, row) for one
        chat-formatted row (a row of chat_format's output) returning (input_ids, labels): the
        ids of the prompt, the answer and the end of turn (tokenizer.eos_token_id), and for
        labels -100 on every prompt token, the id itself on the answer and the end of turn.
        Pass the tokenizer: check.ex4(answer_labels, tokenizer)."""
        if not callable(answer):
            return False, f"pass a function answer_labels(tokenizer, row), not {answer!r}."
        rows = chat_format(Dataset.from_dict({
            "prompt": ['Spell "cat" backwards.', "What is the capital of France?"],
            "target": ["tac", "Paris"], "task_id": [0, 0]}), tokenizer)
        collate = TinyTasksCollator(tokenizer)
        for row in rows:
            want = collate([row])
            ids, labels = want["input_ids"][0].tolist(), want["labels"][0].tolist()
            got, why = run_theirs(answer, tokenizer, dict(row))
            if why:
                return False, why
            try:
                got_ids, got_labels = (list(map(int, x)) for x in got)
            except (TypeError, ValueError):
                return False, f"answer_labels gave {got!r}; return two lists (input_ids, labels)."
            if got_ids != ids:
                end = "" if got_ids[-1:] == [tokenizer.eos_token_id] else (
                    " The answer ends with the end of turn, tokenizer.eos_token_id: the model "
                    "must learn to stop.")
                return False, (f"for {row['target']!r} the ids differ from the collator's "
                               f"({len(got_ids)} against {len(ids)} tokens): the prompt "
                               f"tokenized with its special tokens, then the answer without "
                               f"them.{end}")
            if got_labels != labels:
                return False, (f"for {row['target']!r} the labels differ: -100 on each of the "
                               f"{labels.count(-100)} prompt tokens (no loss there), the id "
                               "itself on the answer and the end of turn.")
        return True, ("the labels the collator builds: the loss falls on the answer and the "
                      "end of turn alone, whatever the chat template adds before them.")
