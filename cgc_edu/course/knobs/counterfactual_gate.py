"""Chapter 08's knobs: override one task's gate at inference and see its answers and exact
match change (`cgc_edu.course.counterfactual.override_gate` behind a widget).

Taught in: notebooks/08_gate_lab.ipynb.
"""
from __future__ import annotations

import html
from typing import Optional, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ...adapters.injection import adapter_layers
from ...train.loop import greedy_decode
from .. import plots
from ..counterfactual import override_choices, override_gate
from .base import Knobs


class CounterfactualGate(Knobs):
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


__all__ = ["CounterfactualGate"]
