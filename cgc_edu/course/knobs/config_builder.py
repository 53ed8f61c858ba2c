"""Chapter 05's knobs: build an `AdapterConfig` with controls and see what it means (the
mask of allowed experts, the ranks, the trainable parameters, the layer's diagram).

Taught in: notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import textwrap

import ipywidgets as widgets
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from ...adapters.config import AdapterConfig, adapter_parameter_count
from .. import plots
from ..diagrams import cgc_lora_diagram
from .base import Knobs


class CGCConfigBuilder(Knobs):
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
            fig.text(0.02, 0.5, "\n".join(textwrap.wrap(s["error"], 95)), fontsize=8, va="center",
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
        common = np.array(to_rgb(plots.PART_COLORS["common"]))
        specific = np.array(to_rgb(plots.PART_COLORS["specific"]))
        masked = np.array(to_rgb(plots.PART_COLORS["masked"]))
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


__all__ = ["CGCConfigBuilder"]
