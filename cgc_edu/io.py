"""Saving, loading and exporting adapters: safetensors plus a JSON config, never pickle.

`export_peft_lora` writes one task's adapter as a plain LoRA that Hugging Face peft loads:
because the gate depends only on the task id, task t's adapter is the fixed low-rank matrix

    dW_t = (alpha / r) * B_cat · diag(g_t repeated r_e times) · A_cat

of rank k = |S_t|·r_e. peft computes (lora_alpha / k) · B' A', so with B' = B_cat·diag(g_t)
restricted to S_t's rows, A' = those rows of A_cat, and lora_alpha = alpha · k / r the two agree.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdapterConfig
from .injection import _find_targets, _router, add_adapters, adapter_layers

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "cgc_edu-adapters"


def _model_config(model: nn.Module, caller: str) -> AdapterConfig:
    _router(model, caller)  # raises the "no adapters" error
    return model._cgc_config


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter and gate tensor by a stable name; a shared gate is stored once."""
    tensors, config = {}, model._cgc_config
    for name, layer in adapter_layers(model).items():
        tensors[f"{name}.lora_A"] = layer.lora_A
        tensors[f"{name}.lora_B"] = layer.lora_B
        if layer.gate.learned:
            prefix = "shared_gate" if config.shared_gate else f"{name}.gate"
            tensors[f"{prefix}.task_embedding"] = layer.gate.task_embedding
            tensors[f"{prefix}.weight"] = layer.gate.weight
    return tensors


def save_adapters(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write the adapters of ``model`` to the folder ``path`` (adapters.safetensors + adapter_config.json).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    config = _model_config(model, "save_adapters")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = adapter_layers(model)
    meta = {
        "format": FORMAT, "version": 1, "config": config.to_dict(),
        "modules": {n: [l.out_features, l.in_features] for n, l in layers.items()},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in _adapter_tensors(model).items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": FORMAT})
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_adapter_config(path: Union[str, Path], caller: str = "load_adapters") -> tuple[AdapterConfig, dict]:
    """(AdapterConfig, {module: (d_out, d_in)}) from the adapter_config.json that `save_adapters`
    wrote in the folder ``path``; a missing or corrupt file raises a clear error naming ``caller``.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{caller}: {cfg_file} not found; pass the folder that "
                                "save_adapters(model, path) wrote.")
    try:
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}")
        config = AdapterConfig.from_dict(meta["config"])
        modules = {k: tuple(v) for k, v in meta["modules"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{caller}: {cfg_file} is not a valid cgc_edu adapter config ({err!r}); "
                         "re-save it with save_adapters.") from err
    return config, modules


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config, modules = read_adapter_config(path)
    weights_file = path / WEIGHTS_NAME
    if not weights_file.is_file():
        raise FileNotFoundError(f"load_adapters: {weights_file} not found; pass the folder that "
                                "save_adapters(model, path) wrote.")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"load_adapters: {weights_file} is corrupt or not a safetensors file ({err}); "
                         "re-save it with save_adapters.") from err
    return {"config": config, "modules": modules}, tensors


def _expected_shapes(config: AdapterConfig, modules: dict) -> dict[str, tuple]:
    E, r_e, d = config.n_experts, config.expert_rank, config.gate_dim
    shapes = {}
    for name, (d_out, d_in) in modules.items():
        shapes[f"{name}.lora_A"] = (E, r_e, d_in)
        shapes[f"{name}.lora_B"] = (E, d_out, r_e)
        if config.has_learned_gate:
            prefix = "shared_gate" if config.shared_gate else f"{name}.gate"
            shapes[f"{prefix}.task_embedding"] = (config.n_tasks, d)
            shapes[f"{prefix}.weight"] = (E, d)
    return shapes


def load_adapters(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load adapters saved by `save_adapters` into ``model`` and return it.

    ``model`` is either the bare base model (adapters are added from the saved config) or a
    model with matching adapters. Everything is checked before anything changes: a corrupt
    file, another config, or a base of other shapes raises and leaves the model as it was.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    path = Path(path)
    meta, tensors = _read(path)
    config, modules = meta["config"], meta["modules"]
    expected = _expected_shapes(config, modules)
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"load_adapters: {path / WEIGHTS_NAME} does not match its config "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); re-save it with save_adapters.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"load_adapters: tensor {key} has shape {tuple(tensors[key].shape)}, "
                             f"expected {shape}; the file is corrupt: re-save it with save_adapters.")
    existing = adapter_layers(model)
    if existing:
        have = model._cgc_config
        if have.to_dict() != config.to_dict():
            raise ValueError(f"load_adapters: the model's adapters have config {have.to_dict()}, the file "
                             f"has {config.to_dict()}; load onto a bare base model or one adapted with the "
                             "same AdapterConfig.")
        shapes = {n: (l.out_features, l.in_features) for n, l in existing.items()}
    else:
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        shapes = {n: (m.out_features, m.in_features) for n, m in linears.items() if n in modules}
    for name, shape in modules.items():
        if name not in shapes:
            raise ValueError(f"load_adapters: module {name!r} of the saved adapters is not an nn.Linear "
                             f"of {type(model).__name__}; load onto the base model they were trained on.")
        if shapes[name] != shape:
            raise ValueError(f"load_adapters: module {name!r} is {shapes[name][1]}->{shapes[name][0]} in "
                             f"{type(model).__name__} but {shape[1]}->{shape[0]} in the saved adapters; "
                             "load onto a base model of the same shapes.")
    if not existing:
        targets = set(_find_targets(model, config))
        if targets != set(modules):
            raise ValueError(f"load_adapters: the saved config adapts {sorted(modules)[:4]}..., but on "
                             f"{type(model).__name__} it selects {sorted(targets)[:4]}...; load onto the "
                             "base model they were trained on.")
        add_adapters(model, config)
    params = _adapter_tensors(model)
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value.to(params[key].dtype))
    return model


def export_peft_lora(model: nn.Module, task_id: int, path: Union[str, Path],
                     base_model_name_or_path: str | None = None) -> Path:
    """Write task ``task_id``'s adapter as a plain peft LoRA (adapter_model.safetensors + adapter_config.json).

    ``peft.PeftModel.from_pretrained(base_model, path)`` then gives the same outputs as this
    model does for that task.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    from peft import LoraConfig  # imported here: peft is only needed for export

    config = _model_config(model, "export_peft_lora")
    layers = adapter_layers(model)
    first = next(iter(layers.values()))
    ids = first.check_task_ids(torch.tensor([int(task_id)]))
    k = first.rows.shape[1]
    tensors = {}
    with torch.no_grad():
        for name, layer in layers.items():
            rows = layer.rows[ids[0]]
            g = layer.gate(ids)[0][layer.allowed[ids[0]]].repeat_interleave(layer.expert_rank)
            A, B = layer._stacked()
            tensors[f"base_model.model.{name}.lora_A.weight"] = A[rows].contiguous().cpu()
            tensors[f"base_model.model.{name}.lora_B.weight"] = (B[:, rows] * g).contiguous().cpu()
    is_causal_lm = hasattr(model, "generate") and hasattr(model, "config")
    peft_config = LoraConfig(
        r=k, lora_alpha=config.alpha * k / config.rank, lora_dropout=0.0, bias="none",
        target_modules=sorted(layers), task_type="CAUSAL_LM" if is_causal_lm else None,
        base_model_name_or_path=base_model_name_or_path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(path))
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    return path
