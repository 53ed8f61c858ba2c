"""Classic multi-task architectures: shared-bottom, MMoE, CGC and PLE.

All four map x (batch, in_features) to a list of per-task outputs, each (batch, out_features),
through per-task towers (Linear -> ReLU -> Linear). Experts are one hidden layer with ReLU, as
in the MMoE paper's synthetic experiment. They differ in what the towers see:

    shared-bottom  h_t = f(x)                                  one bottom for all tasks
    MMoE           h_t = sum_e g_t,e(x) f_e(x),  g_t = softmax(W_t x)          (Ma et al. 2018)
    CGC            h_t = sum over [shared experts, task t's own experts] of g_t(x) * f(x)
                                                                             (Tang et al. 2020)
    PLE            CGC extraction levels stacked; inner levels also keep a shared stream whose
                   gate mixes every expert, and task t's experts read task t's stream.

Gates are input-dependent (a softmax of a linear map of the input) and can be read with
`gate_weights(x)` for plots.

Taught in: notebooks/03_multitask_learning.ipynb
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .utils import training_seed


def _expert(in_features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())


def _towers(n_tasks: int, in_features: int, tower_hidden: int, out_features: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Sequential(nn.Linear(in_features, tower_hidden), nn.ReLU(), nn.Linear(tower_hidden, out_features))
        for _ in range(n_tasks))


def _check_sizes(owner: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name}={value!r} must be a positive integer; pass {name} >= 1.")


def _check_input(owner: str, x: torch.Tensor, in_features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor of shape (batch, {in_features}), got {type(x).__name__}.")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"{owner} expects input of shape (batch, {in_features}), got {tuple(x.shape)}; "
                         f"pass in_features={x.shape[-1]} when building it, or fix the input.")


class SharedBottom(nn.Module):
    """One shared hidden layer for all tasks, then a tower per task: the baseline (Caruana 1997).

    Every task pulls on the same bottom, so unrelated tasks interfere ("seesaw").

    Taught in: notebooks/03_multitask_learning.ipynb
    """

    def __init__(self, in_features: int, n_tasks: int, hidden: int, tower_hidden: int, out_features: int = 1):
        super().__init__()
        _check_sizes("SharedBottom", in_features=in_features, n_tasks=n_tasks, hidden=hidden,
                     tower_hidden=tower_hidden, out_features=out_features)
        self.in_features = in_features
        self.bottom = _expert(in_features, hidden)
        self.towers = _towers(n_tasks, hidden, tower_hidden, out_features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input("SharedBottom", x, self.in_features)
        h = self.bottom(x)
        return [tower(h) for tower in self.towers]


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    Shared experts f_1..f_E; task t has its own input-dependent gate
    g_t(x) = softmax(W_t x) and tower: y_t = tower_t(sum_e g_t,e(x) f_e(x)).
    Tasks share experts but each chooses its own mixture, so weakly related tasks can drift
    apart onto different experts.

    Taught in: notebooks/03_multitask_learning.ipynb
    """

    def __init__(self, in_features: int, n_tasks: int, n_experts: int, expert_hidden: int,
                 tower_hidden: int, out_features: int = 1):
        super().__init__()
        _check_sizes("MMoE", in_features=in_features, n_tasks=n_tasks, n_experts=n_experts,
                     expert_hidden=expert_hidden, tower_hidden=tower_hidden, out_features=out_features)
        self.in_features = in_features
        self.experts = nn.ModuleList(_expert(in_features, expert_hidden) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(in_features, n_experts) for _ in range(n_tasks))
        self.towers = _towers(n_tasks, expert_hidden, tower_hidden, out_features)

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per task, the gate's weights over the experts: a list of (batch, n_experts), rows sum to 1."""
        _check_input("MMoE", x, self.in_features)
        return [gate(x).softmax(dim=-1) for gate in self.gates]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        gates = self.gate_weights(x)
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=1)  # (batch, E, hidden)
        return [tower(torch.einsum("be,beh->bh", g, expert_out)) for g, tower in zip(gates, self.towers)]


class ExtractionLayer(nn.Module):
    """One CGC extraction level (Tang et al., RecSys 2020).

    Takes n_tasks + 1 input streams [task 0, ..., task T-1, shared]. Shared experts read the
    shared stream, task t's specific experts read stream t. Task t's gate, fed stream t, mixes
    [shared experts, task t's experts] (in that order). With `shared_gate=True` (PLE's inner
    levels) a further gate, fed the shared stream, mixes every expert
    [shared, task 0's, task 1's, ...] into the next level's shared stream.
    """

    def __init__(self, in_features: int, n_tasks: int, n_shared: int, n_specific: int,
                 expert_hidden: int, shared_gate: bool = False):
        super().__init__()
        if n_shared < 0 or n_specific < 0 or n_shared + n_specific < 1:
            raise ValueError(f"CGC: n_shared={n_shared}, n_specific={n_specific}: each task needs at least one "
                             f"expert and counts cannot be negative; pass n_shared + n_specific >= 1.")
        self.n_tasks, self.n_shared, self.n_specific = n_tasks, n_shared, n_specific
        self.shared_experts = nn.ModuleList(_expert(in_features, expert_hidden) for _ in range(n_shared))
        self.specific_experts = nn.ModuleList(
            nn.ModuleList(_expert(in_features, expert_hidden) for _ in range(n_specific)) for _ in range(n_tasks))
        self.task_gates = nn.ModuleList(nn.Linear(in_features, n_shared + n_specific) for _ in range(n_tasks))
        self.shared_gate = nn.Linear(in_features, n_shared + n_tasks * n_specific) if shared_gate else None

    def forward(self, streams: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (outputs, gates): the next streams (T, plus shared when `shared_gate`) and the
        gate weights that made them (same order), each (batch, n_gated_experts)."""
        shared_in = streams[-1]
        shared_out = [expert(shared_in) for expert in self.shared_experts]
        specific_out = [[expert(streams[t]) for expert in experts] for t, experts in enumerate(self.specific_experts)]
        mixes = [(gate(streams[t]), shared_out + specific_out[t]) for t, gate in enumerate(self.task_gates)]
        if self.shared_gate is not None:
            mixes.append((self.shared_gate(shared_in), shared_out + [h for hs in specific_out for h in hs]))
        outputs, gates = [], []
        for logits, experts in mixes:
            g = logits.softmax(dim=-1)
            outputs.append(torch.einsum("be,beh->bh", g, torch.stack(experts, dim=1)))
            gates.append(g)
        return outputs, gates

    def gate_labels(self, task: int | None = None) -> list[str]:
        """Names of the experts a gate mixes, in gate order: task t's gate, or the shared gate (None)."""
        shared = [f"shared {i}" for i in range(self.n_shared)]
        tasks = range(self.n_tasks) if task is None else [task]
        return shared + [f"task {t} / {i}" for t in tasks for i in range(self.n_specific)]


class CGC(nn.Module):
    """Customized Gate Control (Tang et al., RecSys 2020): one extraction level plus towers.

    Task t's gate g_t(x) = softmax(W_t x) mixes only the shared experts and task t's own
    specific experts: y_t = tower_t(sum_{e in shared + specific_t} g_t,e(x) f_e(x)).
    With n_specific = 0 it is exactly MMoE; specific experts give each task capacity no other
    task can pull on.

    Taught in: notebooks/03_multitask_learning.ipynb
    """

    def __init__(self, in_features: int, n_tasks: int, n_shared: int, n_specific: int, expert_hidden: int,
                 tower_hidden: int, out_features: int = 1):
        super().__init__()
        _check_sizes("CGC", in_features=in_features, n_tasks=n_tasks, expert_hidden=expert_hidden,
                     tower_hidden=tower_hidden, out_features=out_features)
        self.in_features, self.n_tasks = in_features, n_tasks
        self.extraction = ExtractionLayer(in_features, n_tasks, n_shared, n_specific, expert_hidden)
        self.towers = _towers(n_tasks, expert_hidden, tower_hidden, out_features)

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per task, (batch, n_shared + n_specific) weights over [shared, own] experts (see `gate_labels`)."""
        _check_input("CGC", x, self.in_features)
        return self.extraction([x] * (self.n_tasks + 1))[1]

    def gate_labels(self, task: int) -> list[str]:
        return self.extraction.gate_labels(task)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input("CGC", x, self.in_features)
        hidden, _ = self.extraction([x] * (self.n_tasks + 1))
        return [tower(h) for h, tower in zip(hidden, self.towers)]


class PLE(nn.Module):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): stacked CGC levels.

    Level 1 reads x in every stream. Each inner level outputs T task streams plus a shared
    stream made by the shared module's own gate over all experts; the last level outputs only
    the T task streams, which feed the towers. With n_levels = 1 it is exactly CGC.

    Taught in: notebooks/03_multitask_learning.ipynb
    """

    def __init__(self, in_features: int, n_tasks: int, n_shared: int, n_specific: int, expert_hidden: int,
                 tower_hidden: int, n_levels: int, out_features: int = 1):
        super().__init__()
        _check_sizes("PLE", in_features=in_features, n_tasks=n_tasks, expert_hidden=expert_hidden,
                     tower_hidden=tower_hidden, n_levels=n_levels, out_features=out_features)
        self.in_features, self.n_tasks = in_features, n_tasks
        self.levels = nn.ModuleList(
            ExtractionLayer(in_features if i == 0 else expert_hidden, n_tasks, n_shared, n_specific,
                            expert_hidden, shared_gate=i < n_levels - 1)
            for i in range(n_levels))
        self.towers = _towers(n_tasks, expert_hidden, tower_hidden, out_features)

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        _check_input("PLE", x, self.in_features)
        streams, all_gates = [x] * (self.n_tasks + 1), []
        for level in self.levels:
            streams, gates = level(streams)
            all_gates.append(gates)
        return streams, all_gates

    def gate_weights(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per level, the gates' weights: T task gates, then the shared gate at inner levels."""
        return self._run(x)[1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        streams, _ = self._run(x)
        return [tower(h) for h, tower in zip(streams, self.towers)]


def train_multitask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1000,
                    batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                    weights: Optional[Sequence[float]] = None) -> list[float]:
    """Fit `model` (out_features=1) to y (batch, n_tasks) with Adam on the sum of per-task MSE
    losses, each times its task's weight when ``weights`` (one per task) are given.

    The learning rate follows a cosine decay to zero, so the final weights do not depend on
    the noise of the last few minibatches (comparisons between models stay fair). Minibatches are drawn with their own seeded generator, so a run is reproducible.
    Returns the training loss of every step (for a learning curve).

    Taught in: notebooks/03_multitask_learning.ipynb
    """
    if weights is not None and len(weights) != y.shape[1]:
        raise ValueError(f"train_multitask: {len(weights)} weights for {y.shape[1]} tasks; "
                         "pass one weight per task (a column of y).")
    generator = torch.Generator().manual_seed(training_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        outputs = model(x[idx])
        terms = [nn.functional.mse_loss(out.squeeze(-1), y[idx, t]) for t, out in enumerate(outputs)]
        loss = sum(terms if weights is None else (w * term for w, term in zip(weights, terms)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def task_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean squared error of each task's output against column t of y (batch, n_tasks).

    Taught in: notebooks/03_multitask_learning.ipynb
    """
    model.eval()
    return [nn.functional.mse_loss(out.squeeze(-1), y[:, t]).item() for t, out in enumerate(model(x))]


__all__ = ["SharedBottom", "MMoE", "ExtractionLayer", "CGC", "PLE", "train_multitask", "task_losses"]
