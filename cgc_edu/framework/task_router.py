"""A router that reads the request: which task does a prompt ask, if any?

`OnePlusN` routes a request by the task it names. A real request names none: something must
read it and choose the adapter set, and a general question should reach no adapter at all.
`TaskClassifier` is that something, as small as it can be: the frozen central model reads
the prompt (the mean of its last hidden layer over the prompt's tokens, adapters switched
off), and a linear softmax probe on that vector picks a task, or "no task" when it was
shown general requests. Its errors are the price of 1+N's premise outside construction: a
misrouted task request gets the wrong adapter, a misrouted general request gets one at all.

    router = TaskClassifier().fit(base, tokenizer, prompts, tasks, general=chat_questions)
    framework.generate(requests, router.predict(requests))   # None: the central model answers
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..adapters.injection import disable_adapters, has_adapters
from ..train.loop import model_device

#: The "no task" class's label in the confusion table (`predict` answers None for it).
NO_TASK = "(no task)"


@torch.no_grad()
def prompt_features(model, tokenizer, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(len(prompts), hidden) float32 on the CPU: the mean over each prompt's tokens of the
    model's last hidden layer, read by the bare base (adapters disabled, if it has any).

    Padding is masked out, so a prompt's vector does not depend on its batch; prompts are
    padded on the right, so each is read exactly as if it were alone. The model's train/eval
    mode is what it was before.
    """
    device, out = model_device(model), []
    was_training = model.training
    model.eval()
    try:
        with disable_adapters(model) if has_adapters(model) else contextlib.nullcontext():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start: start + batch_size]), return_tensors="pt",
                                padding=True, padding_side="right").to(device)
                hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
                mask = enc["attention_mask"].unsqueeze(-1).bool()
                summed = hidden.masked_fill(~mask, 0.0).sum(1)
                out.append((summed / mask.sum(1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def _label(task: Optional[str]) -> str:
    return NO_TASK if task is None else task


def _check_pairs(caller: str, prompts, tasks) -> tuple[list[str], list[Optional[str]]]:
    if isinstance(prompts, str) or isinstance(tasks, str):
        raise TypeError(f"{caller}: pass lists of prompts and of tasks, not one string "
                        f"({prompts!r} / {tasks!r}); write [prompt] and [task]")
    prompts, tasks = list(prompts), list(tasks)
    if len(prompts) != len(tasks):
        raise ValueError(f"{caller}: {len(prompts)} prompts but {len(tasks)} tasks; give one task "
                         "name per prompt (None for a general request that names no task)")
    return prompts, tasks


class TaskClassifier:
    """Reads a prompt and names its task (or None: a general request), from the frozen base.

    A linear softmax probe (logits ``x W^T + b``) on `prompt_features`, trained by ``steps``
    full-batch AdamW steps at rate ``lr`` (weight decay ``weight_decay``) on standardised
    features, classes weighted by the inverse of their frequency (a handful of general
    prompts count as much as thousands of task prompts). The problem is convex and the
    weights start at zero, so nothing is random: the same data always gives the same router.
    Features are computed in batches of ``batch_size``.
    """

    def __init__(self, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3,
                 batch_size: int = 64):
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay
        self.batch_size = batch_size
        self.classes: Optional[list[Optional[str]]] = None   # task names; None is "no task"

    def fit(self, model, tokenizer, prompts: Sequence[str], tasks: Sequence[Optional[str]],
            general: Sequence[str] = ()) -> "TaskClassifier":
        """Learn to route ``prompts`` to their ``tasks`` (one name per prompt; None marks a
        general request). ``general``: more general requests (task None), e.g. chat
        questions. ``model`` (its base; adapters are switched off) and ``tokenizer`` are kept
        to read the requests `predict` is given. Returns the router.
        """
        prompts, tasks = _check_pairs("TaskClassifier.fit", prompts, tasks)
        general = _check_pairs("TaskClassifier.fit", general, [None] * len(general))[0]
        prompts, tasks = prompts + general, tasks + [None] * len(general)
        classes = sorted({t for t in tasks if t is not None}) + [None] * (None in tasks)
        if len(classes) < 2:
            raise ValueError(f"TaskClassifier.fit: the prompts are of {len(classes)} class(es) "
                             f"{[_label(c) for c in classes]}; a router needs at least "
                             "2: add prompts of another task, or general requests (general=...)")
        x = prompt_features(model, tokenizer, prompts, self.batch_size)
        mean, scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
        x = (x - mean) / scale
        y = torch.tensor([classes.index(t) for t in tasks])
        counts = torch.bincount(y, minlength=len(classes)).float()
        # logits = x W^T + b, from zero: a convex problem, nothing drawn at random
        weight = torch.zeros(len(classes), x.shape[1], requires_grad=True)
        bias = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.AdamW([weight, bias], lr=self.lr, weight_decay=self.weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = F.cross_entropy(x @ weight.T + bias, y,
                                       weight=counts.sum() / (len(classes) * counts))
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.model, self.tokenizer, self.classes = model, tokenizer, classes
        self.mean, self.scale = mean, scale
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    @torch.no_grad()
    def probabilities(self, prompts: Sequence[str]) -> pd.DataFrame:
        """The router's softmax over its classes for each prompt: a row per prompt, a
        column per class (task names, and `NO_TASK` for a general request), rows summing
        to 1. A cautious router reads it: route where the top class is sure enough.

        Taught in: notebooks/10_real_model.ipynb.
        """
        if self.classes is None:
            raise ValueError("TaskClassifier: the router is not fitted yet; call "
                             "router.fit(model, tokenizer, prompts, tasks) first")
        prompts = list(prompts)
        columns = [_label(c) for c in self.classes]
        if not prompts:
            return pd.DataFrame(columns=columns, dtype=float)
        x = prompt_features(self.model, self.tokenizer, prompts, self.batch_size)
        logits = ((x - self.mean) / self.scale) @ self.weight.T + self.bias
        return pd.DataFrame(logits.softmax(-1).numpy(), columns=columns)

    def predict(self, prompts: Sequence[str]) -> list[Optional[str]]:
        """The task each prompt asks (a name), or None where it asks none: the most probable
        class of `probabilities`."""
        best = self.probabilities(prompts).to_numpy().argmax(-1) if len(prompts) else []
        return [self.classes[i] for i in best]

    def error_rate(self, prompts: Sequence[str], tasks: Sequence[Optional[str]]) -> float:
        """The share of ``prompts`` routed elsewhere than their ``tasks`` (None: no task)."""
        prompts, tasks = _check_pairs("TaskClassifier.error_rate", prompts, tasks)
        if not prompts:
            raise ValueError("TaskClassifier.error_rate: no prompts; pass held-out prompts and "
                             "their tasks")
        return sum(p != t for p, t in zip(self.predict(prompts), tasks)) / len(prompts)

    def confusion(self, prompts: Sequence[str], tasks: Sequence[Optional[str]]) -> pd.DataFrame:
        """Counts of (true task, routed task): a row per class the router knows (then one
        per task it never saw), a column per class; general requests are labelled `NO_TASK`.
        The diagonal is the right routes."""
        prompts, tasks = _check_pairs("TaskClassifier.confusion", prompts, tasks)
        truth = [_label(t) for t in tasks]
        routed = [_label(p) for p in self.predict(prompts)]
        order = [_label(c) for c in self.classes]
        rows = order + sorted(set(truth) - set(order))   # a task the router never saw: its own row
        table = pd.crosstab(pd.Series(truth, name="task"), pd.Series(routed, name="routed"))
        return table.reindex(index=rows, columns=order, fill_value=0)

    def __repr__(self) -> str:
        fitted = "not fitted" if self.classes is None else \
            f"classes={[_label(c) for c in self.classes]}"
        return f"TaskClassifier({fitted})"
