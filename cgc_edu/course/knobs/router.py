"""Chapter 02's knobs: a router's temperature, top-k and auxiliary-loss coefficient against
the load on each expert, measured by training a small `cgc_edu.moe.MoELayer`.

Taught in: notebooks/02_mixture_of_experts.ipynb.
"""
from __future__ import annotations

import math
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ...moe import MoELayer, load_balancing_loss, router_stats
from ...utils import training_seed
from .. import plots
from .base import Knobs, adam_steps


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
    adam_steps(layer.parameters(),
               lambda: nn.functional.mse_loss(layer(X), Y) + aux_coef * layer.aux_loss,
               steps, lr)
    return layer, before


class RouterKnobs(Knobs):
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


__all__ = ["RouterKnobs", "clustered_tokens", "train_router"]
