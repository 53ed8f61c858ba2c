"""Chapter 10's exercise: the chat format an instruct model reads, written by hand.

Taught in: notebooks/10_real_model.ipynb.
"""
from __future__ import annotations

from datasets import Dataset

from ...train.finetune import chat_format
from .checks import ChapterChecks, exercise, run_theirs


class Checks(ChapterChecks):
    """The self-check of chapter 10: ``Checks().ex4(chat_prompt, tokenizer)`` prints right /
    not yet and why, and returns True or False.

    Taught in: notebooks/10_real_model.ipynb.
    """

    chapter = "10"

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
