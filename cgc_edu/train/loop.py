"""A short training loop for adapters, and exact-match evaluation by greedy decoding.

Each batch may mix tasks: it carries ``task_ids`` that reach the adapters as
``model(..., task_ids=...)`` during training and through ``task_context`` during
``model.generate``. Batches follow the model: they are built on the device of its
parameters (move the model with ``model.to("cuda")`` first), so nothing here assumes a CPU. For bigger models use ``transformers.Trainer`` with
``TinyTasksCollator`` and ``remove_unused_columns=False``: the collator's ``task_ids``
reach the model the same way.

Taught in: notebooks/04_moe_lora.ipynb
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..adapters.injection import adapter_layers, has_adapters, task_context
from ..adapters.layer import TaskGate
from ..data.tinytasks import TinyTasksCollator
from ..utils import seed_everything, training_seed, with_knobs


def _rows(dataset) -> list[dict]:
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    if not rows:
        raise ValueError("the dataset is empty: pass a split with examples, e.g. tasks['train']")
    missing = {"prompt", "target", "task_id"} - set(rows[0])
    if missing:
        raise KeyError(f"dataset rows lack the column(s) {sorted(missing)}; pass a TinyTasks split "
                       "(cgc_edu.data.make_tiny_tasks(...)['train'])")
    return rows


def model_device(model) -> torch.device:
    """The device of the model's first parameter: where its batches must go.

    Taught in: notebooks/09_your_model.ipynb
    """
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _routed(model, task_ids):
    """task_context for a model with adapters; nothing to route for a bare model."""
    # the router add_adapters attaches (cheap: adapter_layers would walk every module)
    if task_ids is None or not has_adapters(model):
        return contextlib.nullcontext()
    return task_context(model, task_ids)


def _uniform_draw(rows, batch_size, order):
    """Yield batches of row indices in which every task has an equal share (the remainder
    of ``batch_size`` goes to tasks in a rotating order); each task's rows are reshuffled
    when they run out."""
    by_task: dict = {}
    for i, row in enumerate(rows):
        by_task.setdefault(row["task_id"], []).append(i)
    tasks = sorted(by_task)
    queues = {t: [] for t in tasks}
    turn = 0
    while True:
        counts = {t: batch_size // len(tasks) for t in tasks}
        for k in range(batch_size % len(tasks)):
            counts[tasks[(turn + k) % len(tasks)]] += 1
        turn = (turn + batch_size % len(tasks)) % len(tasks)
        batch = []
        for t in tasks:
            while len(queues[t]) < counts[t]:
                perm = torch.randperm(len(by_task[t]), generator=order).tolist()
                queues[t] += [by_task[t][j] for j in perm]
            batch += queues[t][:counts[t]]
            del queues[t][:counts[t]]
        perm = torch.randperm(len(batch), generator=order).tolist()
        yield [batch[j] for j in perm]


@dataclass(frozen=True)
class Recipe:
    """How `train` trains: every knob of the loop, checked once, here.

    ``steps`` AdamW steps at peak rate ``lr`` on batches of ``batch_size``; ``seed`` draws
    the batch order (and, with the adapters' initialisation, a run). ``warmup``: the share
    of the steps over which the rate rises linearly from 0 to ``lr``; after it the rate
    decays linearly to 0. ``clip``: the largest gradient norm (None: no clipping).
    ``task_sampling``: "data" (batches reshuffle the rows each epoch, so tasks mix in
    proportion to their data) or "uniform" (every task an equal share of each batch: a task
    with 50 rows trains as often as one with 2000). ``gate_lr``: the task gates' own rate
    (None: ``lr``). The defaults are the notebooks' short recipe; `cgc_edu.study.protocol`
    passes the fair one (warm-up, clipping).
    """

    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0
    gate_lr: Optional[float] = None
    task_sampling: str = "data"
    warmup: float = 0.0
    clip: Optional[float] = None

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        if self.task_sampling not in ("data", "uniform"):
            raise ValueError(f"task_sampling={self.task_sampling!r}: choose 'data' (tasks in "
                             "proportion to their rows) or 'uniform' (every task equally often)")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup={self.warmup!r}: a share of the steps in [0, 1), e.g. 0.06")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip={self.clip!r}: a positive gradient norm, e.g. 1.0, or None")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: the learning rate must be positive, e.g. 3e-3")

    def rate(self, step: int) -> float:
        """The multiplier of ``lr`` at ``step`` (0-based): linear warm-up, then linear decay."""
        rise = round(self.warmup * self.steps)
        if step < rise:
            return (step + 1) / (rise + 1)
        return 1.0 - (step - rise) / (self.steps - rise)


def train(model, dataset, tokenizer, recipe: Optional[Recipe] = None,
          callback: Optional[Callable] = None, callback_every: int = 10,
          progress: bool = True, **knobs) -> list[float]:
    """Train the model's trainable parameters (its adapters) by ``recipe`` (a `Recipe`; its
    fields may also be given as keywords: ``train(model, data, tok, steps=200, lr=3e-3)``).

    The loss is on the target only. ``callback(step, model)`` is called before the first
    step (step 0), every ``callback_every`` steps and after the last one; a
    ``GateRecorder`` is such a callback. Returns the loss of every step. The model's
    train/eval mode is what it was before.

    Taught in: notebooks/04_moe_lora.ipynb
    """
    recipe = with_knobs(recipe, Recipe(), knobs, "train")
    if not isinstance(callback_every, int) or callback_every < 1:
        raise ValueError(f"callback_every={callback_every!r}: must be a positive integer")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; add adapters first "
                         "(cgc_edu.add_adapters(model, config))")
    rows = _rows(dataset)
    seed_everything(recipe.seed)
    collate = TinyTasksCollator(tokenizer, device=model_device(model))
    routed = bool(adapter_layers(model))
    opt, sched = _optimizer(model, params, recipe)
    order = torch.Generator().manual_seed(training_seed(recipe.seed))
    draw = _draw(rows, recipe, order)
    losses = []
    was_training = model.training   # restored at the end: the caller keeps its mode
    model.train()
    if callback is not None:
        callback(0, model)
    bar = tqdm(range(1, recipe.steps + 1), desc="training", disable=not progress)
    for step in bar:
        batch = collate([rows[i] for i in next(draw)])
        task_ids = batch.pop("task_ids")
        loss = model(**batch, **({"task_ids": task_ids} if routed else {})).loss
        loss.backward()
        if recipe.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, recipe.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0 or step == recipe.steps:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if callback is not None and (step % callback_every == 0 or step == recipe.steps):
            callback(step, model)
    model.train(was_training)
    return losses


def _optimizer(model, params: list, recipe: Recipe):
    """AdamW over ``params`` at ``recipe.lr`` (the task gates at ``recipe.gate_lr`` when
    given) and its scheduler: the recipe's warm-up and linear decay."""
    gate_ids = {id(p) for m in model.modules() if isinstance(m, TaskGate)
                for p in m.parameters() if p.requires_grad} if recipe.gate_lr is not None else set()
    groups = [{"params": [p for p in params if id(p) not in gate_ids]},
              {"params": [p for p in params if id(p) in gate_ids], "lr": recipe.gate_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.lr,
                            weight_decay=recipe.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, recipe.rate)


def _draw(rows, recipe: Recipe, order: torch.Generator):
    """Yield each step's row indices, drawn with ``order`` by ``recipe.task_sampling``."""
    if recipe.task_sampling == "uniform":
        return _uniform_draw(rows, recipe.batch_size, order)
    return _epoch_draw(len(rows), recipe.batch_size, order)


def _epoch_draw(n_rows: int, batch_size: int, order: torch.Generator):
    """Yield batches of row indices in epochs: the rows reshuffled whenever fewer than a
    batch are left (tasks mix in proportion to their data)."""
    queue: list[int] = []
    while True:
        if len(queue) < batch_size:  # a new epoch: reshuffle
            queue += torch.randperm(n_rows, generator=order).tolist()
        batch = queue[:batch_size]
        del queue[:batch_size]
        yield batch


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts: Sequence[str], task_ids=None,
                  max_new_tokens: int = 8, batch_size: int = 256) -> list[str]:
    """Greedy answers to ``prompts`` (left-padded batches; routed by ``task_ids`` if given).

    Taught in: notebooks/04_moe_lora.ipynb
    """
    was_training = model.training
    device = model_device(model)
    if was_training:   # eval() walks every module: skip it when already in eval mode (serving)
        model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start: start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left").to(device)
        ids = (None if task_ids is None
               else torch.as_tensor(task_ids[start: start + batch_size], device=device))
        with _routed(model, ids):
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:].cpu(),
                                          skip_special_tokens=True)
    if was_training:
        model.train()
    return answers


def score_items(model, dataset, tokenizer, batch_size: int = 256) -> pd.DataFrame:
    """Every row's greedy answer scored: a DataFrame with one row per item, in the
    dataset's order, columns ``task``, ``task_id``, ``answer`` and ``exact_match`` (1.0 or
    0.0). Comparisons pair methods item by item on it; `evaluate` averages it per task.
    """
    rows = _rows(dataset)
    longest = max(len(r["target"]) for r in rows)
    answers = greedy_decode(model, tokenizer, [r["prompt"] for r in rows],
                            task_ids=[int(r["task_id"]) for r in rows],
                            max_new_tokens=longest + 1, batch_size=batch_size)
    return pd.DataFrame({
        "task": [r.get("task", str(r["task_id"])) for r in rows],
        "task_id": [int(r["task_id"]) for r in rows], "answer": answers,
        "exact_match": [float(a == r["target"]) for a, r in zip(answers, rows)]})


def evaluate(model, dataset, tokenizer, batch_size: int = 256,
             task_names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Exact match of greedy answers, per task, plus an "average" row (mean over tasks).

    Returns a DataFrame indexed by task name with columns ``exact_match`` and ``n``.

    Taught in: notebooks/04_moe_lora.ipynb
    """
    frame = score_items(model, dataset, tokenizer, batch_size)
    table = (frame.groupby(["task_id", "task"], sort=True)["exact_match"]
             .agg(exact_match="mean", n="size").reset_index(level=0, drop=True))
    if task_names is not None:
        table = table.reindex([n for n in task_names if n in table.index])
    table.loc["average"] = [table["exact_match"].mean(), int(table["n"].sum())]
    table["n"] = table["n"].astype(int)
    table.index.name = "task"
    return table
