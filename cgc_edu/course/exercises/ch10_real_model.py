"""Chapter 10's exercises: 1+N's routing policy for any adapter, and the chat format an
instruct model reads, written by hand.

Taught in: notebooks/10_real_model.ipynb.
"""
from __future__ import annotations

import torch
from datasets import Dataset

from ...adapters.config import AdapterConfig
from ...adapters.injection import add_adapters, disable_adapters
from ...models.central import load_central_model
from ...train.finetune import chat_format
from .checks import ChapterChecks, exercise, run_theirs, tensor_close


class Checks(ChapterChecks):
    """The self-checks of chapter 10: ``Checks().ex4(chat_prompt, tokenizer)`` prints right /
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
        """Build the chat format: write chat_prompt(tokenizer, question) giving the text an instruct
        model reads before its answer (tokenizer.apply_chat_template with the user's turn and the
        generation prompt); pass the tokenizer: check.ex4(chat_prompt, tokenizer)."""

        questions = ["Spell cat backwards.", "What is the capital of France?"]
        want = chat_format(Dataset.from_dict({"prompt": questions, "target": ["tac", "Paris"]}),
                           tokenizer)["prompt"]
        for question, rendered in zip(questions, want):
            got, why = run_theirs(answer, tokenizer, question)
            if why:
                return False, why
            if got != rendered:
                hint = ("add_generation_prompt=True opens the assistant's turn"
                        if isinstance(got, str) and rendered.startswith(got)
                        else "tokenize=False returns the text")
                return False, f"for {question!r} chat_format renders {rendered!r}; {hint}."
        return True, ("the text chat_format trains on: the answer's tokens follow it, and only "
                      "they carry the loss.")
