"""Forgetting: what fine-tuning costs a model outside its tasks.

Two measures: `general_probe` asks questions outside every task (the bare model answers
them right) and scores each answer; `text_loss` is the loss on held-out general text.
peft's method comparison calls the rise of that loss after tuning "forgetting". The text
should come from outside every task, e.g. `cgc_edu.data.general_text.general_text`.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..adapters.injection import has_adapters, task_context
from ..data.english import GENERAL_PROBE, probe_prompts, score_probe
from .loop import greedy_decode, model_device


@torch.no_grad()
def text_loss(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128,
              task_id: Optional[int] = None) -> float:
    """The mean next-token cross-entropy of ``model`` on ``texts`` (nats per token).

    Every text is cut to ``max_length`` tokens; the mean is over all predicted tokens of all
    texts (a long text weighs more than a short one), padding left out (texts are padded on
    the right, so each one is read exactly as if it were alone). The model's train/eval mode
    is what it was before.

    ``task_id`` routes an adapted model that needs task ids (every text as that task, as a
    misrouted request would be); leave it out for a bare model, a model with adapters that
    need no task, or inside ``with disable_adapters(model):`` for the bare base.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("text_loss: texts is empty; pass a list of strings, e.g. general_text()")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"text_loss: the tokenizer {type(tokenizer).__name__} has no pad token; "
                         "set one, e.g. tokenizer.pad_token = tokenizer.eos_token")
    if task_id is not None and not has_adapters(model):
        raise ValueError(f"text_loss: task_id={task_id!r} but {type(model).__name__} has no "
                         "cgc_edu adapters to route; leave task_id out for this model")
    device = model_device(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length, padding_side="right").to(device)
            routed = (contextlib.nullcontext() if task_id is None else
                      task_context(model, torch.full((len(enc["input_ids"]),), int(task_id),
                                                     dtype=torch.long, device=device)))
            with routed:
                logits = model(**enc).logits
            # token k+1 is predicted from tokens up to k; padded positions predict nothing
            targets = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                     ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("text_loss: no text has two tokens or more, so nothing is predicted; "
                         "pass longer texts (or a larger max_length)")
    return total / count


def general_probe(model, tokenizer, max_new_tokens: int = 24, task_ids=None,
                  system: Optional[str] = None) -> pd.DataFrame:
    """Ask ``model`` every question of `cgc_edu.data.english.GENERAL_PROBE` (chat template,
    greedy) and score each answer: does it hold the right word?

    ``task_ids`` routes an adapted model that needs them (one id for every question);
    without, the model is called as it is: a bare model, an adapter that needs no task, or
    1+N's central model for a request that names no task.

    Taught in: notebooks/10_real_model.ipynb
    """
    ids = None if task_ids is None else [int(task_ids)] * len(GENERAL_PROBE)
    answers = greedy_decode(model, tokenizer, probe_prompts(tokenizer, system), task_ids=ids,
                            max_new_tokens=max_new_tokens, batch_size=len(GENERAL_PROBE))
    return score_probe([a.strip() for a in answers])
