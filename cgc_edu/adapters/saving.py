"""Saving, loading and exporting adapters: safetensors plus a JSON config, never pickle.

`export_peft_lora` writes one task's adapter as a plain LoRA that Hugging Face peft
loads: as the gate depends only on the task id, task t's adapter is one LoRA B_t A_t of
rank k = |S_t|·r_e, gate and scaling folded into B_t (`CGCLoRALinear.task_lora`).
peft computes (lora_alpha / k) · B' A': B' = B_t, A' = A_t and lora_alpha = k agree.

cgc_edu's own folder holds ``adapters.safetensors`` and ``cgc_adapter_config.json``, not
peft's ``adapter_config.json``, whose schema is another: peft pointed at the folder says
it finds no adapter_config.json instead of misreading ours. Folders written before
(with that name) are still read.

Tensors are written in the adapter's dtype (float32 over a bfloat16 / float16 base, as peft
keeps them). Over GPT-2's ``Conv1D`` layers the export sets peft's ``fan_in_fan_out=True``
(peft's lora_A / lora_B have the same shapes either way). ``modules_to_save`` (a classifier
head) are saved whole, under the names peft uses for its own ``modules_to_save``.

Taught in: notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils import read_manifest
from .config import AdapterConfig
from .injection import (
    _adaptable_layers,
    _find_saved_modules,
    _find_targets,
    injected,
    _saved_modules,
    adapter_layers,
    add_adapters,
)

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "cgc_adapter_config.json"
LEGACY_CONFIG_NAME = "adapter_config.json"   # before issue 26: peft's own file name
FORMAT = "cgc_edu-adapters"
SAVED_PREFIX = "modules_to_save."


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter and gate tensor by a stable name; a shared gate is stored once."""
    tensors, config = {}, injected(model, "save_adapters").config
    for name, layer in adapter_layers(model).items():
        tensors[f"{name}.lora_A"] = layer.lora_A
        tensors[f"{name}.lora_B"] = layer.lora_B
        if layer.gate.learned:
            prefix = "shared_gate" if config.shared_gate else f"{name}.gate"
            tensors[f"{prefix}.task_embedding"] = layer.gate.task_embedding
            tensors[f"{prefix}.weight"] = layer.gate.weight
    for name, module in _saved_modules(model).items():
        for key, value in module.state_dict().items():  # views of the module's own tensors
            tensors[f"{SAVED_PREFIX}{name}.{key}"] = value
    return tensors


def save_adapters(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write the adapters of ``model`` to the folder ``path`` (adapters.safetensors +
    cgc_adapter_config.json).

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    config = injected(model, "save_adapters").config   # raises the "no adapters" error
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = adapter_layers(model)
    meta = {
        "format": FORMAT, "version": 1, "config": config.to_dict(),
        "modules": {n: [l.out_features, l.in_features] for n, l in layers.items()},
        "modules_to_save": {n: {k: list(v.shape) for k, v in m.state_dict().items()}
                            for n, m in _saved_modules(model).items()},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in _adapter_tensors(model).items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": FORMAT})
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def _config_file(path: Union[str, Path]) -> Path:
    """The folder's cgc_edu config: its own name, else the legacy one (peft's name)."""
    own, legacy = Path(path) / CONFIG_NAME, Path(path) / LEGACY_CONFIG_NAME
    return legacy if legacy.is_file() and not own.is_file() else own


def read_adapter_config(path: Union[str, Path], caller: str = "load_adapters") -> tuple[AdapterConfig, dict]:
    """(AdapterConfig, {module: (d_out, d_in)}) from the cgc_adapter_config.json that
    `save_adapters` wrote in the folder ``path`` (older folders: adapter_config.json); a
    missing or corrupt file raises a clear error naming ``caller``. (The shapes of the
    ``modules_to_save`` are in the file's "modules_to_save" entry.)
    """
    def parse(meta):
        return (AdapterConfig.from_dict(meta["config"]),
                {k: tuple(v) for k, v in meta["modules"].items()})

    return read_manifest(_config_file(path), FORMAT, parse, caller=caller,
                         kind="cgc_edu adapter config", writer="save_adapters(model, path)",
                         fix="re-save it with save_adapters")


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config, modules = read_adapter_config(path)
    cfg_file = _config_file(path)
    try:
        entries = json.loads(cfg_file.read_text()).get("modules_to_save", {})
        saved = {n: {k: tuple(v) for k, v in e.items()} for n, e in entries.items()}
    except (AttributeError, TypeError) as err:
        raise ValueError(f"load_adapters: {cfg_file} has a corrupt modules_to_save "
                         f"entry ({err!r}); re-save it with save_adapters.") from err
    weights_file = path / WEIGHTS_NAME
    if not weights_file.is_file():
        raise FileNotFoundError(f"load_adapters: {weights_file} not found; pass the folder that "
                                "save_adapters(model, path) wrote.")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"load_adapters: {weights_file} is corrupt or not a safetensors file ({err}); "
                         "re-save it with save_adapters.") from err
    return {"config": config, "modules": modules, "saved": saved}, tensors


def _expected_shapes(config: AdapterConfig, modules: dict, saved: dict) -> dict[str, tuple]:
    E, r_e, d = config.n_experts, config.expert_rank, config.gate_dim
    shapes = {}
    for name, (d_out, d_in) in modules.items():
        shapes[f"{name}.lora_A"] = (E, r_e, d_in)
        shapes[f"{name}.lora_B"] = (E, d_out, r_e)
        if config.has_learned_gate:
            prefix = "shared_gate" if config.shared_gate else f"{name}.gate"
            shapes[f"{prefix}.task_embedding"] = (config.n_tasks, d)
            shapes[f"{prefix}.weight"] = (E, d)
    for name, entries in saved.items():
        for key, shape in entries.items():
            shapes[f"{SAVED_PREFIX}{name}.{key}"] = shape
    return shapes


def load_adapters(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load adapters saved by `save_adapters` into ``model`` and return it.

    ``model`` is either the bare base model (adapters are added from the saved config) or a
    model with matching adapters. Everything is checked before anything changes: a corrupt
    file, another config, or a base of other shapes raises and leaves the model as it was.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    path = Path(path)
    meta, tensors = _read(path)
    config, modules, saved = meta["config"], meta["modules"], meta["saved"]
    _check_tensors(path, tensors, _expected_shapes(config, modules, saved))
    existing = bool(adapter_layers(model))
    _check_fits(model, config, modules, saved)
    if not existing:
        add_adapters(model, config)
    params = _adapter_tensors(model)
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value.to(params[key].dtype))
    return model


def _check_tensors(path: Path, tensors: dict, expected: dict) -> None:
    """The saved tensors are those the saved config names, of the shapes it implies."""
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"load_adapters: {path / WEIGHTS_NAME} does not match its config "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); re-save it with save_adapters.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"load_adapters: tensor {key} has shape {tuple(tensors[key].shape)}, "
                             f"expected {shape}; the file is corrupt: re-save it with save_adapters.")


def _check_fits(model: nn.Module, config: AdapterConfig, modules: dict, saved: dict) -> None:
    """The saved adapters fit ``model``: its adapters have the same config (or it has none
    and the config selects the saved modules on it), and every adapted module and
    module_to_save has the saved shapes. Raises, naming the fix, before anything changes."""
    existing = adapter_layers(model)
    if existing:
        have = injected(model, "load_adapters").config
        if have.to_dict() != config.to_dict():
            raise ValueError(f"load_adapters: the model's adapters have config {have.to_dict()}, the file "
                             f"has {config.to_dict()}; load onto a bare base model or one adapted with the "
                             "same AdapterConfig.")
        shapes = {n: (l.out_features, l.in_features) for n, l in existing.items()}
        saved_here = list(_saved_modules(model))
    else:
        shapes = {n: s for n, s in _adaptable_layers(model).items() if n in modules}
        try:
            saved_here = _find_saved_modules(model, config)
        except ValueError as err:
            raise ValueError(f"load_adapters: {err}; load onto the base model they were trained on.") from None
    _check_module_shapes(model, modules, shapes)
    _check_saved_modules(model, saved, saved_here)
    if not existing:
        targets = set(_find_targets(model, config))
        if targets != set(modules):
            raise ValueError(f"load_adapters: the saved config adapts {sorted(modules)[:4]}..., but on "
                             f"{type(model).__name__} it selects {sorted(targets)[:4]}...; load onto the "
                             "base model they were trained on.")


def _check_module_shapes(model: nn.Module, modules: dict, shapes: dict) -> None:
    """Each saved module is an adaptable layer of ``model`` (``shapes``) of the saved shape."""
    for name, shape in modules.items():
        if name not in shapes:
            raise ValueError(f"load_adapters: module {name!r} of the saved adapters is not an nn.Linear "
                             f"or Conv1D of {type(model).__name__}; load onto the base model they were "
                             "trained on.")
        if shapes[name] != shape:
            raise ValueError(f"load_adapters: module {name!r} is {shapes[name][1]}->{shapes[name][0]} in "
                             f"{type(model).__name__} but {shape[1]}->{shape[0]} in the saved adapters; "
                             "load onto a base model of the same shapes.")


def _check_saved_modules(model: nn.Module, saved: dict, saved_here: list) -> None:
    """The file's modules_to_save are ``model``'s (``saved_here``), with the same tensor shapes."""
    if sorted(saved_here) != sorted(saved):
        raise ValueError(f"load_adapters: the file saves the modules {sorted(saved)} whole, but on "
                         f"{type(model).__name__} modules_to_save selects {sorted(saved_here)}; load onto "
                         "the base model they were trained on.")
    for name in saved_here:
        have = {k: tuple(v.shape) for k, v in model.get_submodule(name).state_dict().items()}
        if have != saved[name]:
            raise ValueError(f"load_adapters: module {name!r} has tensors {have} in {type(model).__name__} "
                             f"but {saved[name]} in the saved adapters; load onto a base model of the "
                             "same shapes.")


def export_peft_lora(model: nn.Module, task_id: int, path: Union[str, Path],
                     base_model_name_or_path: str | None = None) -> Path:
    """Write task ``task_id``'s adapter as a plain peft LoRA (adapter_model.safetensors + adapter_config.json).

    ``peft.PeftModel.from_pretrained(base_model, path)`` then gives the same outputs as this
    model does for that task (up to rounding in the base's dtype). Conv1D layers (GPT-2) are
    exported with ``fan_in_fan_out=True``; ``modules_to_save`` go with the adapter.

    Taught in: notebooks/09_your_model.ipynb.
    """
    from peft import LoraConfig  # imported here: peft is only needed for export

    injected(model, "export_peft_lora")   # raises the "no adapters" error
    layers = adapter_layers(model)
    ids = next(iter(layers.values())).check_task_ids(torch.tensor([int(task_id)]))
    tensors = {}
    with torch.no_grad():
        for name, layer in layers.items():
            A_t, Bt_t = layer.task_lora(ids.to(layer.allowed.device))
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = A_t[0].contiguous().cpu()
            tensors[f"{prefix}.lora_B.weight"] = Bt_t[0].T.contiguous().cpu()
        saved = _saved_modules(model)
        for name, module in saved.items():
            for key, value in module.state_dict().items():
                tensors[f"base_model.model.{name}.{key}"] = value.detach().contiguous().cpu()
    k = A_t.shape[1]   # |S_t| r_e
    is_causal_lm = hasattr(model, "generate") and hasattr(model, "config")
    peft_config = LoraConfig(
        r=k, lora_alpha=k, lora_dropout=0.0, bias="none",   # scaling 1: folded into B_t
        target_modules=sorted(layers), task_type="CAUSAL_LM" if is_causal_lm else None,
        fan_in_fan_out=any(layer.fan_in_fan_out for layer in layers.values()),
        modules_to_save=sorted(saved) or None,
        base_model_name_or_path=base_model_name_or_path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(path))
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    return path
