"""Serving speed-ups of the CGC-LoRA layer, apart from its equation.

`CGCLoRALinear.forward` computes y = W0 x + b + B_t A_t x with each sample's LoRA
(`CGCLoRALinear.task_lora`). Training builds B_t and A_t afresh each step (autograd needs
them); serving asks the same question at every decode step of a `generate` call, where a
small model's cost is per-op overhead, not arithmetic. This module keeps the answer:

- `serve`: the layer's inference path. Each sample's LoRA is kept (`kept_lora`) while the
  very same ids tensor comes back (generate routes one tensor to every decode step) and the
  weights are unchanged (`adapter_state`); the second product accumulates into the base's
  output in place; a lone request runs plain 2-D products on kept views.
- `adapter_state`: the tensors a LoRA is built from and a key that changes when any of them
  does (version counters, data pointers, the scaling); 1+N's kept serving models use it too.
- `ServingCache`: one value kept for one set of source tensors.
- `call`: a module's forward without `nn.Module.__call__`'s two Python frames when it has no
  hooks (28 adapted projections a decode step make them visible).

The numbers behind each choice: ``python benchmarks/bench_serving.py`` and
``benchmarks/bench_layer.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _hooks  # the global hook registries (see no_hooks)


def no_hooks(module: nn.Module) -> bool:
    """True when calling ``module`` would run its ``forward`` and nothing else."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _hooks._global_forward_hooks
                or _hooks._global_forward_pre_hooks or _hooks._global_backward_hooks
                or _hooks._global_backward_pre_hooks)


def call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; without hooks, its ``forward`` directly (what ``__call__`` would do)."""
    return module.forward(x) if no_hooks(module) else module(x)


class ServingCache:
    """One value kept for one set of source tensors: a layer's per-sample LoRAs over
    the decode steps of one `generate` call, or 1+N's serving bank and hot copy. `get`
    returns it only for the very same sources (held here, so that their ids cannot be
    reused) and an equal key (`adapter_state`); a key of None never matches."""

    __slots__ = ("sources", "key", "value")

    def __init__(self):
        self.sources, self.key, self.value = (), None, None

    def get(self, sources: tuple, key):
        if (key is not None and len(sources) == len(self.sources) and key == self.key
                and all(a is b for a, b in zip(sources, self.sources))):
            return self.value
        return None

    def put(self, sources: tuple, key, value) -> None:
        self.sources, self.key, self.value = sources, key, value


def adapter_state(layer) -> Optional[tuple[tuple, tuple]]:
    """(tensors, key) of a `CGCLoRALinear`: the tensors `task_lora` reads (A, B, the gate's)
    and a key of the rest it depends on: their version counters (bumped by every in-place
    change), data pointers (moved by ``model.to(...)``) and the scaling. None where that
    cannot be told: a hook on the gate (`override_gate`) may change its weights, inference
    tensors keep no version counter. The same tensors (by identity) and an equal key: the
    same LoRA."""
    gate = layer._modules["gate"]
    if not no_hooks(gate):
        return None
    tensors = (*layer._parameters.values(), *gate._parameters.values())
    try:
        key = (layer.scaling, *[(t._version, t.data_ptr()) for t in tensors])
    except RuntimeError:
        return None
    return tensors, key


def kept_lora(layer, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer.task_lora(task_ids)``, kept in the layer's `ServingCache` while the very same
    ids tensor comes back and `adapter_state` is unchanged."""
    state = adapter_state(layer)
    try:
        ids_version = task_ids._version
    except RuntimeError:
        state = None
    if state is None:
        return layer.task_lora(task_ids)
    sources, key = (task_ids, *state[0]), (ids_version, *state[1])
    cache = layer._serving_cache
    kept = cache.get(sources, key)
    if kept is None:
        kept = layer.task_lora(task_ids)
        cache.put(sources, key, kept)
    return kept


def serve(layer, x: torch.Tensor, task_ids: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """The layer's inference path: ``result`` (the base's output) += B_t A_t x, each sample's
    LoRA kept (`kept_lora`). Two products, the second accumulated into the base's output in
    place (``baddbmm_``); one request runs plain matrix products on kept 2-D views."""
    A_t, Bt_t = kept_lora(layer, task_ids)
    batch, d_out = x.shape[0], layer.out_features
    if batch == 1 and result.dtype == A_t.dtype:
        # One request (the latency case): plain matrix products on kept 2-D views, a
        # third fewer ops than the batched form (bench_serving's lone request).
        single = layer.__dict__.get("_single")
        if single is None or single[0] is not A_t:
            single = layer.__dict__["_single"] = (A_t, A_t[0].t(), Bt_t[0])
        h = torch.mm(x.to(A_t.dtype).reshape(-1, layer.in_features), single[1])
        result.view(-1, d_out).addmm_(h, single[2])
        return result
    # (A_t x^T)^T: with few rows per sample BLAS runs the batched product several
    # times faster in this orientation (benchmarks/bench_serving.py).
    x = x.to(A_t.dtype).reshape(batch, -1, layer.in_features)
    h = torch.bmm(A_t, x.transpose(1, 2)).transpose(1, 2)
    if result.dtype == A_t.dtype:
        result.view(batch, -1, d_out).baddbmm_(h, Bt_t)
        return result
    return result.add_(torch.bmm(h, Bt_t).view(result.shape).to(result.dtype))
