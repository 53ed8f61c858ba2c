"""Putting adapters into a model and routing task ids to them.

`add_adapters` freezes a model and wraps its target ``nn.Linear`` modules (and transformers'
``Conv1D``, GPT-2's) in `CGCLoRALinear` in place (like peft's ``LoraModel`` does for LoRA); the
config's ``modules_to_save`` (a classifier head) stay trainable, as in peft. Task ids reach the layers the way peft
carries ``adapter_names``: a forward pre-hook on the model takes ``task_ids=`` out of the
call's keyword arguments, checks them once for the whole forward and hands them to a
`TaskRouter` that every adapted layer reads. `task_context` sets the same router for a whole
block, which is how ``model.generate`` is routed; `disable_adapters` sets its ``disabled``
flag, under which every layer answers with its bare base layer (peft's ``disable_adapter()``).
Under activation checkpointing
(``model.gradient_checkpointing_enable()``, Trainer's ``gradient_checkpointing=True``) the
backward pass recomputes each block after the forward has ended: the block's checkpoint
function is wrapped so that the recomputation sees the ids the forward saw.
`remove_adapters` undoes it all.

Taught in: notebooks/05_cgc_lora.ipynb (injection, routing, merging).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
from typing import Iterator, Optional

import torch
from torch import nn

from .config import AdapterConfig
from .layer import CGCLoRALinear, TaskGate, _adaptable_shape, add_delta, check_merged

#: Never adapted when target_modules is None: an output head (a causal LM's ``lm_head``, a
#: classifier's ``classifier`` or ``score``) is not a projection to adapt; to train a new head,
#: name it in ``modules_to_save``.
DEFAULT_EXCLUDED = ("lm_head", "classifier", "score")


@dataclasses.dataclass(eq=False)
class Injected:
    """Everything `add_adapters` adds to a model besides its layers, in one place (the model's
    ``_cgc`` attribute); `remove_adapters` undoes it from here. One object, so nothing the
    model-level calls read can disagree with another copy of it."""

    config: AdapterConfig
    router: "TaskRouter"
    requires_grad: list          # (parameter, requires_grad before add_adapters)
    saved_originals: dict        # modules_to_save: their original weights, by module name
    hooks: tuple = ()            # forward (pre-)hook handles on the model and its blocks
    # disable_adapters on a merged model: (layer, task, its merged weight) put aside on entry,
    # put back on exit; unmerge(model) inside the block empties it.
    put_aside: list = dataclasses.field(default_factory=list)


def injected(model: nn.Module, caller: str) -> Injected:
    """The model's `Injected` record; raises the "no adapters" error naming ``caller``."""
    record = getattr(model, "_cgc", None)
    if record is None:
        raise ValueError(f"{caller}: {type(model).__name__} has no adapters; call "
                         "add_adapters(model, config) first.")
    return record


def has_adapters(model: nn.Module) -> bool:
    """Whether `add_adapters` has put adapters into ``model``."""
    return getattr(model, "_cgc", None) is not None


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The `AdapterConfig` ``model``'s adapters were built from (peft's ``peft_config``).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    return injected(model, "adapter_config").config


class _Routing:
    """One level of routing: checked ids (or None), plus the copies the layers ask for."""

    __slots__ = ("ids", "from_context", "_on_device", "_expanded")

    def __init__(self, ids: Optional[torch.Tensor], from_context: bool = False):
        self.ids, self.from_context = ids, from_context
        self._on_device: dict = {}
        self._expanded: dict[int, torch.Tensor] = {}

    def on(self, device) -> torch.Tensor:
        ids = self._on_device.get(device)
        if ids is None:
            ids = self._on_device[device] = self.ids.to(device)
        return ids

    def for_batch(self, batch: Optional[int], where: str) -> torch.Tensor:
        """These ids for an inner forward of ``batch`` samples. Inside a task_context,
        generate() repeats each sample for beams or several return sequences
        (repeat_interleave): the ids are repeated the same way, once per batch size."""
        n = self.ids.shape[0]
        if batch is None or batch == n:
            return self.ids
        if self.from_context and n and batch % n == 0:
            ids = self._expanded.get(batch)
            if ids is None:
                ids = self._expanded[batch] = self.ids.repeat_interleave(batch // n)
            return ids
        raise ValueError(f"{where}: got {n} task ids for a batch of {batch} samples; "
                         "pass one task id per sample.")


class TaskRouter:
    """Resolves a model's task ids once per model forward and holds them for its adapted layers.

    The model's forward pre-hook (``model(..., task_ids=...)``), `task_context` and
    ``model.generate(..., task_ids=...)`` validate the ids once (`AdapterConfig.check_task_ids`),
    expand them for generate's beams, and push them here; every adapted layer then reads a
    ready LongTensor on its device (`ids_on`): no per-layer checks, no per-layer host sync.
    """

    def __init__(self, config: AdapterConfig, where: str):
        self.config, self.where = config, where
        self.layers: tuple = ()                  # set by add_adapters: the layers it routes
        self._stack: list[_Routing] = []         # contexts and forwards nest
        # Open disable_adapters blocks: while > 0 every layer answers with its base layer
        # (the one check CGCLoRALinear.forward makes) and forwards need no task ids.
        self.disabled = 0

    @property
    def merged_task(self) -> Optional[int]:
        """The task merged into the layers' weights, read from the layers themselves (one
        record of it: a layer merged on its own is seen too), None if none is."""
        for layer in self.layers:
            if layer.merged_task is not None:
                return layer.merged_task
        return None

    @property
    def task_ids(self) -> Optional[torch.Tensor]:
        """The ids in force now (None outside any forward or context)."""
        return self._stack[-1].ids if self._stack else None

    def ids_on(self, device) -> Optional[torch.Tensor]:
        """What a layer reads: the ids in force, on ``device`` (copied once per device)."""
        if not self._stack or self._stack[-1].ids is None:
            return None
        return self._stack[-1].on(device)

    def enter_context(self, task_ids) -> None:
        ids = self.config.check_task_ids(task_ids, where=f"task_context on {self.where}")
        check_merged(self.merged_task, ids, f"task_context on {self.where}")
        self._stack.append(_Routing(ids, from_context=True))

    def begin_forward(self, task_ids, batch: Optional[int]) -> None:
        """Resolve the ids of one model forward: the call's own, else the enclosing context's
        (expanded to the batch), else none (an error where the adapter needs them)."""
        self._stack.append(_Routing(None))  # end_forward pops it even when resolving raises
        outer = self._stack[-2] if len(self._stack) > 1 else None
        if self.disabled:   # disable_adapters: the bare base answers; ids are checked, not needed
            if task_ids is not None:
                self.config.check_task_ids(task_ids, batch, where=self.where)
            return
        if task_ids is not None:
            ids = self.config.check_task_ids(task_ids, batch, where=self.where)
            check_merged(self.merged_task, ids, self.where)
        elif outer is not None and outer.ids is not None:
            ids = outer.for_batch(batch, self.where)
        else:
            ids = None
            if self.merged_task is None:
                self.config.check_task_ids(None, batch, where=self.where)  # raises if ids are needed
        self._stack[-1] = _Routing(ids)

    def leave(self) -> None:
        self._stack.pop()

    def replaying(self, function):
        """``function`` bound to the routing in force now, for activation checkpointing: the
        backward pass runs a checkpointed block's forward again after the model's forward
        (and its routing) has ended; the replay restores the ids that forward saw, and
        whether `disable_adapters` was on (a backward after the block ends)."""
        routing = self._stack[-1] if self._stack else None
        disabled = self.disabled

        def replay(*args, **kwargs):
            if routing is None or (self._stack and self._stack[-1] is routing):
                return function(*args, **kwargs)       # the first run, inside the forward
            self._stack.append(routing)
            outer, self.disabled = self.disabled, disabled
            try:
                return function(*args, **kwargs)
            finally:
                self._stack.pop()
                self.disabled = outer
        return replay


class _RoutedCheckpoint:
    """Wraps a block's ``_gradient_checkpointing_func`` (transformers' activation
    checkpointing) so that the recomputed forward is routed as the first one was."""

    def __init__(self, router: TaskRouter, checkpoint):
        self.router, self.checkpoint = router, checkpoint

    def __call__(self, function, *args, **kwargs):
        return self.checkpoint(self.router.replaying(function), *args, **kwargs)


def _route_checkpointing(module, args):
    """Forward pre-hook of a block that transformers may checkpoint: wrap its checkpoint
    function (set whenever checkpointing is enabled, before or after add_adapters)."""
    func = getattr(module, "_gradient_checkpointing_func", None)
    if func is not None and not isinstance(func, _RoutedCheckpoint):
        module._gradient_checkpointing_func = _RoutedCheckpoint(module._cgc_block_router, func)


def _checkpointable_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]


def adapter_layers(model: nn.Module) -> dict[str, CGCLoRALinear]:
    """The adapted layers of a model, by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CGCLoRALinear)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _within(name: str, target: str) -> bool:
    """``name`` is the module ``target`` names, or inside it ("classifier.dense" in "classifier")."""
    parts = name.split(".")
    return any(_matches(".".join(parts[:i]), target) for i in range(1, len(parts) + 1))


def _adaptable_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """The layers cgc_edu can adapt (``nn.Linear`` and transformers' ``Conv1D``), by module
    name, with their (d_out, d_in)."""
    found = {}
    for name, module in model.named_modules():
        shape = _adaptable_shape(module) if name else None
        if shape is not None:
            found[name] = shape
    return found


def _find_saved_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """The modules ``config.modules_to_save`` names (outermost matches), checked."""
    if config.modules_to_save is None:
        return []
    names = [name for name, _ in model.named_modules() if name]
    found = []
    for wanted in config.modules_to_save:
        hits = [n for n in names if _matches(n, wanted)]
        if not hits:
            top = [n for n, _ in model.named_children()]
            raise ValueError(f"add_adapters: modules_to_save entry {wanted!r} matches no module of "
                             f"{type(model).__name__} (its top-level modules are {top}); name a "
                             "module or a dotted-name suffix, e.g. 'classifier'.")
        found += hits
    # A module inside another saved module is saved with it.
    return [n for n in dict.fromkeys(found) if not any(n != m and _within(n, m) for m in found)]


def _find_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    layers = list(_adaptable_layers(model))
    saved = _find_saved_modules(model, config)
    if config.target_modules is None:
        found = [n for n in layers if not any(_within(n, t) for t in DEFAULT_EXCLUDED + tuple(saved))]
        if not found:
            raise ValueError(f"add_adapters: {type(model).__name__} has no nn.Linear or Conv1D module "
                             "to adapt (output heads and modules_to_save excluded); cgc_edu adapts "
                             "those layers only.")
        return found
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in layers})
    for target in config.target_modules:
        if not any(_matches(n, target) for n in layers):
            raise ValueError(
                f"add_adapters: target module {target!r} matches no nn.Linear or Conv1D in "
                f"{type(model).__name__}; choose target_modules among {suffixes}.")
    found = [n for n in layers if any(_matches(n, t) for t in config.target_modules)]
    for name in found:
        clash = next((m for m in saved if _within(name, m)), None)
        if clash is not None:
            raise ValueError(f"add_adapters: {name!r} is both a target module and inside the module "
                             f"{clash!r} of modules_to_save; a module is either adapted or trained "
                             "whole: remove it from one of the two.")
    return found


def _batch_size(args, kwargs) -> Optional[int]:
    """The batch size of a model call: its input_ids / inputs_embeds, else its first tensor."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return None


def _route_forward(module, args, kwargs):
    module._cgc.router.begin_forward(kwargs.pop("task_ids", None), _batch_size(args, kwargs))
    return args, kwargs


def _end_forward(module, args, kwargs, output):
    module._cgc.router.leave()


def _generate_with_task_ids(self, *args, task_ids=None, **kwargs):
    """``model.generate(..., task_ids=...)``: generate inside a task_context."""
    if task_ids is None:
        return type(self).generate(self, *args, **kwargs)
    with task_context(self, task_ids):
        return type(self).generate(self, *args, **kwargs)


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and wrap its target layers (``nn.Linear``, transformers' ``Conv1D``)
    in CGCLoRALinear, in place; the config's ``modules_to_save`` are left trainable.

    A bfloat16 / float16 model keeps its dtype; its adapters are float32 (see CGCLoRALinear).
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
    saved = _find_saved_modules(model, config)
    _without_hub_kernels(model)
    requires_grad, originals = _freeze_base(model, saved)
    router = TaskRouter(config, where=f"{type(model).__name__} (adapters on {len(targets)} "
                                      f"modules, first {targets[0]})")
    router.layers = _wrap_targets(model, targets, config, router)
    # The config is frozen, so the one the model carries cannot change behind its back.
    record = model._cgc = Injected(config, router, requires_grad, originals)
    _install_routing(model, record)
    return model


def _freeze_base(model: nn.Module, saved: list) -> tuple[list, dict]:
    """Freeze every parameter but those of the ``modules_to_save``, which train in place.

    Returns (each parameter with its ``requires_grad`` before, the original weights of the
    modules_to_save by name): what `remove_adapters` puts back."""
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    originals = {}
    for name in saved:
        module = model.get_submodule(name)
        originals[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for p in module.parameters():
            p.requires_grad_(True)
    return requires_grad, originals


def _wrap_targets(model: nn.Module, targets: list, config: AdapterConfig,
                  router: "TaskRouter") -> tuple:
    """Replace each target layer by a CGCLoRALinear around it that reads ``router``; with
    ``config.shared_gate`` they all share one gate. Returns the new layers in order."""
    shared = None
    if config.shared_gate:
        first = model.get_submodule(targets[0])
        shared = TaskGate(config).to(first.weight.device)
    layers = []
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = CGCLoRALinear(base, config, gate=shared, name=name)
        layer.train(base.training)   # an eval model stays in eval: no adapter dropout
        layer.router = router
        setattr(parent, child, layer)
        layers.append(layer)
    return tuple(layers)


def _install_routing(model: nn.Module, record: Injected) -> None:
    """The hooks that carry ``task_ids=`` from a model call (and through activation
    checkpointing) to the router, and ``model.generate(..., task_ids=...)``."""
    record.hooks = (
        model.register_forward_pre_hook(_route_forward, with_kwargs=True),
        model.register_forward_hook(_end_forward, with_kwargs=True, always_call=True),
    )
    for block in _checkpointable_blocks(model):
        block._cgc_block_router = record.router
        record.hooks += (block.register_forward_pre_hook(_route_checkpointing),)
    if callable(getattr(type(model), "generate", None)) and "generate" not in vars(model):
        # A bound method (not a closure) so that copy.deepcopy(model) rebinds it to the copy.
        model.generate = types.MethodType(_generate_with_task_ids, model)


def _without_hub_kernels(model: nn.Module) -> None:
    """Undo transformers' hub-kernel replacement (on by default in ``from_pretrained`` since
    transformers 5.25 when the ``kernels`` package is installed): a kernelized block runs a
    fused forward that may never call the Linear layers the adapters wrap, and ``train()``
    would kernelize again. Models built in cgc_edu load with ``use_kernels=False`` anyway."""
    if getattr(model, "use_kernels", False):
        model.use_kernels = False  # transformers' setter restores the torch forwards


def _router(model: nn.Module, caller: str) -> TaskRouter:
    return injected(model, caller).router


def remove_adapters(model: nn.Module) -> nn.Module:
    """Undo `add_adapters` in place and return the bare base model.

    A merged task is unmerged first; each adapted layer is replaced by its original
    ``nn.Linear`` / ``Conv1D`` (the same module, with its original weights); the
    ``modules_to_save`` get their original weights back; the routing hooks, the ``generate``
    wrapper and the adapter attributes go; every parameter's ``requires_grad`` is what it was
    before `add_adapters`.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    record = injected(model, "remove_adapters")
    unmerge(model)
    for name, layer in adapter_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base_layer)
    for name, state in record.saved_originals.items():
        model.get_submodule(name).load_state_dict(state)
    for handle in record.hooks:
        handle.remove()
    for block in _checkpointable_blocks(model):
        func = getattr(block, "_gradient_checkpointing_func", None)
        if isinstance(func, _RoutedCheckpoint):
            block._gradient_checkpointing_func = func.checkpoint
        vars(block).pop("_cgc_block_router", None)
    for p, flag in record.requires_grad:
        p.requires_grad_(flag)
    if isinstance(vars(model).get("generate"), types.MethodType) and \
            vars(model)["generate"].__func__ is _generate_with_task_ids:
        del model.generate
    del model._cgc
    return model


@contextlib.contextmanager
def task_context(model: nn.Module, task_ids) -> Iterator[nn.Module]:
    """Route every forward inside the block (``model.generate`` too) with ``task_ids``.

    ``task_ids``: LongTensor of shape (batch,), one task per sample. The ids are checked once,
    on entry, so a bad id fails before any forward runs; generate's beams or several return
    sequences get the ids repeated to match.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    router = _router(model, "task_context")
    router.enter_context(task_ids)
    try:
        yield model
    finally:
        router.leave()


def merge_task(model: nn.Module, task_id: int) -> nn.Module:
    """Fold task ``task_id``'s adapter into every adapted layer's W0 (serving at base speed).

    A safe merge (peft's ``merge(safe_merge=True)``), all or nothing: every layer's dW_t and
    W0 + dW_t is computed and checked first; a NaN or inf in any of them raises a ValueError
    naming the module, the task and the fix, and no weight has been written (each delta is
    computed twice, once to check and once to merge: a merge is rare, memory is kept flat).
    Refused inside `disable_adapters` (the merged delta would reach the bare base).

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """
    task_id = _task_index(model, task_id, "merge_task")
    if injected(model, "merge_task").router.disabled:
        raise ValueError("merge_task: the model is inside `with disable_adapters(model):`, which runs "
                         "the bare base; merge after the block.")
    layers = adapter_layers(model)
    shared = next((l.shared_base for l in layers.values() if l.shared_base is not None), None)
    if shared is not None:
        raise ValueError(f"merge_task: {shared}")
    merged = {l.merged_task for l in layers.values()} - {None}
    if merged:
        raise ValueError(f"merge_task: task {merged.pop()} is already merged into "
                         f"{type(model).__name__}; call unmerge(model) first.")
    check_finite_merge(layers, task_id, "merge_task")     # before any weight is written
    for layer in layers.values():
        layer.merge(task_id)
    return model


def _non_finite(tensor: torch.Tensor) -> Optional[str]:
    """"NaN" or "inf" if ``tensor`` holds one (NaN first), else None."""
    if bool(torch.isfinite(tensor).all()):
        return None
    return "NaN" if bool(torch.isnan(tensor).any()) else "inf"


@torch.no_grad()
def check_finite_merge(layers: dict[str, CGCLoRALinear], task_id: int, caller: str) -> None:
    """Raise a ValueError (naming ``caller``, the module, the task and the fix) if task
    ``task_id``'s delta dW_t, or W0 + dW_t as `add_delta` would store it (in W0's dtype and
    layout), holds a NaN or an inf in any of ``layers`` (by module name). Writes nothing.
    The check of every merge: `merge_task`, `merged_copy`, 1+N's hot copy."""
    for name, layer in layers.items():
        delta = layer.delta_weight(task_id)
        bad = _non_finite(delta)
        if bad is not None:
            tensors = {"lora_A": layer.lora_A, "lora_B": layer.lora_B,
                       **{f"gate.{k}": v for k, v in layer.gate.named_parameters()}}
            holders = {k: kind for k, v in tensors.items() if (kind := _non_finite(v))}
            why = (f"the adapter's weights hold {' and '.join(sorted(set(holders.values())))} "
                   f"({', '.join(holders)})" if holders
                   else f"dW_t overflows to {bad} (scaling={layer.scaling:g})")
            raise ValueError(f"{caller}: task {task_id}'s delta dW_t in module {name!r} is not "
                             f"finite: {why}; retrain the adapter or load a clean checkpoint "
                             "(load_adapters). Nothing was merged.")
        weight = layer.base_layer.weight
        bad = _non_finite(weight)
        if bad is not None:
            raise ValueError(f"{caller}: module {name!r}'s base weight W0 already holds {bad}, so "
                             f"W0 + dW_t of task {task_id} cannot be finite; reload the base model. "
                             "Nothing was merged.")
        merged = weight.to(delta.dtype) + (delta.T if layer.fan_in_fan_out else delta)
        bad = _non_finite(merged.to(weight.dtype))
        if bad is not None:
            raise ValueError(f"{caller}: W0 + dW_t of task {task_id} in module {name!r} overflows to "
                             f"{bad} in W0's dtype {weight.dtype}: the adapter's weights are too large "
                             "to merge; serve it unmerged (task_ids) or retrain it with a smaller "
                             "learning rate. Nothing was merged.")


def _task_index(model: nn.Module, task_id, caller: str) -> int:
    """``task_id`` as a checked int (a 0-d tensor is fine), for merging one task."""
    config = injected(model, caller).config
    if isinstance(task_id, torch.Tensor):
        task_id = task_id.item()
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        n = config.n_tasks
        raise TypeError(f"{caller}: task_id={task_id!r} must be an int in "
                        f"[0, {n - 1}].")
    config.check_task_ids(torch.tensor([task_id]), where=caller)
    return task_id


def merged_copy(model: nn.Module, task_id: int) -> nn.Module:
    """A plain copy of ``model`` for task ``task_id`` alone: W0 + dW_t in every adapted
    weight (in W0's layout: GPT-2's Conv1D too), the adapters, hooks and routing gone,
    the base model's own type; ``modules_to_save`` keep their trained weights. peft's
    ``merge_and_unload`` for one task, but ``model`` itself is left as it is: its
    adapters serve every task. It runs at the base model's speed and needs no ids.
    Refuses non-finite weights as `merge_task` does (a ValueError; no copy is returned).
    """
    task_id = _task_index(model, task_id, "merged_copy")
    plain = unmerge(copy.deepcopy(model))        # the copy's weights are its own
    check_finite_merge(adapter_layers(plain), task_id, "merged_copy")
    trained = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
               for name, m in _saved_modules(plain).items()}
    with torch.no_grad():
        for layer in adapter_layers(plain).values():
            add_delta(layer.base_layer.weight, layer.delta_weight(task_id), +1,
                      layer.fan_in_fan_out)
    remove_adapters(plain)   # nothing is merged in the layers' books: W0 + dW_t stays
    for name, state in trained.items():
        plain.get_submodule(name).load_state_dict(state)
    return plain


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge_task`: subtract the merged adapter from every W0.

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """
    record = injected(model, "unmerge")     # a model with adapters, or a clear error
    record.put_aside.clear()   # inside disable_adapters: the model leaves the block unmerged
    for layer in adapter_layers(model).values():
        layer.unmerge()
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the bare base model inside the block (peft's ``disable_adapter()``):

        with disable_adapters(model):
            base_logits = model(input_ids).logits      # or model.generate(...)

    Every adapted layer answers W0 x + b alone: no task ids are needed (ids given are checked,
    then ignored), the adapters stay in place with their weights untouched, and they answer
    again when the block ends, also when it raises. Blocks nest (the outermost one counts).
    It is a flag the layers check (``TaskRouter.disabled``), not a swap of modules.

    A merged task: the block runs the bare W0, as peft does (its disabled layers unmerge
    themselves): the bare base is what the block asks for, whether or not a task was merged
    for speed, so refusing would only make the caller unmerge and merge again. On entry each
    merged layer's weight is put aside and the layer unmerged; on exit the weight is put back
    bit for bit and the task is merged again (peft leaves its layers unmerged). That costs one
    copy of the merged weights while the block runs. Inside the block `merge_task` refuses
    (its delta would reach the bare base) and ``unmerge(model)`` drops the put-aside merge,
    so the model leaves the block unmerged.

    1+N: each adapter set of a ``OnePlusN`` and its ``serving_model()`` are models with
    adapters, so the block works on them; a OnePlusN already answers a request that names
    no task with its central model.
    """
    record = injected(model, "disable_adapters")
    router = record.router
    router.disabled += 1
    try:
        if router.disabled == 1:    # the outermost block runs the bare W0
            with torch.no_grad():
                for layer in adapter_layers(model).values():
                    if layer.merged_task is not None:
                        record.put_aside.append((layer, layer.merged_task,
                                                 layer.base_layer.weight.detach().clone()))
                        layer.unmerge()
        yield model
    finally:
        router.disabled -= 1
        if not router.disabled:     # the outermost block puts the merges back, bit for bit
            with torch.no_grad():
                for layer, task, weight in record.put_aside:
                    layer.base_layer.weight.copy_(weight)
                    layer.merged_task = task
            record.put_aside.clear()


def _saved_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ``modules_to_save`` (trained whole, saved with the adapters), by name."""
    record = getattr(model, "_cgc", None)
    names = record.saved_originals if record is not None else {}
    return {name: model.get_submodule(name) for name in names}


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
