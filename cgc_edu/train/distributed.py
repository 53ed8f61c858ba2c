"""Adapters trained with ``transformers.Trainer``, on one process or many (DDP, FSDP, DeepSpeed).

Task ids reach the adapters through the batch: ``TinyTasksCollator`` returns ``task_ids``
next to ``input_ids`` and ``labels``; Trainer hands the whole batch to ``model(**batch)``,
and the forward hook that ``add_adapters`` installs takes ``task_ids=`` out of the call.
Two settings make that work: ``remove_unused_columns=False`` (otherwise Trainer drops the
prompt / target / task_id columns before the collator sees them, because the model's
``forward`` does not name them), and a collator that leaves tensors on the CPU (Trainer
moves each batch to its process's device).

Under ``torchrun`` or ``accelerate launch`` Trainer wraps the model in
DistributedDataParallel: each process reads its own shard of the data and the gradients
of the adapters are averaged, so every process ends with the same adapter weights. Run
this module to see it::

    torchrun --nproc_per_node 2 -m cgc_edu.train.distributed --output-dir runs/ddp --steps 30
    accelerate launch --num_processes 2 -m cgc_edu.train.distributed --output-dir runs/ddp

Each process saves its adapters to ``OUTPUT_DIR/rank<R>/`` and its logged losses to
``OUTPUT_DIR/rank<R>/losses.json``. On CPUs the processes talk over gloo; on GPUs over
NCCL (the default). FSDP and DeepSpeed are chosen by the launcher's config
(``accelerate config``) or Trainer's ``fsdp=`` / ``deepspeed=`` arguments, passed here as
``training_args``.

Taught in: notebooks/09_your_model.ipynb
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import Trainer, TrainingArguments

from ..adapters.config import AdapterConfig
from ..adapters.injection import add_adapters
from ..adapters.saving import save_adapters
from ..data.tinytasks import TinyTasksCollator, build_tokenizer, make_tiny_tasks
from ..models.central import load_central_model
from ..utils import seed_everything


def adapter_trainer(model, train_dataset, tokenizer, output_dir, steps: int = 100,
                    lr: float = 3e-3, batch_size: int = 16, seed: int = 0,
                    **training_args) -> Trainer:
    """A ``transformers.Trainer`` that trains a model with adapters on a multi-task dataset.

    ``train_dataset`` has the columns prompt, target and task_id (a TinyTasks split, or
    what ``cgc_edu.train.finetune.load_task_data`` reads); ``batch_size`` is per process. The
    arguments that routing needs are fixed (``remove_unused_columns=False``, the task-id
    collator); any other ``TrainingArguments`` field can be passed as a keyword (e.g.
    ``bf16=True``, ``gradient_accumulation_steps=4``, ``fsdp="full_shard"``,
    ``deepspeed="ds_config.json"``). On a machine without a GPU the processes use gloo.

    Taught in: notebooks/09_your_model.ipynb
    """
    # Every adapter parameter takes part in every forward (a task's unused experts get zero
    # gradients, not none), so DDP need not search the graph for unused ones.
    defaults = dict(report_to=[], save_strategy="no", logging_steps=max(1, steps // 10),
                    disable_tqdm=True, lr_scheduler_type="linear", warmup_steps=0,
                    weight_decay=0.0, ddp_find_unused_parameters=False)
    if not torch.cuda.is_available():
        defaults["use_cpu"] = True
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # launched by torchrun / accelerate
            defaults["ddp_backend"] = "gloo"
    defaults.update(training_args)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=steps,
                             per_device_train_batch_size=batch_size, learning_rate=lr,
                             seed=seed, data_seed=seed, remove_unused_columns=False, **defaults)
    return Trainer(model=model, args=args, train_dataset=train_dataset,
                   data_collator=TinyTasksCollator(tokenizer))


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cgc_edu.train.distributed",
        description="Train CGC-LoRA on the central model and TinyTasks with transformers.Trainer; "
                    "launch with torchrun or accelerate launch for several processes.")
    parser.add_argument("--output-dir", required=True, help="where each rank saves its adapters")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="first,last,reverse",
                        help="comma-separated TinyTasks task names")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Train, then save this rank's adapters and losses under OUTPUT_DIR/rank<R>/.
    """
    args = _parse(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    data = make_tiny_tasks(seed=args.seed, tasks=tasks, n_train=400, n_validation=0, n_test=0)
    tokenizer = build_tokenizer()
    seed_everything(args.seed)  # the same initial adapters on every rank (DDP also broadcasts rank 0's)
    model = add_adapters(load_central_model(),
                         AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=len(tasks)))
    trainer = adapter_trainer(model, data["train"], tokenizer, Path(args.output_dir) / "trainer",
                              steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                              seed=args.seed)
    trainer.train()
    state = trainer.state
    rank = int(os.environ.get("RANK", 0))
    out = Path(args.output_dir) / f"rank{rank}"
    save_adapters(model, out)
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    (out / "losses.json").write_text(json.dumps(
        {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1)),
         "steps": state.global_step, "losses": losses}, indent=2))
    return out


if __name__ == "__main__":
    main()
