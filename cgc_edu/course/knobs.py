"""Knobs: small widgets where turning a control beats reading a paragraph (ipywidgets).

Each widget computes something real and small (a few training steps on a tiny fixed problem,
or a closed-form count) when a control moves, redraws one matplotlib figure and shows it as
PNG bytes (so the static book keeps the last picture). Code and tests drive a widget by
setting its controls' ``.value`` and read what it shows from ``.state`` (a dict).

    LoRAKnobs          01  rank, alpha, rsLoRA -> size of the update and loss after a few steps
    RouterKnobs        02  temperature, top-k, aux-loss coefficient -> tokens per expert
    SeesawKnobs        03  loss weight between two tasks -> both losses on the Pareto front
    CGCConfigBuilder   05  common / specific counts, rank, budget -> mask, ranks, parameters
    ClusterKnobs       06  number of clusters, linkage -> the tree's cut and 1+N's sets
    CounterfactualGate 08  override one task's gate at inference -> answers and exact match

`override_gate` (the context manager behind the last one) lives in `cgc_edu.course.counterfactual`.

Taught in: notebooks/01_lora_from_scratch.ipynb.
"""
from __future__ import annotations

import contextlib
import copy
import html
import io
import math
from typing import Optional, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .. import mtl
from ..adapters.config import AdapterConfig, adapter_parameter_count
from ..adapters.injection import adapter_layers
from ..adapters.layer import CGCLoRALinear
from ..data.synthetic import make_correlated_tasks
from ..framework.affinity import cluster_tasks, clustering_agreement
from ..moe import MoELayer, load_balancing_loss, router_stats
from ..train.loop import greedy_decode
from ..utils import training_seed
from . import plots
from .counterfactual import override_choices, override_gate
from .diagrams import cgc_lora_diagram


@contextlib.contextmanager
def one_thread():
    """Run tiny tensor work on one thread: on a busy laptop, threads only wait for each other.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render_png(fig: Figure, image: widgets.Image, dpi: int) -> bytes:
    """Draw ``fig`` into ``image`` as PNG at its own pixel width (shrunk only to fit).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    png = buffer.getvalue()
    image.width = str(int.from_bytes(png[16:20], "big"))
    image.value = png
    return png


class _Knobs(widgets.VBox):
    """Controls over one figure: subclasses give `_compute() -> state` and `_draw(fig, state)`."""

    dpi = 90

    def _build(self, rows: Sequence[Sequence[widgets.Widget]], figsize) -> None:
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.message = widgets.HTML()
        self._state: dict = {}
        self._holding = False
        for row in rows:
            for control in row:
                control.observe(lambda _change: self._redraw(), names="value")
        super().__init__([widgets.HBox(list(row)) for row in rows] + [self.message, self.image])
        self._redraw()

    @property
    def state(self) -> dict:
        """What the widget shows now (a copy: edit it freely)."""
        return copy.deepcopy(self._state)

    def _redraw(self) -> None:
        if self._holding:
            return
        with one_thread():
            self._state = self._compute()
        self.figure.clear()
        self._draw(self.figure, self._state)
        render_png(self.figure, self.image, self.dpi)
        self.message.value = html.escape(self._state.get("summary", ""))

    def _compute(self) -> dict:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _draw(self, fig: Figure, state: dict) -> None:  # pragma: no cover
        raise NotImplementedError


# ------------------------------------------------------------------ 01: LoRA
def lora_scaling(rank: int, alpha: float, rslora: bool = False) -> float:
    """LoRA's alpha / r, or rsLoRA's alpha / sqrt(r) (Kalajdzievski 2023, "A Rank
    Stabilization Scaling Factor for Fine-Tuning with LoRA").

    `AdapterConfig.scaling`'s two rules (``use_rslora``), for a rank and alpha alone.

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """
    return AdapterConfig(rank=rank, alpha=alpha, use_rslora=bool(rslora)).scaling


def lora_regression(d_in: int = 32, d_out: int = 24, n: int = 256, true_rank: int = 4,
                    seed: int = 0) -> dict:
    """A fixed regression task for one frozen layer: Y = X (W0 + Δ)^T + noise, Δ of rank
    ``true_rank``. Returns a dict with X, Y, W0 and the true Δ.
    """
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    delta = torch.randn(d_out, true_rank, generator=g) @ torch.randn(true_rank, d_in, generator=g)
    delta = delta / d_in ** 0.5
    X = torch.randn(n, d_in, generator=g)
    Y = X @ (W0 + delta).T + 0.05 * torch.randn(n, d_out, generator=g)
    return {"X": X, "Y": Y, "W0": W0, "delta": delta}


def train_lora_layer(problem: dict, rank: int, alpha: float, rslora: bool = False,
                     steps: int = 40, lr: float = 1e-2, seed: int = 0):
    """Train a library LoRA layer (`AdapterConfig.lora`) on `lora_regression`'s task with Adam.

    Returns ``(layer, losses)``; ``losses[0]`` is the loss before the first step.
    """
    torch.manual_seed(training_seed(seed))
    W0 = problem["W0"]
    config = AdapterConfig.lora(rank, alpha, use_rslora=bool(rslora))
    layer = CGCLoRALinear(nn.Linear(W0.shape[1], W0.shape[0]), config)
    with torch.no_grad():
        layer.base_layer.weight.copy_(W0)
        layer.base_layer.bias.zero_()
    layer.base_layer.requires_grad_(False)
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    losses = []
    with one_thread():
        for _ in range(steps):
            loss = ((layer(problem["X"]) - problem["Y"]) ** 2).mean()
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        losses.append(((layer(problem["X"]) - problem["Y"]) ** 2).mean().item())
    return layer, losses


class LoRAKnobs(_Knobs):
    """Rank, alpha and the rsLoRA scaling against the size of the update and the loss.

    Every setting trains a fresh LoRA layer (the library's, `AdapterConfig.lora`) for
    ``steps`` Adam steps on one fixed regression task whose true change has rank 4, then
    shows the loss curve and the size of the learned update ||ΔW||_F = ||s·BA||_F across the
    ranks, for s = alpha/r and s = alpha/sqrt(r). Results are cached per setting.

    Controls: ``rank`` (Dropdown), ``alpha`` (Dropdown), ``rslora`` (Checkbox).
    ``state``: rank, alpha, rslora, scaling, update_norm, loss_before, loss_after, losses,
    target_norm (||Δ|| of the true change), norms_by_rank and losses_by_rank ({"alpha/r": [...], "alpha/sqrt(r)":
    [...]} over ``ranks``).

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """

    def __init__(self, ranks: Sequence[int] = (1, 2, 4, 8, 16),
                 alphas: Sequence[float] = (1, 2, 4, 8, 16, 32, 64), rank: int = 4,
                 alpha: float = 8, steps: int = 40, lr: float = 1e-2):
        self.ranks, self.steps, self.lr = list(ranks), steps, lr
        self.problem = lora_regression()
        self._cache: dict = {}
        self.rank = widgets.Dropdown(options=self.ranks, value=rank, description="rank r",
                                     layout=widgets.Layout(width="160px"))
        self.alpha = widgets.Dropdown(options=list(alphas), value=alpha, description="alpha",
                                      layout=widgets.Layout(width="160px"))
        self.rslora = widgets.Checkbox(value=False, description="rsLoRA: alpha/sqrt(r)")
        self._build([[self.rank, self.alpha, self.rslora]], (7.4, 2.6))

    def _run(self, rank, alpha, rslora):
        key = (rank, float(alpha), bool(rslora))
        if key not in self._cache:
            layer, losses = train_lora_layer(self.problem, rank, alpha, rslora, self.steps,
                                             self.lr)
            with torch.no_grad():
                norm = float(torch.linalg.matrix_norm(layer.delta_weight(0)))
            self._cache[key] = (norm, losses)
        return self._cache[key]

    def _by_rank(self, alpha, index):
        return {rule: [self._run(r, alpha, flag)[index] if index == 0 else
                       self._run(r, alpha, flag)[1][-1] for r in self.ranks]
                for rule, flag in (("alpha/r", False), ("alpha/sqrt(r)", True))}

    def _compute(self) -> dict:
        rank, alpha, rs = self.rank.value, self.alpha.value, self.rslora.value
        norm, losses = self._run(rank, alpha, rs)
        rule = "alpha/sqrt(r)" if rs else "alpha/r"
        scaling = lora_scaling(rank, alpha, rs)
        return dict(rank=rank, alpha=alpha, rslora=rs, scaling=scaling, update_norm=norm,
                    loss_before=losses[0], loss_after=losses[-1], losses=list(losses),
                    target_norm=float(torch.linalg.matrix_norm(self.problem["delta"])),
                    norms_by_rank=self._by_rank(alpha, 0), losses_by_rank=self._by_rank(alpha, 1),
                    ranks=list(self.ranks),
                    summary=f"rank {rank}, alpha {alpha:g}, scaling {rule} = {scaling:.3g}: after "
                            f"{self.steps} steps ||ΔW|| = {norm:.2f} (the true change: "
                            f"{float(torch.linalg.matrix_norm(self.problem['delta'])):.2f}), "
                            f"loss {losses[0]:.3f} -> {losses[-1]:.4f}.")

    def _draw(self, fig: Figure, s: dict) -> None:
        ax1, ax2, ax3 = fig.subplots(1, 3)
        colour = plots.METHOD_COLORS["integrated"]
        ax1.semilogy(s["losses"], color=colour)
        ax1.axhline(0.05 ** 2, color="0.5", ls=":", lw=1, label="noise floor")
        ax1.set(xlabel="Adam step", ylabel="mean squared error",
                title=f"r={s['rank']}, α={s['alpha']:g}{', rsLoRA' if s['rslora'] else ''}")
        ax1.legend(fontsize=7, frameon=False)
        for ax, key, mine, label in ((ax2, "losses_by_rank", s["loss_after"], "loss after training"),
                                     (ax3, "norms_by_rank", s["update_norm"], "||ΔW||_F after training")):
            for rule, style in (("alpha/r", "-"), ("alpha/sqrt(r)", "--")):
                ax.plot(s["ranks"], s[key][rule], ls=style, marker="o", ms=3, color=colour,
                        label=rule.replace("alpha", "α").replace("sqrt(r)", "√r"))
            ax.plot([s["rank"]], [mine], marker="o", ms=9, mfc="none", mec="black", ls="none",
                    label="your setting")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="rank r", ylabel=label, title=f"{label.split(' after')[0]}, α={s['alpha']:g}")
        ax2.set_yscale("log")
        ax3.axhline(s["target_norm"], color="0.5", ls=":", lw=1, label="true change")
        ax3.legend(fontsize=6, frameon=False)
        for ax in (ax1, ax2, ax3):
            ax.title.set_fontsize(9)
            ax.xaxis.label.set_fontsize(8)
            ax.yaxis.label.set_fontsize(8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)


# ------------------------------------------------------------------ 02: router
def clustered_tokens(n_tokens: int = 512, d: int = 8, n_clusters: int = 4, seed: int = 0):
    """Tokens from ``n_clusters`` clusters, each with its own linear target map (chapter 02's
    problem, smaller). Returns (X, Y, cluster).
    """
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_clusters, d, generator=g)
    maps = torch.randn(n_clusters, d, d, generator=g) / math.sqrt(d)
    cluster = torch.randint(n_clusters, (n_tokens,), generator=g)
    X = centres[cluster] + torch.randn(n_tokens, d, generator=g)
    Y = torch.einsum("nij,nj->ni", maps[cluster], X)
    return X, Y, cluster


def train_router(X, Y, temperature: float = 1.0, k: int = 1, aux_coef: float = 0.0,
                 n_experts: int = 4, steps: int = 100, lr: float = 1e-2, seed: int = 0):
    """Train a `cgc_edu.moe.MoELayer` whose router starts with a bias towards expert 0.

    The router's logits are divided by ``temperature`` (a forward hook on its projection);
    top-1 keeps the raw probability (Switch), top-k > 1 renormalises. The loss is the MSE
    plus ``aux_coef`` times the Switch load-balancing loss. Returns ``(layer, before)``:
    the trained layer and `router_stats` of the untrained one on X.
    """
    if temperature <= 0:
        raise ValueError(f"train_router: temperature={temperature}; pass a number > 0.")
    torch.manual_seed(training_seed(seed))
    layer = MoELayer(X.shape[1], n_experts, d_hidden=8, k=k, renormalize=k > 1)
    with torch.no_grad():                       # a router that prefers expert 0 for every token
        layer.router.proj.weight.mul_(0.1)
        layer.router.proj.weight[0] += 0.3
    layer.router.proj.register_forward_hook(lambda _m, _i, out: out / temperature)
    with torch.no_grad():
        layer(X)
    before = router_stats(layer.last_routing)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    with one_thread():
        for _ in range(steps):
            loss = nn.functional.mse_loss(layer(X), Y) + aux_coef * layer.aux_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return layer, before


class RouterKnobs(_Knobs):
    """Router temperature, top-k and the auxiliary-loss coefficient against expert load.

    Each setting trains a small top-k `MoELayer` (4 experts) for ``steps`` Adam steps on a
    fixed batch of tokens from 4 clusters, its router starting biased to expert 0, with the
    Switch load-balancing loss weighted by the coefficient; then counts the tokens each
    expert gets. Cached per setting.

    Controls: ``temperature``, ``top_k``, ``aux_coef`` (SelectionSliders / Dropdown).
    ``state``: temperature, top_k, aux_coef, tokens_per_expert (after), tokens_before,
    mean_probs, aux_loss (Switch loss after training, 1 = balanced), load_entropy, mse.

    Taught in: notebooks/02_mixture_of_experts.ipynb.
    """

    def __init__(self, temperatures: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
                 coefs: Sequence[float] = (0.0, 0.01, 0.1, 0.3, 1.0), n_experts: int = 4,
                 steps: int = 100):
        self.n_experts, self.steps = n_experts, steps
        self.X, self.Y, self.cluster = clustered_tokens()
        self._cache: dict = {}
        self.temperature = widgets.SelectionSlider(options=list(temperatures), value=1.0,
                                                   description="temperature",
                                                   continuous_update=False)
        self.top_k = widgets.Dropdown(options=list(range(1, n_experts + 1)), value=1,
                                      description="top-k", layout=widgets.Layout(width="140px"))
        self.aux_coef = widgets.SelectionSlider(options=list(coefs), value=coefs[0],
                                                description="aux coef", continuous_update=False)
        self._build([[self.temperature, self.top_k], [self.aux_coef]], (7.0, 2.8))

    def _compute(self) -> dict:
        key = (self.temperature.value, self.top_k.value, self.aux_coef.value)
        if key not in self._cache:
            layer, before = train_router(self.X, self.Y, *key, n_experts=self.n_experts,
                                         steps=self.steps)
            with torch.no_grad():
                mse = nn.functional.mse_loss(layer(self.X), self.Y).item()
            routing = layer.last_routing
            after = router_stats(routing)
            self._cache[key] = dict(
                tokens_per_expert=after["tokens_per_expert"].tolist(),
                tokens_before=before["tokens_per_expert"].tolist(),
                mean_probs=after["mean_probs"].tolist(), load_entropy=after["load_entropy"],
                aux_loss=float(load_balancing_loss(routing.probs, routing.indices)), mse=mse)
        s = dict(self._cache[key], temperature=key[0], top_k=key[1], aux_coef=key[2])
        s["summary"] = (f"T={key[0]:g}, top-{key[1]}, aux coef {key[2]:g}: tokens per expert "
                        f"{s['tokens_before']} -> {s['tokens_per_expert']} after {self.steps} "
                        f"steps; Switch loss {s['aux_loss']:.2f} (1 = balanced, "
                        f"{self.n_experts} = collapsed), MSE {s['mse']:.3f}.")
        return s

    def _draw(self, fig: Figure, s: dict) -> None:
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        x = np.arange(self.n_experts)
        ax1.bar(x - 0.2, s["tokens_before"], 0.4, color="0.75", label="at the start")
        ax1.bar(x + 0.2, s["tokens_per_expert"], 0.4, color=plots.METHOD_COLORS["moe_lora"],
                label=f"after {self.steps} steps")
        ax1.axhline(len(self.X) * s["top_k"] / self.n_experts, color="0.4", ls=":", lw=1,
                    label="balanced")
        ax1.set(xticks=x, xlabel="expert", ylabel="token assignments",
                title=f"load: T={s['temperature']:g}, top-{s['top_k']}, "
                      f"aux coef {s['aux_coef']:g}")
        ax1.set_ylim(0, 1.4 * max(max(s["tokens_before"]), max(s["tokens_per_expert"])))
        ax1.legend(fontsize=7, frameon=False, ncols=2, loc="upper right")
        ax2.bar(x, s["mean_probs"], color=plots.METHOD_COLORS["moe_lora"], alpha=0.6)
        ax2.axhline(1 / self.n_experts, color="0.4", ls=":", lw=1)
        ax2.set(xticks=x, xlabel="expert", ylabel="mean router probability", ylim=(0, 1),
                title=f"Switch loss {s['aux_loss']:.2f}, MSE {s['mse']:.2f}")
        for ax in (ax1, ax2):
            ax.title.set_fontsize(9)


# ------------------------------------------------------------------ 03: seesaw
def seesaw_front(weights: Sequence[float] = tuple(np.round(np.linspace(0.1, 0.9, 9), 2)),
                 correlation: float = 0.0, hidden: int = 8, steps: int = 300,
                 seed: int = 0) -> dict:
    """Train one `mtl.SharedBottom` per loss weight w (loss = w L1 + (1 - w) L2) on two
    synthetic tasks of the given correlation, plus a single-task model per task.

    Returns a dict: weights, losses (len(weights), 2) test loss as 1 - R^2 per task, and
    alone (2,) each task's loss when its model trains on it alone (w = 1 or 0).

    Taught in: notebooks/03_multitask_learning.ipynb.
    """
    x, y = make_correlated_tasks(3000, correlation, in_features=20, seed=seed, shape_seed=2)
    x_train, y_train, x_test, y_test = x[:2500], y[:2500], x[2500:], y[2500:]
    variance = y_test.var(0).numpy()

    def fit(w: float) -> np.ndarray:
        torch.manual_seed(training_seed(seed))
        model = mtl.SharedBottom(20, 2, hidden=hidden, tower_hidden=8)
        g = torch.Generator().manual_seed(training_seed(seed))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            idx = torch.randint(len(x_train), (128,), generator=g)
            out = model(x_train[idx])
            loss = (w * nn.functional.mse_loss(out[0].squeeze(-1), y_train[idx, 0])
                    + (1 - w) * nn.functional.mse_loss(out[1].squeeze(-1), y_train[idx, 1]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        return np.array(mtl.task_losses(model, x_test, y_test)) / variance

    with one_thread():
        losses = np.stack([fit(float(w)) for w in weights])
        alone = np.array([fit(1.0)[0], fit(0.0)[1]])
    return {"weights": [float(w) for w in weights], "losses": losses, "alone": alone,
            "correlation": correlation}


class SeesawKnobs(_Knobs):
    """The loss weight w between two tasks against both tasks' losses: the seesaw as a front.

    The front (one shared-bottom model per w on a grid, see `seesaw_front`) is trained once,
    when the widget is built (a few seconds), or passed in as ``front``; the slider moves
    the chosen point along it. Dotted lines mark each task trained alone: a front that never
    reaches them shows the cost of sharing (negative transfer).

    Controls: ``weight`` (SelectionSlider over the grid). ``state``: weight, losses (the
    chosen point's two losses), front (all points), alone.

    Taught in: notebooks/03_multitask_learning.ipynb.
    """

    def __init__(self, front: Optional[dict] = None, **front_kwargs):
        self.front = front if front is not None else seesaw_front(**front_kwargs)
        grid = self.front["weights"]
        self.weight = widgets.SelectionSlider(options=grid, value=grid[len(grid) // 2],
                                              description="w (task 1)", continuous_update=True)
        self._build([[self.weight]], (4.6, 3.6))

    def _compute(self) -> dict:
        i = self.front["weights"].index(self.weight.value)
        l1, l2 = self.front["losses"][i]
        return dict(weight=self.weight.value, losses=[float(l1), float(l2)],
                    front=self.front["losses"].tolist(), alone=self.front["alone"].tolist(),
                    summary=f"w = {self.weight.value:.2f}: loss = {self.weight.value:.2f}·L1 + "
                            f"{1 - self.weight.value:.2f}·L2 gives task 1 {l1:.3f}, task 2 "
                            f"{l2:.3f} (alone: {self.front['alone'][0]:.3f}, "
                            f"{self.front['alone'][1]:.3f}; 1 - R², lower is better).")

    def _draw(self, fig: Figure, s: dict) -> None:
        ax = fig.subplots()
        front = np.array(s["front"])
        colour = plots.METHOD_COLORS["shared_bottom"]
        ax.plot(front[:, 0], front[:, 1], marker="o", ms=4, color=colour, alpha=0.6,
                label="shared-bottom, w on a grid")
        for w, (a, b) in zip(self.front["weights"][::2], front[::2]):
            ax.annotate(f"{w:g}", (a, b), xytext=(3, 3), textcoords="offset points", fontsize=6,
                        color="0.4")
        ax.plot(*s["losses"], marker="o", ms=10, color=colour, mec="black", ls="none",
                label=f"w = {s['weight']:g}")
        ax.axvline(s["alone"][0], color="0.5", ls=":", lw=1)
        ax.axhline(s["alone"][1], color="0.5", ls=":", lw=1, label="each task trained alone")
        ax.set(xlabel="task 1 loss (1 - R²)", ylabel="task 2 loss (1 - R²)")
        ax.set_title("the seesaw: moving w trades one task for the other", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)


# ------------------------------------------------------------------ 05: config builder
class CGCConfigBuilder(_Knobs):
    """Build an `AdapterConfig` with knobs and see what it means.

    Shows the mask (task x expert: the allowed set S_t of every task), each task's rank
    |S_t| r_e, the expert rank, and the trainable parameter count of one adapted d_out x d_in
    layer; the "layer" view draws `cgc_edu.course.diagrams.cgc_lora_diagram` for task 0. A rank that
    does not divide is shown as the config's own error message, not raised.

    Controls: ``n_common``, ``n_specific``, ``n_tasks``, ``rank`` (IntTexts), ``budget``,
    ``gate`` (Dropdowns), ``d_in``, ``d_out`` (IntTexts), ``view``. ``state``: the inputs,
    error (None or the message), mask (list of rows of bools), task_rank, expert_rank,
    n_experts, parameters (see `adapter_parameter_count`), lora_parameters (one plain LoRA of
    rank r on the same layer).

    Taught in: notebooks/05_cgc_lora.ipynb.
    """

    def __init__(self, n_common: int = 2, n_specific: int = 1, n_tasks: int = 3, rank: int = 6,
                 budget: str = "per_task", d_in: int = 128, d_out: int = 128):
        def box(value, description, lo=0, hi=64):
            return widgets.BoundedIntText(value=value, min=lo, max=hi, description=description,
                                          layout=widgets.Layout(width="150px"),
                                          style={"description_width": "70px"})
        self.n_common = box(n_common, "n_common")
        self.n_specific = box(n_specific, "n_specific")
        self.n_tasks = box(n_tasks, "n_tasks", 1, 16)
        self.rank = box(rank, "rank r", 1, 256)
        self.budget = widgets.Dropdown(options=["per_task", "total"], value=budget,
                                       description="budget", layout=widgets.Layout(width="190px"))
        self.gate = widgets.Dropdown(options=["task", "uniform"], value="task",
                                     description="gate", layout=widgets.Layout(width="190px"))
        self.d_in = box(d_in, "d_in", 1, 16384)
        self.d_out = box(d_out, "d_out", 1, 16384)
        self.view = widgets.ToggleButtons(options=["mask", "layer"], value="mask")
        self._build([[self.n_common, self.n_specific, self.n_tasks, self.rank],
                     [self.budget, self.gate, self.d_in, self.d_out], [self.view]], (6.0, 3.0))

    def _compute(self) -> dict:
        inputs = dict(n_common=self.n_common.value, n_specific=self.n_specific.value,
                      n_tasks=self.n_tasks.value, rank=self.rank.value, budget=self.budget.value,
                      gate=self.gate.value)
        state = dict(inputs, d_in=self.d_in.value, d_out=self.d_out.value, view=self.view.value,
                     error=None, mask=None, task_rank=None, expert_rank=None, n_experts=None,
                     parameters=None, lora_parameters=self.rank.value * (self.d_in.value +
                                                                         self.d_out.value))
        try:
            config = AdapterConfig(alpha=2.0 * inputs["rank"], **inputs)
        except ValueError as err:
            state["error"] = str(err)
            state["summary"] = f"Not a valid config: {err}"
            return state
        self.config = config
        mask = [[e in config.allowed_experts(t) for e in range(config.n_experts)]
                for t in range(config.n_tasks)]
        params = adapter_parameter_count(config, self.d_in.value, self.d_out.value)
        state.update(mask=mask, task_rank=config.experts_per_task * config.expert_rank,
                     expert_rank=config.expert_rank, n_experts=config.n_experts,
                     parameters=params)
        state["summary"] = (
            f"E = {config.n_experts} experts of rank r_e = {config.expert_rank}; each task uses "
            f"|S_t| = {config.experts_per_task} of them: rank {state['task_rank']}. Trainable on "
            f"one {self.d_out.value} x {self.d_in.value} layer: {params['total']:,} "
            f"({params['experts']:,} experts + {params['gate']:,} gate); one LoRA of rank "
            f"{config.rank}: {state['lora_parameters']:,}.")
        return state

    def _draw(self, fig: Figure, s: dict) -> None:
        if s["error"]:
            fig.set_size_inches(6.0, 1.2)
            fig.text(0.02, 0.5, "\n".join(_wrap(s["error"], 95)), fontsize=8, va="center",
                     color="#b00020")
            return
        if s["view"] == "layer":

            fig.set_size_inches(7.5, 4.1)
            cgc_lora_diagram(self.config, task=0, ax=fig.add_subplot())
            return
        mask = np.array(s["mask"], dtype=float)
        n_tasks, n_experts = mask.shape
        fig.set_size_inches(min(7.5, 2.6 + 0.45 * n_experts), 1.5 + 0.35 * n_tasks)
        ax = fig.add_subplot()
        colours = np.zeros((n_tasks, n_experts, 3))
        common = np.array(_rgb(plots.PART_COLORS["common"]))
        specific = np.array(_rgb(plots.PART_COLORS["specific"]))
        masked = np.array(_rgb(plots.PART_COLORS["masked"]))
        for (t, e), allowed in np.ndenumerate(mask):
            colours[t, e] = (common if e < s["n_common"] else specific) if allowed else masked
        ax.imshow(colours, aspect="auto", interpolation="nearest")
        for t in range(1, n_tasks):
            ax.axhline(t - 0.5, color="white", lw=1)
        for e in range(1, n_experts):
            ax.axvline(e - 0.5, color="white", lw=1)
        ax.set_xticks(range(n_experts), [f"c{e}" if e < s["n_common"] else
                                         f"s{(e - s['n_common']) // max(s['n_specific'], 1)}"
                                         for e in range(n_experts)], fontsize=7)
        ax.set_yticks(range(n_tasks), [f"task {t}" for t in range(n_tasks)], fontsize=7)
        ax.set_xlabel("expert (c = common, sT = specific to task T)")
        for t in range(n_tasks):
            ax.annotate(f"rank {s['task_rank']}", xy=(1.0, t), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_title(f"mask S_t: {s['n_experts']} experts of rank {s['expert_rank']}; "
                     f"{s['parameters']['total']:,} trainable", fontsize=9)


def _rgb(colour: str):
    from matplotlib.colors import to_rgb
    return to_rgb(colour)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width)


# ------------------------------------------------------------------ 06: clusters
class ClusterKnobs(_Knobs):
    """Cut the tasks' affinity tree into N clusters and see which tasks 1+N would group.

    The tree is `cgc_edu.course.plots.task_tree` over a measured affinity (``task_affinity``
    or a stored one); nothing is trained when a control moves. With ``designed`` (a clustering
    of the same tasks, e.g. the suite's), the widget also shows how far the cut agrees with it
    (`clustering_agreement`, the Rand index).

    Controls: ``n_clusters`` (IntSlider), ``method`` (scipy's linkage: average, complete,
    single, weighted), ``on`` ("affinity" or "profile", see `task_linkage`). ``state``:
    n_clusters, method, on, clusters (name -> tasks, as `cluster_tasks` gives them), rand
    (None without ``designed``).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """

    dpi = 80

    def __init__(self, affinity, designed: Optional[dict] = None, n_clusters: int = 2):
        tasks = list(affinity.index)
        if not 1 <= n_clusters <= len(tasks):
            raise ValueError(f"ClusterKnobs: n_clusters={n_clusters!r}; choose 1 to {len(tasks)} "
                             f"(the number of tasks).")
        if designed is not None and sorted(t for ts in designed.values() for t in ts) != sorted(tasks):
            raise ValueError("ClusterKnobs: designed must group exactly the affinity's tasks "
                             f"{tasks}; got {designed}.")
        self.affinity, self.designed = affinity, designed
        self.n_clusters = widgets.IntSlider(value=n_clusters, min=1, max=len(tasks),
                                            description="N clusters")
        self.method = widgets.Dropdown(options=["average", "complete", "single", "weighted"],
                                       value="average", description="linkage")
        self.on = widgets.ToggleButtons(options=["affinity", "profile"], value="affinity",
                                        description="distance")
        self._build([[self.n_clusters, self.method], [self.on]], (6.0, 3.2))

    def _compute(self) -> dict:
        clusters = cluster_tasks(self.affinity, self.n_clusters.value, self.method.value,
                                 self.on.value)
        rand = (clustering_agreement(clusters, self.designed)
                if self.designed is not None else None)
        groups = " | ".join(", ".join(ts) for ts in clusters.values())
        agree = f"; Rand index with the designed clusters {rand:.2f}" if rand is not None else ""
        return dict(n_clusters=self.n_clusters.value, method=self.method.value,
                    on=self.on.value, clusters=clusters, rand=rand,
                    summary=f"{len(clusters)} adapter sets: {groups}{agree}.")

    def _draw(self, fig: Figure, s: dict) -> None:
        plots.task_tree(self.affinity, s["n_clusters"], s["method"], s["on"], ax=fig.subplots())


# ------------------------------------------------------------------ 08: counterfactual gate
class CounterfactualGate(_Knobs):
    """Override one task's gate at inference and see its answers and exact match change.

    Pick a task and an override (the learned gate, uniform over S_t, one expert zeroed and
    the rest renormalised, or another task's mixture on this task's experts; see
    `cgc_edu.course.counterfactual.override_gate`); the widget decodes the task's examples greedily
    with and without the override and shows both answers and exact matches. The model is
    restored exactly after each decode.

    Args:
        model: a model with adapters (gates). dataset: rows with prompt, target, task_id
            (e.g. a TinyTasks test split). tokenizer: its tokenizer. task_names: one per task
            id. n_examples: examples per task to decode. module: the adapted module whose
            gate weights are drawn (default: the first).

    Controls: ``task`` and ``override`` (Dropdowns). ``state``: task, task_id, override,
    weights_learned / weights_override (the drawn module's gate row), prompts, targets,
    answers_learned, answers_override, exact_match_learned, exact_match_override.

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    def __init__(self, model: nn.Module, dataset, tokenizer, task_names: Sequence[str],
                 n_examples: int = 24, module: Optional[str] = None, show: int = 6):

        layers = adapter_layers(model)
        if not layers:
            raise ValueError("CounterfactualGate: the model has no adapters; add them with "
                             "cgc_edu.add_adapters(model, config) and train them first.")
        self.model, self.tokenizer, self.show = model, tokenizer, show
        self.task_names = list(task_names)
        self.config = next(iter(layers.values())).config
        if len(self.task_names) != self.config.n_tasks:
            raise ValueError(f"CounterfactualGate: {len(self.task_names)} task names for "
                             f"n_tasks={self.config.n_tasks}; pass one name per task id.")
        self.module = module or next(iter(layers))
        self.layer = layers[self.module]
        rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
        self.rows = {t: [r for r in rows if int(r["task_id"]) == t][:n_examples]
                     for t in range(self.config.n_tasks)}
        self._learned: dict = {}
        self.task = widgets.Dropdown(options=[(n, t) for t, n in enumerate(self.task_names)],
                                     value=0, description="task")
        self.override = widgets.Dropdown(description="override",
                                         layout=widgets.Layout(width="330px"))
        self._set_choices(0)
        self.task.observe(lambda change: self._set_choices(change["new"]), names="value")
        self._build([[self.task, self.override]], (7.0, 2.6))

    def _set_choices(self, task_id: int) -> None:
        choices = override_choices(self.config, task_id, self.task_names)
        # New options reset the value: hold the redraw, the task's own observer redraws once.
        self._holding = True
        try:
            self.override.options = [(label, key) for label, key in choices]
            self.override.value = choices[0][1]
        finally:
            self._holding = False

    def _decode(self, task_id: int):

        rows = self.rows[task_id]
        longest = max((len(r["target"]) for r in rows), default=1)
        answers = greedy_decode(self.model, self.tokenizer, [r["prompt"] for r in rows],
                                task_ids=[task_id] * len(rows), max_new_tokens=longest + 1)
        return answers, float(np.mean([a == r["target"] for a, r in zip(answers, rows)]))

    def _compute(self) -> dict:
        t, key = self.task.value, self.override.value
        rows = self.rows[t]
        if not rows:
            return dict(task=self.task_names[t], task_id=t, override=key, summary=(
                f"No examples of task {self.task_names[t]} in the dataset given."))
        if t not in self._learned:
            self._learned[t] = self._decode(t)
        answers, em = self._learned[t]
        ids = torch.tensor([t])
        with torch.no_grad():
            learned_w = self.layer.gate_weights(ids)[0].tolist()
            if key == "learned":
                over_answers, over_em, over_w = answers, em, learned_w
            else:
                with override_gate(self.model, t, key):
                    over_w = self.layer.gate_weights(ids)[0].tolist()
                    over_answers, over_em = self._decode(t)
        label = dict((k, lab) for lab, k in override_choices(self.config, t, self.task_names))[key]
        return dict(task=self.task_names[t], task_id=t, override=key, override_label=label,
                    weights_learned=learned_w, weights_override=over_w,
                    prompts=[r["prompt"] for r in rows], targets=[r["target"] for r in rows],
                    answers_learned=list(answers), answers_override=list(over_answers),
                    exact_match_learned=em, exact_match_override=over_em,
                    summary=f"{self.task_names[t]}: exact match {em:.2f} with the learned gate, "
                            f"{over_em:.2f} with '{label}' (on {len(rows)} examples).")

    def _draw(self, fig: Figure, s: dict) -> None:
        if "prompts" not in s:
            fig.text(0.02, 0.5, s["summary"], fontsize=9)
            return
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        E = len(s["weights_learned"])
        x = np.arange(E)
        ax1.bar(x - 0.2, s["weights_learned"], 0.4, color=plots.PART_COLORS["gate"],
                label="learned")
        ax1.bar(x + 0.2, s["weights_override"], 0.4, color="0.55", label="override")
        labels = self.layer.expert_labels(self.task_names)
        ax1.set_xticks(x, [lab.replace("task ", "") for lab in labels], rotation=45, ha="right",
                       fontsize=7)
        ax1.set(ylabel="gate weight", ylim=(0, 1),
                title=f"{s['task']}'s gate in {plots.short_module_name(self.module)}")
        ax1.legend(fontsize=7, frameon=False)
        ax2.bar([0, 1], [s["exact_match_learned"], s["exact_match_override"]],
                color=[plots.PART_COLORS["gate"], "0.55"])
        ax2.set_xticks([0, 1], ["learned", "override"], fontsize=8)
        ax2.set(ylim=(0, 1.05), ylabel="exact match", title=f"{len(s['prompts'])} examples")
        for i, v in enumerate([s["exact_match_learned"], s["exact_match_override"]]):
            ax2.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
        for ax in (ax1, ax2):
            ax.title.set_fontsize(9)

    def _redraw(self) -> None:
        super()._redraw()
        s = self._state
        if "prompts" in s:      # a few answers under the picture, as a small table
            rows = "".join(
                f"<tr><td>{html.escape(p)}</td><td>{html.escape(t)}</td>"
                f"<td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
                for p, t, a, b in list(zip(s["prompts"], s["targets"], s["answers_learned"],
                                           s["answers_override"]))[:self.show])
            self.message.value = (f"<p>{html.escape(s['summary'])}</p><table><tr><th>prompt</th>"
                                  f"<th>target</th><th>learned</th><th>override</th></tr>{rows}"
                                  "</table>")


__all__ = ["LoRAKnobs", "RouterKnobs", "SeesawKnobs", "CGCConfigBuilder", "CounterfactualGate",
           "lora_scaling", "lora_regression", "train_lora_layer", "clustered_tokens",
           "train_router", "seesaw_front", "render_png"]
