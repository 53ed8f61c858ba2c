"""Chapter 01's knobs: LoRA's rank, alpha and the rsLoRA scaling against the size of the
update and the loss, measured by training the library's LoRA layer on a fixed regression.

Taught in: notebooks/01_lora_from_scratch.ipynb.
"""
from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from torch import nn

from ...adapters.config import AdapterConfig
from ...adapters.layer import CGCLoRALinear
from ...utils import training_seed
from .. import plots
from .base import Knobs, adam_steps


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

    def mse():
        return ((layer(problem["X"]) - problem["Y"]) ** 2).mean()

    losses = adam_steps([layer.lora_A, layer.lora_B], mse, steps, lr)
    with torch.no_grad():
        losses.append(mse().item())
    return layer, losses


class LoRAKnobs(Knobs):
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
        norm = r"$\|\Delta W\|_F$ after training"
        for ax, key, mine, label in ((ax2, "losses_by_rank", s["loss_after"], "loss after training"),
                                     (ax3, "norms_by_rank", s["update_norm"], norm)):
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


__all__ = ["LoRAKnobs", "lora_scaling", "lora_regression", "train_lora_layer"]
