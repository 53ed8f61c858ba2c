"""Counterfactual gates: what does a task answer if its gate weights were different?

`override_gate(model, task_id, weights)` replaces one task's gate weights in every adapted
layer for the duration of a ``with`` block, at inference, and restores the model exactly
afterwards. It wraps each layer's gate (a forward hook on the `TaskGate` module, once per
gate, so a gate shared by all layers is overridden once) and leaves the layers' code and
parameters alone. Other tasks' rows pass through unchanged.

``weights`` is one of

    "uniform"      uniform over S_t (the ablation without a gate, for this task only)
    "zero:e"       expert e's weight set to 0, the rest of S_t renormalised (per layer)
    "swap:u"       task u's learned mixture, moved onto task t's own experts: the common
                   weights as u has them, u's specific weights on t's specific experts
    E numbers      the same weights in every layer (zero outside S_t, renormalised)

Tuples ``("zero", e)`` and ``("swap", u)`` work too. Every override stays inside S_t: the
layer computes only S_t's experts for a task (`task_lora`), so weight outside S_t would
be silently ignored; it is an error instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ..adapters.config import AdapterConfig
from ..adapters.injection import adapter_layers


def _gates(model: nn.Module) -> tuple[AdapterConfig, list[nn.Module]]:

    layers = adapter_layers(model)
    if not layers:
        raise ValueError("override_gate: the model has no adapters, so it has no gates; add "
                         "them with cgc_edu.add_adapters(model, config).")
    merged = [name for name, layer in layers.items() if layer.merged_task is not None]
    if merged:
        raise ValueError(f"override_gate: {merged[0]} has a task merged into its weights, which "
                         "bypasses the gate; call cgc_edu.unmerge(model) first.")
    gates: dict[int, nn.Module] = {}
    for layer in layers.values():
        gates.setdefault(id(layer.gate), layer.gate)
    return next(iter(layers.values())).config, list(gates.values())


def _parse(weights):
    """("uniform", None) | ("zero", e) | ("swap", u) | ("explicit", tensor)."""
    if isinstance(weights, str):
        kind, _, arg = weights.partition(":")
        if kind == "uniform" and not arg:
            return "uniform", None
        if kind in ("zero", "swap") and arg.strip().lstrip("-").isdigit():
            return kind, int(arg)
    elif isinstance(weights, tuple) and len(weights) == 2 and weights[0] in ("zero", "swap"):
        return weights[0], int(weights[1])
    elif not isinstance(weights, (str, tuple)) or all(
            isinstance(w, (int, float)) for w in weights):
        return "explicit", torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    raise ValueError(f"override_gate: weights={weights!r}; pass 'uniform', 'zero:<expert>', "
                     "'swap:<task>' or one weight per expert.")


def override_weights(gate: nn.Module, config: AdapterConfig, task_id: int, weights) -> torch.Tensor:
    """The (E,) weights one gate gives ``task_id`` under an override (see the module doc).
    """
    n_tasks, E = config.n_tasks, config.n_experts
    if not isinstance(task_id, int) or not 0 <= task_id < n_tasks:
        raise ValueError(f"override_gate: task_id={task_id!r}; pass a task id in [0, {n_tasks - 1}].")
    allowed = torch.zeros(E, dtype=torch.bool)
    allowed[config.allowed_experts(task_id)] = True
    with torch.no_grad():
        learned = gate(torch.tensor([task_id]))[0].detach().float()
    kind, arg = _parse(weights)
    if kind == "uniform":
        new = allowed.float()
    elif kind == "zero":
        if not 0 <= arg < E or not allowed[arg]:
            raise ValueError(f"override_gate: cannot zero expert {arg}: task {task_id} uses only "
                             f"S_t = {config.allowed_experts(task_id)}; pick one of those.")
        if int(allowed.sum()) == 1:
            raise ValueError(f"override_gate: expert {arg} is task {task_id}'s only expert; "
                             "zeroing it leaves nothing to renormalise.")
        new = learned.clone()
        new[arg] = 0.0
        if float(new.sum()) <= 0:
            new = allowed.float()
            new[arg] = 0.0
    elif kind == "swap":
        if not 0 <= arg < n_tasks:
            raise ValueError(f"override_gate: swap:{arg}; pass a task id in [0, {n_tasks - 1}].")
        with torch.no_grad():
            other = gate(torch.tensor([arg]))[0].detach().float()
        new = torch.zeros(E)
        own, theirs = config.allowed_experts(task_id), config.allowed_experts(arg)
        new[own] = other[theirs]            # same positions: common, then specific experts
    else:
        new = arg
        if new.numel() != E:
            raise ValueError(f"override_gate: {new.numel()} weights for {E} experts; pass one "
                             "weight per expert of the bank.")
        if bool((new < 0).any()) or float(new.sum()) <= 0:
            raise ValueError("override_gate: weights must be >= 0 with a positive sum.")
        if bool((new[~allowed] != 0).any()):
            raise ValueError(f"override_gate: weight on experts outside S_t = "
                             f"{config.allowed_experts(task_id)}; task {task_id}'s layer computes "
                             "only those, so give the others weight 0.")
    return new / new.sum()


def override_choices(config: AdapterConfig, task_id: int,
                     task_names: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
    """[(label, weights)] of the overrides that make sense for a task: "learned" (none),
    uniform, zero each expert of S_t (when it has several), swap with each other task.
    """
    names = list(task_names) if task_names is not None else [str(t) for t in range(config.n_tasks)]
    choices = [("learned gate (no override)", "learned")]
    allowed = config.allowed_experts(task_id)
    if len(allowed) > 1:
        choices.append(("uniform over S_t", "uniform"))
        for e in allowed:
            kind = "common" if e < config.n_common else "own"
            choices.append((f"zero expert {e} ({kind}), renormalise", f"zero:{e}"))
        choices += [(f"{names[u]}'s mixture", f"swap:{u}")
                    for u in range(config.n_tasks) if u != task_id]
    return choices


@contextlib.contextmanager
def override_gate(model: nn.Module, task_id: int, weights) -> Iterator[nn.Module]:
    """Within the block, task ``task_id``'s gate weights are replaced in every adapted layer.

    ``weights``: "uniform", "zero:<expert>", "swap:<task>", or E numbers (see the module
    doc). Each gate's override is computed from that gate (zero and swap are per layer).
    Rows of other tasks are untouched; on exit the hooks are removed, so the model is exactly
    as before (no parameter is written). Bad input raises before anything is changed.
    """
    config, gates = _gates(model)
    replacements = [override_weights(g, config, task_id, weights) for g in gates]
    handles = []

    def hook_for(new: torch.Tensor):
        def hook(_module, args, output):
            rows = (args[0] == task_id)[:, None]
            return torch.where(rows, new.to(output.device, output.dtype), output)
        return hook

    try:
        for gate, new in zip(gates, replacements):
            handles.append(gate.register_forward_hook(hook_for(new)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["override_gate", "override_weights", "override_choices"]
