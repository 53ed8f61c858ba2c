"""GateInspector: turn the knobs and see what the gates learned (ipywidgets).

Pick a module, a task (or all tasks), a recorded training step (slider with play) and a
view; the inspector redraws one matplotlib figure and shows it as PNG bytes in an
``ipywidgets.Image``. An image widget, unlike a live canvas, keeps its picture in the saved
widget state, so the static book shows the last view without a Python kernel. Code and tests
drive it with ``select(...)`` and read what it shows from ``state`` and ``figure``.

Taught in: notebooks/08_gate_lab.ipynb.
"""
from __future__ import annotations

import contextlib
import html
import io
from typing import Optional, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from torch import nn

from ..adapters.injection import adapter_layers
from . import plots
from .recording import GateRecorder, GateRecording

VIEWS = ("heatmap", "all modules", "evolution", "common share")
ALL_TASKS = "all tasks"


def _as_recording(source, task_names) -> tuple[Optional[GateRecording], str, str]:
    """(recording or None, message when there is nothing to inspect, a note on the source)."""
    if isinstance(source, GateRecorder):
        source = source.recording
    if isinstance(source, nn.Module):

        layers = adapter_layers(source)
        if not layers:
            return None, ("This model has no adapters, so it has no gates to inspect. Add them "
                          "with cgc_edu.add_adapters(model, config)."), ""
        recorder = GateRecorder(source, task_names=task_names)
        recorder.record(0)
        source = recorder.recording
        note = "A snapshot of the model's gates now; pass a GateRecording to move through training."
    elif isinstance(source, GateRecording):
        note = ""
    else:
        raise TypeError(f"GateInspector: source is a {type(source).__name__}; pass a model with "
                        "adapters, a GateRecorder or a GateRecording.")
    if source.layout.experts_per_task <= 1:
        return None, (f"No gates to inspect: every task uses a single expert (n_common="
                      f"{source.n_common}, n_specific={source.n_specific}, the LoRA / independent "
                      "LoRA presets), so each gate weight is 1. Use AdapterConfig.moe_lora(...) or "
                      ".cgc_lora(...) to get gates."), note
    if source.gate == "uniform":
        note = (note + " " if note else "") + ("gate='uniform': the weights are fixed (the "
                                                "ablation without a gate), not learned.")
    return source, "", note


class GateInspector(widgets.VBox):
    """Interactive view of gate weights: module, task, step and view pickers over one figure.

    Args:
        source: a model with adapters (a snapshot of its gates now), a `GateRecorder`, or a
            `GateRecording` (steps of training).
        task_names: names of the tasks when ``source`` is a model.
        view: the first view, one of `VIEWS`.
        dpi: resolution of the rendered picture.

    Attributes: the controls (``module_dropdown``, ``task_dropdown``, ``step_slider``,
    ``play``, ``view_buttons``), ``image`` (the PNG shown), ``figure`` (the matplotlib
    figure behind it), ``recording``, and ``note`` (the text shown above the picture).

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    def __init__(self, source, task_names: Optional[Sequence[str]] = None,
                 view: str = "heatmap", dpi: int = 90):
        if view not in VIEWS:
            raise ValueError(f"GateInspector: view={view!r}; choose one of {list(VIEWS)}.")
        recording, problem, note = _as_recording(source, task_names)
        self.recording, self.problem, self.dpi = recording, problem, dpi
        self.note = problem or note     # plain text; shown above the picture
        self.figure = Figure(layout="constrained")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.message = widgets.HTML(html.escape(self.note))
        self._state = dict(module=None, task=None, step=None, view=None, values=None,
                           rows=None, columns=None, message=problem or None)
        self._holding = False
        if recording is None:
            super().__init__([self.message])
            return
        steps = [int(s) for s in recording.steps]
        longest = max(len(name) for name in recording.module_names)   # room for the full name
        self.module_dropdown = widgets.Dropdown(
            options=recording.module_names, description="module",
            layout=widgets.Layout(width=f"calc({min(longest, 60) + 4}ch + 90px)"))
        self.task_dropdown = widgets.Dropdown(options=[ALL_TASKS, *recording.task_names],
                                              description="task")
        self.step_slider = widgets.SelectionSlider(
            options=[(str(s), s) for s in steps], value=steps[-1], description="step",
            continuous_update=False, disabled=len(steps) == 1)
        self.play = widgets.Play(min=0, max=len(steps) - 1, value=len(steps) - 1, interval=600,
                                 disabled=len(steps) == 1, description="play")
        widgets.link((self.play, "value"), (self.step_slider, "index"))
        self.view_buttons = widgets.ToggleButtons(options=VIEWS, value=view,
                                                  style={"button_width": "auto"})
        for control in (self.module_dropdown, self.task_dropdown, self.step_slider,
                        self.view_buttons):
            control.observe(self._on_change, names="value")
        super().__init__([
            widgets.HBox([self.module_dropdown, self.task_dropdown]),
            widgets.HBox([self.play, self.step_slider]),
            self.view_buttons, self.message, self.image])
        self._redraw()

    # ------------------------------------------------------------ driving it
    @property
    def state(self) -> dict:
        """What is shown: module, task, step, view, values (the gate numbers drawn), the
        labels of their rows and columns, and a message when there is nothing to show."""
        state = dict(self._state)
        for key in ("values", "rows", "columns"):       # copies: the caller may edit them
            if state[key] is not None:
                state[key] = state[key].copy()
        return state

    def select(self, module=None, task=None, step=None, view=None) -> dict:
        """Change the selection from code; arguments left as None keep their value.

        ``module`` and ``task`` are names (``task="all tasks"`` shows every task), ``step`` a
        recorded step (-1: the last), ``view`` one of `VIEWS`. A bad value raises a ValueError
        listing the valid choices and changes nothing. Returns the new `state`.
        """
        if self.recording is None:
            raise ValueError(f"GateInspector has nothing to select: {self.problem}")
        rec = self.recording
        changes = {}
        if module is not None:
            changes[self.module_dropdown] = _choose("module", module, rec.module_names)
        if task is not None:
            changes[self.task_dropdown] = _choose("task", task, [ALL_TASKS, *rec.task_names])
        if step is not None:
            steps = [int(s) for s in rec.steps]
            changes[self.step_slider] = steps[-1] if step == -1 else _choose("step", step, steps)
        if view is not None:
            changes[self.view_buttons] = _choose("view", view, list(VIEWS))
        with self._hold():
            for control, value in changes.items():
                control.value = value
        self._redraw()
        return self.state

    @contextlib.contextmanager
    def _hold(self):
        """Apply several changes with one redraw at the end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _on_change(self, _change) -> None:
        if not self._holding:
            self._redraw()

    # ------------------------------------------------------------ drawing
    def _redraw(self) -> None:
        rec, fig = self.recording, self.figure
        module, view = self.module_dropdown.value, self.view_buttons.value
        task = self.task_dropdown.value
        step = int(self.step_slider.value)
        s, m = rec.step_index(step), rec.module_index(module)
        tasks = None if task == ALL_TASKS else [task]
        rows = rec.task_names if tasks is None else tasks
        t_rows = [rec.task_index(t) for t in rows]
        fig.clear()
        if view == "heatmap":
            fig.set_size_inches(1.6 + 0.55 * rec.n_experts, 1.8 + 0.4 * len(rows))
            plots.gate_heatmap(rec, m, step, tasks, ax=fig.add_subplot())
            values, columns = rec.gates[s, m][t_rows], rec.expert_labels
        elif view == "all modules":
            plots.gate_heatmap_grid(rec, step, tasks, fig=fig)
            values, columns = rec.gates[s][:, t_rows], rec.expert_labels
            rows = [f"{name} / {t}" for name in rec.module_names for t in rows]
        elif view == "evolution":
            fig.set_size_inches(6.5, 3.4)
            plots.gate_evolution(rec, m, None if tasks is None else tasks[0], ax=fig.add_subplot(),
                                 step=step)
            if tasks is None:   # each task's mass on the common experts, over steps
                values, columns = rec.common_share()[:, m].T, [int(x) for x in rec.steps]
            else:               # the task's weight on each expert it may use, over steps
                allowed = np.flatnonzero(rec.allowed_mask()[t_rows[0]])
                values = rec.gates[:, m, t_rows[0]][:, allowed].T
                rows, columns = [rec.expert_labels[e] for e in allowed], [int(x) for x in rec.steps]
        else:  # common share
            values, rows, columns = plots.common_share_table(rec, step, tasks)
            fig.set_size_inches(2.4 + 0.8 * len(columns), 1.8 + 0.4 * len(rows))
            plots.common_share(rec, step, tasks, ax=fig.add_subplot())
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        png = buffer.getvalue()
        # Show the picture at its own size (the PNG header holds it), shrunk only to fit.
        self.image.width = str(int.from_bytes(png[16:20], "big"))
        self.image.value = png
        self._state = dict(module=module, task=task, step=step, view=view,
                           values=np.array(values, dtype=float), rows=list(rows),
                           columns=list(columns), message=None)


def _choose(kind: str, value, choices: list):
    if value in choices:
        return value
    raise ValueError(f"GateInspector.select: unknown {kind} {value!r}; choose one of {choices}.")
