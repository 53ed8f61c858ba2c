"""Recording what the gates learn: gate weights per task, module and training step.

A `GateRecorder` attached to a model with adapters takes a snapshot of every adapted
module's gate, ``g_t`` for every task t, each time it is called; the snapshots form a
`GateRecording`, an array shaped (steps, modules, tasks, experts) with the names needed to
read it. Recordings save to and load from ``.npz`` (plain arrays, no pickle).

Taught in: notebooks/08_gate_lab.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters.config import ExpertLayout
from ..adapters.injection import adapter_layers

_ARRAYS = ("steps", "gates", "module_names", "task_names", "expert_labels", "n_common",
           "n_specific", "gate")


@dataclass
class GateRecording:
    """Gate weights over training: ``gates[s, m, t, e]`` is g_t,e of module m at ``steps[s]``.

    Expert order is `ExpertLayout` (docs/design.md): [0, n_common) are common, then
    ``n_specific`` experts per task. ``gate`` is the config's gate kind ("task": learned, "uniform": fixed).

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    steps: np.ndarray
    gates: np.ndarray
    module_names: list
    task_names: list
    expert_labels: list
    n_common: int
    n_specific: int
    gate: str = "task"

    def __post_init__(self):
        self.steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        self.gates = np.asarray(self.gates, dtype=np.float32)
        self.module_names = [str(n) for n in self.module_names]
        self.task_names = [str(n) for n in self.task_names]
        self.expert_labels = [str(n) for n in self.expert_labels]
        self.n_common, self.n_specific = int(self.n_common), int(self.n_specific)
        expected = (len(self.steps), len(self.module_names), len(self.task_names),
                    len(self.expert_labels))
        if self.gates.shape != expected:
            raise ValueError(
                f"GateRecording: gates has shape {self.gates.shape} but steps, module_names, "
                f"task_names and expert_labels give {expected}; pass gates shaped "
                "(steps, modules, tasks, experts).")
        n_experts = self.layout.n_experts
        if n_experts != len(self.expert_labels):
            raise ValueError(
                f"GateRecording: n_common={self.n_common} + {len(self.task_names)} tasks x "
                f"n_specific={self.n_specific} = {n_experts} experts, but {len(self.expert_labels)} "
                "expert labels were given; pass one label per expert.")
        if len(self.steps) > 1 and np.any(np.diff(self.steps) <= 0):
            raise ValueError(f"GateRecording: steps {self.steps.tolist()} must be strictly increasing.")

    # ------------------------------------------------------------------ shape
    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def n_experts(self) -> int:
        return len(self.expert_labels)

    @property
    def layout(self) -> ExpertLayout:
        """The expert layout of the recorded adapter (the same as its `AdapterConfig.layout`)."""
        return ExpertLayout(self.n_common, self.n_specific, self.n_tasks)

    def allowed_mask(self) -> np.ndarray:
        """(tasks, experts) boolean: True where expert e is in task t's allowed set S_t."""
        return self.layout.allowed_mask()

    def common_share(self) -> np.ndarray:
        """(steps, modules, tasks): the gate mass each task puts on the common experts."""
        return self.gates[..., :self.n_common].sum(-1)

    # ------------------------------------------------------------ look-ups
    def module_index(self, module) -> int:
        """Index of a module given by name or index; KeyError listing the names otherwise."""
        return _index("module", module, self.module_names)

    def task_index(self, task) -> int:
        """Index of a task given by name or index; KeyError listing the names otherwise."""
        return _index("task", task, self.task_names)

    def step_index(self, step) -> int:
        """Index of a recorded training step (``-1`` is the last); KeyError otherwise."""
        if step == -1:
            return len(self.steps) - 1
        matches = np.flatnonzero(self.steps == step) if isinstance(step, (int, np.integer)) else []
        if len(matches) != 1:
            raise KeyError(f"step {step!r} was not recorded; recorded steps are "
                           f"{_short(self.steps.tolist())} (or -1 for the last).")
        return int(matches[0])

    # ------------------------------------------------------------------ files
    def save(self, path) -> Path:
        """Write the recording to ``path`` (.npz of plain arrays; loads without pickle)."""
        path = Path(path)
        np.savez_compressed(path, steps=self.steps, gates=self.gates,
                            module_names=np.array(self.module_names, dtype=str),
                            task_names=np.array(self.task_names, dtype=str),
                            expert_labels=np.array(self.expert_labels, dtype=str),
                            n_common=self.n_common, n_specific=self.n_specific,
                            gate=np.array(self.gate, dtype=str))
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path) -> "GateRecording":
        """Read a recording written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"{path}: not a gate recording, it lacks {missing}; "
                                 "write recordings with GateRecording.save / GateRecorder.save.")
            return cls(steps=data["steps"], gates=data["gates"],
                       module_names=data["module_names"].tolist(),
                       task_names=data["task_names"].tolist(),
                       expert_labels=data["expert_labels"].tolist(),
                       n_common=int(data["n_common"]), n_specific=int(data["n_specific"]),
                       gate=str(data["gate"]))


class GateRecorder:
    """Snapshots the gate weights of every adapted module, for every task, during training.

    Use it as the training loop's callback (``train(..., callback=recorder,
    callback_every=k)`` calls ``recorder(step, model)`` at step 0, every k steps and after
    the last step) or by hand with ``recorder.record(step)``. Called as a callback it records
    only when ``step % every == 0``: keep the default ``every=1`` when the loop already
    chooses the steps (so the last step is kept), or call it every step with ``every=k``.

    Args:
        model: a model with adapters (see ``cgc_edu.add_adapters``).
        task_names: one name per task (default "0", "1", ...).
        every: record every ``every`` steps when used as a callback.

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    def __init__(self, model: nn.Module, task_names: Optional[Sequence[str]] = None,
                 every: int = 1):

        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"GateRecorder: every={every!r}; pass a positive integer "
                             "(record every k-th step).")
        self.layers = adapter_layers(model)
        if not self.layers:
            raise ValueError("GateRecorder: the model has no adapters to record; call "
                             "cgc_edu.add_adapters(model, config) first.")
        configs = {(l.config.n_common, l.config.n_specific, l.config.n_tasks)
                   for l in self.layers.values()}
        if len(configs) != 1:
            raise ValueError(f"GateRecorder: adapted modules disagree on (n_common, n_specific, "
                             f"n_tasks): {sorted(configs)}; record one adapter configuration at a time.")
        first = next(iter(self.layers.values()))
        n_tasks = first.config.n_tasks
        names = [str(t) for t in range(n_tasks)] if task_names is None else list(task_names)
        if len(names) != n_tasks:
            raise ValueError(f"GateRecorder: got {len(names)} task names {names} for an adapter "
                             f"with n_tasks={n_tasks}; pass one name per task.")
        self.model, self.task_names, self.every = model, names, every
        self.expert_labels = first.config.layout.labels(names, where="GateRecorder")
        self.config = first.config
        self.steps: list[int] = []
        self.snapshots: list[np.ndarray] = []

    def snapshot(self) -> np.ndarray:
        """The gates now: (modules, tasks, experts)."""
        rows = []
        with torch.no_grad():
            for layer in self.layers.values():
                ids = torch.arange(len(self.task_names), device=layer.lora_A.device)
                rows.append(layer.gate_weights(ids).detach().float().cpu().numpy())
        return np.stack(rows)

    def record(self, step: int) -> None:
        """Record the gates at training step ``step`` (re-recording the last step replaces it)."""
        step = int(step)
        if self.steps and step < self.steps[-1]:
            raise ValueError(f"GateRecorder.record: step {step} comes before the last recorded "
                             f"step {self.steps[-1]}; record steps in increasing order.")
        if self.steps and step == self.steps[-1]:
            self.steps.pop()
            self.snapshots.pop()
        self.snapshots.append(self.snapshot())
        self.steps.append(step)

    def __call__(self, step: int, model: Optional[nn.Module] = None) -> None:
        """The training-loop hook: record when ``step`` is a multiple of ``every``."""
        if model is not None and model is not self.model:
            raise ValueError("GateRecorder: called with another model than the one it records; "
                             "build one GateRecorder per model.")
        if int(step) % self.every == 0:
            self.record(step)

    @property
    def recording(self) -> GateRecording:
        """The snapshots so far as a `GateRecording`."""
        if not self.steps:
            raise ValueError("GateRecorder: nothing recorded yet; call recorder.record(step) or "
                             "pass the recorder to train(..., callback=recorder).")
        return GateRecording(steps=self.steps, gates=np.stack(self.snapshots),
                             module_names=list(self.layers), task_names=self.task_names,
                             expert_labels=self.expert_labels, n_common=self.config.n_common,
                             n_specific=self.config.n_specific, gate=self.config.gate)

    def save(self, path) -> Path:
        """Save the recording so far as .npz; read it back with `GateRecording.load`."""
        return self.recording.save(path)


def _index(kind: str, key, names: list) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if -len(names) <= key < len(names):
            return int(key) % len(names)
    elif key in names:
        return names.index(key)
    raise KeyError(f"unknown {kind} {key!r}; choose one of {_short(names)} (or an index "
                   f"0..{len(names) - 1}).")


def _short(items: list, limit: int = 12) -> str:
    """A list for an error message, elided in the middle when long."""
    if len(items) <= limit:
        return str(items)
    return f"[{', '.join(map(repr, items[:6]))}, ..., {', '.join(map(repr, items[-3:]))}]"
