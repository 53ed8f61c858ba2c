"""The adapter method: one layer family of low-rank experts behind a task-motivated gate, of
which LoRA, independent LoRAs, MoE-LoRA and CGC-LoRA are points.

- `config`: `AdapterConfig` (the point of the family), `ExpertLayout` (which experts a
  task may use), `adapter_parameter_count` (the methods' one vocabulary
  is `cgc_edu.methods`);
- `layer`: `CGCLoRALinear`, the math on one module (training and serving paths, merging);
- `injection`: `add_adapters` finds and wraps the target modules (`adapter_config` reads the
  config back), `task_context` carries the
  task ids to every layer, `merge_task` / `unmerge`, `merged_copy` (a plain model for
  one task, as peft's ``merge_and_unload``; both refuse non-finite weights),
  `disable_adapters` (the bare base, adapters kept: peft's ``disable_adapter()``);
- `saving`: `save_adapters` / `load_adapters` (safetensors + JSON) and `export_peft_lora`.
"""
from .config import AdapterConfig, ExpertLayout, adapter_parameter_count
from .injection import (
                        adapter_config,
                        adapter_layers,
                        add_adapters,
                        disable_adapters,
                        merge_task,
                        merged_copy,
                        remove_adapters,
                        task_context,
                        trainable_parameters,
                        unmerge,
)
from .layer import CGCLoRALinear, TaskGate
from .saving import export_peft_lora, load_adapters, read_adapter_config, save_adapters

__all__ = ["AdapterConfig", "ExpertLayout", "adapter_parameter_count", "CGCLoRALinear",
           "TaskGate", "add_adapters", "remove_adapters", "adapter_layers", "adapter_config",
           "task_context", "merge_task", "merged_copy", "unmerge", "disable_adapters",
           "trainable_parameters", "save_adapters", "load_adapters",
           "read_adapter_config", "export_peft_lora"]
