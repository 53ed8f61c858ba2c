"""Putting adapters into a model and routing task ids to them.

`add_adapters` freezes a model and wraps its target ``nn.Linear`` modules in `CGCLoRALinear`
in place (like peft's ``LoraModel`` does for LoRA). Task ids reach the layers the way peft
carries ``adapter_names``: a forward pre-hook on the model takes ``task_ids=`` out of the
call's keyword arguments and hands them to a router that every adapted layer reads.
`task_context` sets the same router for a whole block, which is how ``model.generate`` is
routed.

Taught in: notebooks/05_cgc_lora.ipynb (injection, routing, merging).
"""
from __future__ import annotations

import contextlib
import types
from typing import Iterator, Optional

import torch
from torch import nn

from .config import AdapterConfig
from .layer import CGCLoRALinear, TaskGate

#: Never adapted when target_modules is None: the output head is not a projection to adapt.
DEFAULT_EXCLUDED = ("lm_head",)


class TaskRouter:
    """Carries the current task ids from the model's forward (or a task_context) to its layers."""

    def __init__(self):
        self.context_ids: list[Optional[torch.Tensor]] = []   # a stack: contexts nest
        self.call_ids: list[Optional[torch.Tensor]] = []      # a stack: forwards may nest

    @property
    def task_ids(self) -> Optional[torch.Tensor]:
        return self.current()[0]

    def current(self) -> tuple[Optional[torch.Tensor], bool]:
        """(task ids, whether they come from a task_context): a call's own ids win."""
        if self.call_ids and self.call_ids[-1] is not None:
            return self.call_ids[-1], False
        if self.context_ids:
            return self.context_ids[-1], True
        return None, False


def adapter_layers(model: nn.Module) -> dict[str, CGCLoRALinear]:
    """The adapted layers of a model, by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CGCLoRALinear)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _find_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    if config.target_modules is None:
        found = [n for n in linears if not any(_matches(n, t) for t in DEFAULT_EXCLUDED)]
        if not found:
            raise ValueError(f"add_adapters: {type(model).__name__} has no nn.Linear module to adapt; "
                             "cgc_edu adapts nn.Linear layers only.")
        return found
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
    for target in config.target_modules:
        if not any(_matches(n, target) for n in linears):
            raise ValueError(
                f"add_adapters: target module {target!r} matches no nn.Linear in {type(model).__name__}; "
                f"choose target_modules among {suffixes}.")
    return [n for n in linears if any(_matches(n, t) for t in config.target_modules)]


def _pop_task_ids(module, args, kwargs):
    module._cgc_router.call_ids.append(kwargs.pop("task_ids", None))
    return args, kwargs


def _drop_task_ids(module, args, kwargs, output):
    module._cgc_router.call_ids.pop()


def _generate_with_task_ids(self, *args, task_ids=None, **kwargs):
    """``model.generate(..., task_ids=...)``: generate inside a task_context."""
    if task_ids is None:
        return type(self).generate(self, *args, **kwargs)
    with task_context(self, task_ids):
        return type(self).generate(self, *args, **kwargs)


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and wrap its target nn.Linear modules in CGCLoRALinear, in place.

    Afterwards ``model(..., task_ids=LongTensor(batch))`` routes each sample to its task's
    experts, and ``with task_context(model, task_ids):`` does the same for a block (generate).
    Returns the model. Raises (model unchanged) when a target module is unknown or the model
    already has adapters.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"add_adapters: config is a {type(config).__name__}; pass an AdapterConfig, "
                        "e.g. AdapterConfig.cgc_lora(n_tasks=4).")
    if adapter_layers(model):
        raise ValueError(f"add_adapters: {type(model).__name__} already has adapters; build a fresh "
                         "base model, or load weights into the existing ones with load_adapters.")
    targets = _find_targets(model, config)            # validates before anything changes
    for p in model.parameters():
        p.requires_grad_(False)
    router = TaskRouter()
    shared = None
    if config.shared_gate:
        first = model.get_submodule(targets[0])
        shared = TaskGate(config).to(first.weight.device)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = CGCLoRALinear(getattr(parent, child), config, gate=shared, name=name)
        layer.router = router
        setattr(parent, child, layer)
    model._cgc_router = router
    model._cgc_config = config
    model._cgc_hooks = (
        model.register_forward_pre_hook(_pop_task_ids, with_kwargs=True),
        model.register_forward_hook(_drop_task_ids, with_kwargs=True, always_call=True),
    )
    if callable(getattr(type(model), "generate", None)):
        # A bound method (not a closure) so that copy.deepcopy(model) rebinds it to the copy.
        model.generate = types.MethodType(_generate_with_task_ids, model)
    return model


def _router(model: nn.Module, caller: str) -> TaskRouter:
    router = getattr(model, "_cgc_router", None)
    if router is None:
        raise ValueError(f"{caller}: {type(model).__name__} has no adapters; call "
                         "add_adapters(model, config) first.")
    return router


@contextlib.contextmanager
def task_context(model: nn.Module, task_ids) -> Iterator[nn.Module]:
    """Route every forward inside the block (``model.generate`` too) with ``task_ids``.

    ``task_ids``: LongTensor of shape (batch,), one task per sample. The ids are checked on
    entry, so a bad id fails before any forward runs.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    router = _router(model, "task_context")
    layers = adapter_layers(model)
    first = next(iter(layers.values()))
    ids = first.check_task_ids(task_ids)
    router.context_ids.append(ids)
    try:
        yield model
    finally:
        router.context_ids.pop()


def merge_task(model: nn.Module, task_id: int) -> nn.Module:
    """Fold task ``task_id``'s adapter into every adapted layer's W0 (serving at base speed).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    _router(model, "merge_task")
    layers = adapter_layers(model)
    first = next(iter(layers.values()))
    if isinstance(task_id, torch.Tensor):
        task_id = task_id.item()
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise TypeError(f"merge_task: task_id={task_id!r} must be an int in [0, {first.config.n_tasks - 1}].")
    first.check_task_ids(torch.tensor([task_id]))
    merged = {l.merged_task for l in layers.values()} - {None}
    if merged:
        raise ValueError(f"merge_task: task {merged.pop()} is already merged into "
                         f"{type(model).__name__}; call unmerge(model) first.")
    for layer in layers.values():
        layer.merge(task_id)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge_task`: subtract the merged adapter from every W0.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    _router(model, "unmerge")
    for layer in adapter_layers(model).values():
        layer.unmerge()
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
