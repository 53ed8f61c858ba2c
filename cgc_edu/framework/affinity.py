"""Task affinity and clustering: which tasks should share an adapter set (step 1 and 2 of 1+N).

Affinity measures (`task_affinity`), each a task x task DataFrame:

* ``"gradient"``: cosine similarity of the per-task gradients of a probe LoRA;
* ``"lookahead"`` (Fifty et al. 2021, "Efficiently Identifying Task Groupings"): entry (i, j)
  = 1 - L_j(after one SGD step on task i) / L_j(before): positive when a step on i helps j;
* ``"update"``: cosine similarity of the per-task adapter updates, each task trained alone
  for a few steps from the same probe (the weight change dW = B A each task asks for);
* ``"transfer"``: the same short single-task training, scored by what it does to the
  others: entry (i, j) = 1 - L_j(after training on i alone) / L_j(before). The lookahead's
  question (does learning i help j?) asked after a few real steps instead of one gradient
  step, so it sees what a task teaches rather than which character its answer starts with.

At the bare central model a task's gradient is mostly about its first answer character, not
about the skill behind it. ``warmup_steps`` first trains the probe LoRA jointly on all tasks
for a few steps (the "short joint warm-up" of Fifty et al.): then the measures see what each
task still needs, which is closer to the skills that the suite's clusters are made of.

Clustering: `task_linkage` / `cluster_tasks` (scipy's hierarchical clustering), the suite's
own labels (`prior_clusters`), and two scores of a clustering against another: the Rand
index (`clustering_agreement`) and the adjusted Rand index (`adjusted_rand_index`, 0 for a
chance grouping, 1 for the same partition).

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import copy
import dataclasses
from math import comb
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from torch import nn

from ..adapters.config import AdapterConfig
from ..adapters.injection import adapter_layers, add_adapters
from ..data.tinytasks import TinyTasksCollator
from ..train.loop import train
from ..utils import training_seed, with_knobs

AFFINITY_METHODS = ("gradient", "lookahead", "update", "transfer")


# ------------------------------------------------------------------ datasets
def task_order(dataset) -> list[str]:
    """Task names of a TinyTasks split, in task-id order."""
    pairs = sorted({(int(i), t) for i, t in zip(dataset["task_id"], dataset["task"])})
    return [t for _, t in pairs]


def prior_clusters(dataset) -> dict[str, list[str]]:
    """Clusters from prior knowledge: the suite's ``cluster`` column, tasks in task-id order.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    if "cluster" not in dataset.column_names:
        raise KeyError(f"prior_clusters: the dataset has no 'cluster' column (columns "
                       f"{dataset.column_names}); pass a TinyTasks split or measure clusters "
                       "with task_affinity + cluster_tasks.")
    label = dict(zip(dataset["task"], dataset["cluster"]))
    clusters: dict[str, list[str]] = {}
    for task in task_order(dataset):
        clusters.setdefault(label[task], []).append(task)
    return clusters


def subset_tasks(dataset, tasks: Sequence[str]):
    """The rows of ``tasks`` only, with ``task_id`` renumbered 0..len(tasks)-1 in that order.

    This is how a cluster's adapter set sees its tasks: local ids, like a suite of its own.
    """
    local = {t: i for i, t in enumerate(tasks)}
    missing = sorted(set(tasks) - set(dataset["task"]))
    if missing:
        raise KeyError(f"subset_tasks: tasks {missing} have no rows in the dataset; its tasks "
                       f"are {task_order(dataset)}.")
    rows = [dict(row, task_id=local[row["task"]]) for row in dataset if row["task"] in local]
    return Dataset.from_list(rows)


def _task_batches(dataset, tokenizer, n_per_task: int, seed: int) -> dict[str, dict]:
    collate = TinyTasksCollator(tokenizer)
    rng = np.random.default_rng(seed)
    rows_by_task: dict[str, list[dict]] = {}
    for row in dataset:
        rows_by_task.setdefault(row["task"], []).append(row)
    batches = {}
    for task in task_order(dataset):
        rows = rows_by_task[task]
        pick = rng.permutation(len(rows))[:n_per_task]
        batch = collate([rows[i] for i in pick])
        batch.pop("task_ids")
        batches[task] = batch
    return batches


# ------------------------------------------------------------------ affinity
@dataclasses.dataclass(frozen=True)
class AffinitySettings:
    """The knobs of an affinity measure, shared by the probe and every measure taken at it.

    ``rank``: the probe's LoRA rank (one LoRA on every linear layer); ``warmup_steps`` /
    ``warmup_lr``: its joint AdamW warm-up on all tasks (0: measure at the bare central
    model); ``n_per_task``: each task's rows (drawn with ``seed``) in its batch for the
    gradient and the losses; ``lookahead_lr``: the SGD step of the lookahead measure;
    ``update_steps`` / ``update_lr``: each task's AdamW training alone for the update and
    transfer measures; ``batch_size``: of the warm-up and of the training alone.
    """

    n_per_task: int = 64
    rank: int = 8
    lookahead_lr: float = 0.1
    seed: int = 0
    warmup_steps: int = 0
    warmup_lr: float = 3e-3
    update_steps: int = 20
    update_lr: float = 3e-3
    batch_size: int = 32

    def check(self, method: str, caller: str = "task_affinity") -> "AffinitySettings":
        """Raise a ValueError naming ``caller`` and the knob when a setting is out of range
        for ``method``; returns the settings."""
        if method not in AFFINITY_METHODS:
            raise ValueError(f"{caller}: method={method!r}; choose one of {list(AFFINITY_METHODS)}.")
        for name in ("n_per_task", "rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{caller}: {name}={value!r}; pass a positive int.")
        for name in ("warmup_steps", "update_steps"):
            value = getattr(self, name)
            trains_alone = name == "update_steps" and method in ("update", "transfer")
            if not isinstance(value, int) or value < 0 or (trains_alone and value == 0):
                raise ValueError(f"{caller}: {name}={value!r}; pass a non-negative int "
                                 "(update_steps >= 1 for method='update' or 'transfer').")
        return self


def affinity_probe(model: nn.Module, dataset, tokenizer,
                   settings: AffinitySettings = AffinitySettings()) -> nn.Module:
    """A copy of ``model`` with one fresh LoRA of rank ``settings.rank`` on every linear
    layer, warmed up jointly for ``settings.warmup_steps`` steps."""

    with torch.random.fork_rng():
        torch.manual_seed(training_seed(settings.seed))
        probe = add_adapters(copy.deepcopy(model),
                             AdapterConfig.lora(rank=settings.rank, alpha=settings.rank))
        if settings.warmup_steps:
            # one LoRA for all tasks: no task ids reach it (it has a single task)
            rows = [dict(r, task_id=0) for r in dataset]
            train(probe, rows, tokenizer, steps=settings.warmup_steps, lr=settings.warmup_lr,
                  batch_size=settings.batch_size, seed=settings.seed, progress=False)
    return probe.eval()  # no dropout: the measure is deterministic


def _flat_grad(loss, params) -> torch.Tensor:
    g = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)])


def _cosine(vectors: Sequence[torch.Tensor]) -> np.ndarray:
    unit = torch.nn.functional.normalize(torch.stack(list(vectors)), dim=1)
    return (unit @ unit.T).numpy()


def _delta_weights(probe: nn.Module) -> torch.Tensor:
    """Every adapted layer's dW = scaling * B A, flattened into one vector."""
    return torch.cat([layer.delta_weight(0).reshape(-1) for layer in adapter_layers(probe).values()])


def task_affinity(model: nn.Module, dataset, tokenizer=None, method: str = "gradient",
                  settings: AffinitySettings | None = None, **knobs) -> pd.DataFrame:
    """Task x task affinity measured at the central model (a DataFrame indexed by task name).

    ``tokenizer`` is the central model's own (required; TinyTasks' is
    ``cgc_edu.data.build_tokenizer()``). The knobs are an `AffinitySettings` (``settings``),
    or its fields as keywords (``n_per_task=64``, ``rank=8``, ``lookahead_lr=0.1``,
    ``seed=0``, ``warmup_steps=0``, ``warmup_lr=3e-3``, ``update_steps=20``,
    ``update_lr=3e-3``, ``batch_size=32``), which override those of ``settings``.

    A probe (a copy of ``model`` with one LoRA of rank ``rank`` on every linear layer) is
    first trained jointly on all tasks for ``warmup_steps`` steps (AdamW, ``warmup_lr``);
    0 measures at the bare central model. Then:

    ``method="gradient"``: cosine similarity of the per-task gradients of the probe's LoRA
    (at a fresh LoRA, B = 0, so this is the weight gradient seen through LoRA's random A).
    ``method="lookahead"`` (Fifty et al. 2021): entry (i, j) = 1 - L_j(after one SGD step of
    size ``lookahead_lr`` on task i) / L_j(before); positive when training on i helps j.
    ``method="update"``: each task alone trains a copy of the probe for ``update_steps`` AdamW
    steps (``update_lr``, its own rows); entry (i, j) is the cosine similarity of the weight
    changes dW = B A of tasks i and j, over all adapted layers.
    ``method="transfer"``: the same single-task copies; entry (i, j) = 1 - L_j(copy trained on
    i) / L_j(probe), the relative drop of task j's loss that training on task i alone brings
    (1 would be a perfect answer; negative when learning i hurts j). Not symmetric;
    `cluster_tasks` symmetrises it.

    ``n_per_task`` examples of each task (drawn with ``seed``) make its batch for the
    gradient and the losses. The model is not changed.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    settings = with_knobs(settings, AffinitySettings(), knobs, "task_affinity").check(method)
    if adapter_layers(model):
        raise ValueError(f"task_affinity: {type(model).__name__} already has adapters; measure "
                         "affinity at the bare central model (before add_adapters).")
    if tokenizer is None:
        raise ValueError("task_affinity: no tokenizer; pass the central model's own, "
                         "task_affinity(model, dataset, tokenizer, ...) (TinyTasks' is "
                         "cgc_edu.data.build_tokenizer()).")
    probe = affinity_probe(model, dataset, tokenizer, settings)
    return measure_affinity(probe, dataset, tokenizer, method, settings)


def measure_affinity(probe, dataset, tokenizer, method,
                     settings: AffinitySettings = AffinitySettings()) -> pd.DataFrame:
    """One affinity measure at a probe (restored afterwards: several measures can share it)."""
    if method == "update":
        return _update_affinity(probe, dataset, tokenizer, settings)
    if method == "transfer":
        return _transfer_affinity(probe, dataset, tokenizer, settings)
    batches = _task_batches(dataset, tokenizer, settings.n_per_task, settings.seed)
    tasks = list(batches)
    params = [p for p in probe.parameters() if p.requires_grad]
    grads = [_flat_grad(probe(**batches[t]).loss, params) for t in tasks]
    if method == "gradient":
        return pd.DataFrame(_cosine(grads), index=tasks, columns=tasks)
    with torch.no_grad():
        before = torch.stack([probe(**batches[t]).loss for t in tasks])
        values = np.zeros((len(tasks), len(tasks)))
        saved = [p.detach().clone() for p in params]
        for i, g in enumerate(grads):
            offset = 0
            for p in params:   # theta - lr * grad_i, one parameter at a time
                p.sub_(settings.lookahead_lr * g[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
            after = torch.stack([probe(**batches[t]).loss for t in tasks])
            values[i] = (1.0 - after / before).numpy()
            for p, s in zip(params, saved):
                p.copy_(s)
    return pd.DataFrame(values, index=tasks, columns=tasks)


def _trained_alone(probe, dataset, tokenizer, settings: AffinitySettings):
    """(task, a copy of the probe trained on that task's rows alone), task by task."""

    for task in task_order(dataset):
        alone = copy.deepcopy(probe)
        rows = [dict(r, task_id=0) for r in dataset if r["task"] == task]
        train(alone, rows, tokenizer, steps=settings.update_steps, lr=settings.update_lr,
              batch_size=settings.batch_size, seed=settings.seed, progress=False)
        yield task, alone


# (not under @torch.no_grad: the copies train as the generator runs; only the reading is)
def _update_affinity(probe, dataset, tokenizer, settings: AffinitySettings) -> pd.DataFrame:
    start = _delta_weights(probe).detach()
    tasks, updates = [], []
    for task, alone in _trained_alone(probe, dataset, tokenizer, settings):
        tasks.append(task)
        with torch.no_grad():
            updates.append(_delta_weights(alone) - start)
    return pd.DataFrame(_cosine(updates), index=tasks, columns=tasks)


def _transfer_affinity(probe, dataset, tokenizer, settings: AffinitySettings) -> pd.DataFrame:
    batches = _task_batches(dataset, tokenizer, settings.n_per_task, settings.seed)
    tasks = list(batches)

    @torch.no_grad()
    def losses(model):
        return torch.stack([model(**batches[t]).loss for t in tasks])

    before = losses(probe)
    # row i: how much training on task i alone lowered every task's loss (relative)
    rows = [(1.0 - losses(alone) / before).numpy()
            for _, alone in _trained_alone(probe, dataset, tokenizer, settings)]
    return pd.DataFrame(np.stack(rows), index=tasks, columns=tasks)


# ---------------------------------------------------------------- clustering
def _check_affinity(affinity) -> pd.DataFrame:
    if not isinstance(affinity, pd.DataFrame):
        raise TypeError(f"cluster_tasks: affinity is a {type(affinity).__name__}; pass the DataFrame "
                        "that task_affinity returns (tasks as index and columns).")
    if affinity.shape[0] != affinity.shape[1] or list(affinity.index) != list(affinity.columns):
        raise ValueError(f"cluster_tasks: affinity has shape {affinity.shape} and index "
                         f"{list(affinity.index)} vs columns {list(affinity.columns)}; pass a square "
                         "matrix with the same tasks as rows and columns.")
    return affinity


def task_linkage(affinity: pd.DataFrame, method: str = "average", on: str = "affinity") -> np.ndarray:
    """scipy's linkage matrix of the tasks (for ``scipy.cluster.hierarchy.dendrogram``).

    ``on="affinity"``: the affinity is symmetrised and turned into a distance, top - affinity
    with top = max(1, the largest affinity between two tasks): 1 - cosine for the gradient
    affinity, so the most alike pair joins above zero, visibly (the tree's shape and its
    clusters depend only on the order of the distances, not on the offset). ``on="profile"``: two tasks are close when they relate alike to every task: the
    distance is 1 - the correlation of their rows of the symmetrised affinity. A task that
    resembles no other (a row of low values) then still joins the tasks it is least unlike,
    instead of splitting off as a cluster of its own.

    The tree chapter 06 draws and cuts (`cgc_edu.course.plots.task_tree`, `ClusterKnobs`).
    """
    if on not in ("affinity", "profile"):
        raise ValueError(f"task_linkage: on={on!r}; choose 'affinity' or 'profile'.")
    a = _check_affinity(affinity).to_numpy(dtype=float)
    sym = (a + a.T) / 2
    if on == "profile":
        return linkage(pdist(sym, "correlation"), method=method)
    off = sym[~np.eye(len(sym), dtype=bool)]
    dist = max(1.0, off.max() if off.size else 0.0) - sym
    np.fill_diagonal(dist, 0.0)
    return linkage(squareform(np.clip(dist, 0.0, None), checks=False), method=method)


def cluster_tasks(affinity: pd.DataFrame, n_clusters: int, method: str = "average",
                  on: str = "affinity") -> dict[str, list[str]]:
    """Group tasks into ``n_clusters`` clusters by hierarchical clustering of their affinity
    (``method``: scipy's linkage method; ``on``: see `task_linkage`).

    Returns ``{"cluster 0": [tasks...], ...}``, clusters numbered by their first task in the
    affinity's order, tasks kept in that order.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    tasks = list(_check_affinity(affinity).index)
    if not isinstance(n_clusters, int) or isinstance(n_clusters, bool) or not 1 <= n_clusters <= len(tasks):
        raise ValueError(f"cluster_tasks: n_clusters={n_clusters!r}; pass an int between 1 and the "
                         f"number of tasks ({len(tasks)}).")
    if n_clusters == len(tasks):
        labels = np.arange(len(tasks))
    elif n_clusters == 1:
        labels = np.zeros(len(tasks), dtype=int)
    else:
        labels = fcluster(task_linkage(affinity, method, on), n_clusters, criterion="maxclust")
    clusters: dict[int, list[str]] = {}
    for task, label in zip(tasks, labels):
        clusters.setdefault(int(label), []).append(task)
    return {f"cluster {k}": members for k, members in enumerate(clusters.values())}


def clustering_agreement(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]]) -> float:
    """Rand index of two clusterings of the same tasks: the share of task pairs they treat alike
    (both together or both apart). 1.0 means the same partition, whatever the cluster names.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    label_a, label_b = _labels(a, b, "clustering_agreement")
    tasks = sorted(label_a)
    pairs = [(s, t) for i, s in enumerate(tasks) for t in tasks[i + 1:]]
    if not pairs:
        return 1.0
    alike = sum((label_a[s] == label_a[t]) == (label_b[s] == label_b[t]) for s, t in pairs)
    return alike / len(pairs)


def _labels(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]], who: str):
    label_a = {t: k for k, ts in a.items() for t in ts}
    label_b = {t: k for k, ts in b.items() for t in ts}
    if set(label_a) != set(label_b):
        raise ValueError(f"{who}: the clusterings cover different tasks "
                         f"({sorted(set(label_a) ^ set(label_b))}); compare clusterings of one suite.")
    return label_a, label_b


def adjusted_rand_index(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]]) -> float:
    """Adjusted Rand index (Hubert and Arabie 1985) of two clusterings of the same tasks.

    The Rand index corrected for chance: 1.0 for the same partition (whatever the names), about
    0 for a grouping no better than a random one with the same cluster sizes, negative below.
    Computed exactly from the contingency table n_ij (tasks in cluster i of ``a`` and j of ``b``):
    ARI = (sum C(n_ij,2) - E) / (max - E), with E = sum C(a_i,2) sum C(b_j,2) / C(n,2) and
    max = (sum C(a_i,2) + sum C(b_j,2)) / 2.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    label_a, label_b = _labels(a, b, "adjusted_rand_index")
    table = pd.crosstab(pd.Series(label_a), pd.Series(label_b).reindex(list(label_a)))
    pairs = sum(comb(int(v), 2) for v in table.to_numpy().ravel())
    rows = sum(comb(int(v), 2) for v in table.sum(axis=1))
    cols = sum(comb(int(v), 2) for v in table.sum(axis=0))
    total = comb(len(label_a), 2)
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2
    if top == expected:  # both trivial (all apart or all together): same partition or not
        return 1.0 if pairs == expected else 0.0
    return float((pairs - expected) / (top - expected))


def measured_clusters(model: nn.Module, dataset, n_clusters: int, tokenizer=None,
                      method: str = "transfer", linkage_method: str = "complete", on: str = "profile",
                      **affinity_kwargs) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Clusters found from the data: `task_affinity` then `cluster_tasks`.

    The defaults are the combination that recovers TinyTasks' designed clusters with
    instruction-bearing prompts (results/results.md: every study seed, and ten held-out
    seeds): the transfer affinity at the central model (``warmup_steps=0``: each task trains
    a fresh LoRA alone for 20 steps), clustered by the profiles of its rows with complete
    linkage. With anonymous prompts its entries are almost all positive too (training one
    task lowers the others' losses; chapter 06 measures it). Returns ``(clusters, affinity)``; ``affinity_kwargs`` go to
    `task_affinity` (``warmup_steps``, ``seed``, ...).

    Taught in: notebooks/06_one_plus_n.ipynb, notebooks/12_appendix_controls.ipynb.
    """
    affinity = task_affinity(model, dataset, tokenizer, method=method, **affinity_kwargs)
    return cluster_tasks(affinity, n_clusters, linkage_method, on), affinity
