"""Chapter 10's exercises: 1+N's routing policy for any adapter, and the labels that put
the loss on a chat-formatted answer alone, written by hand.

Taught in: notebooks/10_real_model.ipynb.
"""
from __future__ import annotations

import torch
from datasets import Dataset

from ...adapters.config import AdapterConfig
from ...adapters.injection import add_adapters, disable_adapters
from ...data.tinytasks import TinyTasksCollator
from ...models.central import load_central_model
from ...train.finetune import chat_format
from .checks import ChapterChecks, exercise, run_theirs, tensor_close


class Checks(ChapterChecks):
    """The self-checks of chapter 10: ``Checks().ex4(answer_labels, tokenizer)`` prints right /
    not yet and why, and returns True or False.

    Taught in: notebooks/10_real_model.ipynb.
    """

    chapter = "10"

    @exercise
    def ex1(answer):
        """Route as 1+N does, with any adapter: write route(model, input_ids, task_ids) that
        returns the logits of a batch in which a row whose task id is None is answered by the
        bare central model (disable_adapters) and every other row by its task's adapter."""

        model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(
            rank=6, n_tasks=3, n_common=2, n_specific=1))
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:          # adapters away from their zero start
                    param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
        input_ids = torch.randint(3, model.config.vocab_size, (5, 7),
                                  generator=torch.Generator().manual_seed(1))
        task_ids = [2, None, 0, None, 1]
        with torch.no_grad():
            got, why = run_theirs(answer, model, input_ids, list(task_ids))
            if why:
                return False, why
            with disable_adapters(model):
                bare = model(input_ids).logits
            routed = model(input_ids, task_ids=torch.tensor([t or 0 for t in task_ids])).logits
        want = torch.stack([bare[i] if t is None else routed[i]
                            for i, t in enumerate(task_ids)])
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return False, (f"return the batch's logits, a tensor of shape {tuple(want.shape)} "
                           f"(you returned {type(got).__name__}).")
        wrong = [i for i in range(len(task_ids)) if not tensor_close(got[i], want[i])]
        if wrong:
            return False, (f"rows {wrong} (task ids {[task_ids[i] for i in wrong]}) differ: a "
                           "None row needs the bare model, the others their own task's id.")
        return True, ("rows without a task get the bare model's logits, the others their "
                      "adapter's: the routing that keeps 1+N's general answers, for any adapter.")

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
