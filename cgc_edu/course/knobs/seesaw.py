"""Chapter 03's knobs: the loss weight between two tasks against both tasks' losses, the
seesaw drawn as a front of shared-bottom models trained by `cgc_edu.mtl.train_multitask`.

Taught in: notebooks/03_multitask_learning.ipynb.
"""
from __future__ import annotations

from typing import Optional, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from ... import mtl
from ...data.synthetic import make_correlated_tasks
from ...utils import training_seed
from .. import plots
from .base import Knobs, one_thread


def seesaw_front(weights: Sequence[float] = tuple(np.round(np.linspace(0.1, 0.9, 9), 2)),
                 correlation: float = 0.0, hidden: int = 8, steps: int = 300,
                 seed: int = 0) -> dict:
    """Train one `mtl.SharedBottom` per loss weight w (loss = w L0 + (1 - w) L1, by
    `mtl.train_multitask`) on two synthetic tasks (0 and 1) of the given correlation, plus a
    single-task model per task.

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
        mtl.train_multitask(model, x_train, y_train, steps=steps, batch_size=128, lr=3e-3,
                            seed=seed, weights=(w, 1 - w))
        return np.array(mtl.task_losses(model, x_test, y_test)) / variance

    with one_thread():
        losses = np.stack([fit(float(w)) for w in weights])
        alone = np.array([fit(1.0)[0], fit(0.0)[1]])
    return {"weights": [float(w) for w in weights], "losses": losses, "alone": alone,
            "correlation": correlation}


class SeesawKnobs(Knobs):
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
                                              description="w (task 0)", continuous_update=True)
        self._build([[self.weight]], (4.6, 3.6))

    def _compute(self) -> dict:
        i = self.front["weights"].index(self.weight.value)
        l1, l2 = self.front["losses"][i]
        return dict(weight=self.weight.value, losses=[float(l1), float(l2)],
                    front=self.front["losses"].tolist(), alone=self.front["alone"].tolist(),
                    summary=f"w = {self.weight.value:.2f}: loss = {self.weight.value:.2f}·L0 + "
                            f"{1 - self.weight.value:.2f}·L1 gives task 0 {l1:.3f}, task 1 "
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
        ax.set(xlabel="task 0 loss (1 - R²)", ylabel="task 1 loss (1 - R²)")
        ax.set_title("the seesaw: moving w trades one task for the other", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)


__all__ = ["SeesawKnobs", "seesaw_front"]
