"""cgc_edu: a teaching toolkit for multi-task parameter-efficient fine-tuning.

LoRA -> mixture of experts -> CGC-LoRA (Song et al. 2024, arXiv 2402.01684) and the
paper's "1+N" pattern: one central model plus N adapter sets, one per cluster of tasks.
"""
# The public names: the adapter method's (cgc_edu.adapters), importable from the top.
from .adapters import (AdapterConfig, CGCLoRALinear, ExpertLayout, TaskGate, adapter_config,
                       adapter_layers,
                       add_adapters, disable_adapters, export_peft_lora, load_adapters, merge_task,
                       merged_copy, remove_adapters, save_adapters, task_context,
                       trainable_parameters, unmerge)

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig", "ExpertLayout", "CGCLoRALinear", "TaskGate", "add_adapters", "remove_adapters",
    "adapter_layers", "adapter_config",
    "task_context", "merge_task", "merged_copy", "unmerge", "disable_adapters", "trainable_parameters",
    "save_adapters", "load_adapters", "export_peft_lora",
]
