"""Bring your own model and data: multi-task adapters on any Hugging Face causal LM.

One command trains CGC-LoRA (or any preset) on a multi-task dataset, evaluates exact match
per task and exports one peft LoRA adapter per task::

    python -m cgc_edu.train.finetune --model HuggingFaceTB/SmolLM2-135M --data train.jsonl \\
        --tasks-column task --method cgc_lora --rank 8 --steps 300 --output-dir runs/mine

``--model`` is a hub name (read from the local cache when offline) or a folder written by
``save_pretrained``; ``--dtype bfloat16`` (or ``float16``) loads it in half precision, as most
real checkpoints are stored (the adapters stay float32, as peft keeps them). ``--data`` is a JSON Lines file, a CSV file, a folder written by
``Dataset.save_to_disk`` or a ``datasets`` name; its rows need a prompt, a target and a
task name (the column names are options). The output folder receives ``adapters/`` (the
whole adapter bank, ``cgc_edu.load_adapters``), ``peft/<task>/`` (one plain LoRA per task,
``peft.PeftModel.from_pretrained``), ``eval.csv`` and ``run.json``.

Decisions, so that nothing surprises:

* Task ids follow the task names in sorted order (``run.json`` records them).
* The target is tokenized on its own, after the prompt: with a word-piece tokenizer, put
  the space that separates it from the prompt at the start of the target (" Paris").
* A tokenizer without a pad token gets its eos token as pad, with a warning: padding is
  found by position in the collator and masked by the attention mask, never by its id,
  so reusing eos is safe. A tokenizer with neither is an error.
* ``--chat-template`` (``finetune(..., chat_template=True)``) wraps each prompt in an
  instruct model's chat template (`chat_format`); the loss stays on the answer alone.
* Bad data is refused before any training with a ``DataError`` naming the file, the row
  (line number for JSON Lines and CSV, index for a ``datasets`` split) and the fix.

Taught in: notebooks/09_your_model.ipynb
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch
from datasets import Dataset

import inspect

from ..adapters.config import AdapterConfig
from ..methods import METHODS, PRESETS, method_name
from ..adapters.injection import add_adapters
from ..adapters.saving import export_peft_lora, save_adapters
from ..utils import PLAIN_TORCH, no_progress_bars, seed_everything, with_knobs
from .loop import evaluate, train

#: finetune trains the methods an `AdapterConfig` preset builds (`cgc_edu.methods.PRESETS`).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DataError(ValueError):
    """A multi-task dataset that cannot be used as it is; the message names the row and the fix.

    Taught in: notebooks/09_your_model.ipynb
    """


# --------------------------------------------------------------------------- reading data
def _json_rows(path: Path) -> list[tuple[str, object]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {err.lineno}: invalid JSON ({err.msg}); the file must "
                            "be a JSON array of objects, or one JSON object per line") from None
        return [(f"{path} item {i}", item) for i, item in enumerate(items)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path} line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno}); "
                            'each line must be one object like {"prompt": "...", "target": "...", '
                            '"task": "..."}') from None
    return rows


def _csv_rows(path: Path, columns: Sequence[str]) -> list[tuple[str, object]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if header and missing:
            raise DataError(f"{path} line 1: the header {header} has no column {missing[0]!r}; "
                            f"add it, or name the column that holds it (--{_option(missing[0], columns)})")
        return [(f"{path} line {reader.line_num}", dict(row)) for row in reader]


def _dataset_rows(source: str, split: str) -> list[tuple[str, object]]:
    import datasets

    try:
        folder = Path(source)
        if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(source)
            loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            loaded = datasets.load_dataset(source, split=split)
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as err:
        raise DataError(f"{source}: cannot read it as a file or a datasets dataset (split {split!r}): "
                        f"{err}. Pass a .jsonl or .csv file, a folder saved with save_to_disk, or a "
                        "dataset name that is in the local Hugging Face cache") from None
    return [(f"{source}[{split}] row {i}", row) for i, row in enumerate(loaded)]


def _option(name: str, columns: Sequence[str]) -> str:
    kind = ("prompt", "target", "tasks")[list(columns).index(name)]
    return f"{kind}-column"


def _text(where: str, row: dict, column: str, role: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: the {role} ({column!r}) is {value!r}, not a string; write it "
                        f'as text, e.g. "{value}"')
    if not value:
        raise DataError(f"{where}: the {role} ({column!r}) is empty; fill it in or drop the row")
    return value


def load_task_data(source, prompt_column: str = "prompt", target_column: str = "target",
                   task_column: str = "task", tasks: Optional[Sequence[str]] = None,
                   split: str = "train") -> Dataset:
    """Read a multi-task dataset into a ``Dataset`` with columns prompt, target, task, task_id, where.

    ``source``: a ``.jsonl`` / ``.json`` or ``.csv`` file, a folder saved with
    ``save_to_disk``, or a ``datasets`` name (with ``split``). ``tasks`` fixes the task
    names and their ids (then a row with another task is an error); by default the ids
    follow the sorted names found. ``where`` says where each row came from, for errors.
    Raises ``DataError`` naming the file, the row and the fix.

    Taught in: notebooks/09_your_model.ipynb
    """
    columns = (prompt_column, target_column, task_column)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv") and not path.is_file():
        raise DataError(f"{path}: no such file; check the path (relative paths start from "
                        f"{Path.cwd()})")
    if suffix in (".jsonl", ".json"):
        found = _json_rows(path)
    elif suffix == ".csv":
        found = _csv_rows(path, columns)
    else:
        found = _dataset_rows(str(source), split)
    if not found:
        raise DataError(f"{source}: the data is empty (no rows); add one row per example "
                        f"with the columns {list(columns)}")
    rows = []
    for where, row in found:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with {list(columns)}, got {row!r}")
        for column in columns:
            if column not in row:
                raise DataError(f"{where}: no {column!r} column (the row has {sorted(row)}); add "
                                f"it, or name the column that holds it (--{_option(column, columns)})")
        task = row[task_column]
        if task is None or (isinstance(task, str) and not task.strip()):
            raise DataError(f"{where}: the task ({task_column!r}) is empty; give every row the "
                            "name of its task")
        rows.append({"prompt": _text(where, row, prompt_column, "prompt"),
                     "target": _text(where, row, target_column, "target"),
                     "task": str(task), "where": where})
    names = sorted({r["task"] for r in rows}) if tasks is None else list(tasks)
    ids = {name: i for i, name in enumerate(names)}
    for row in rows:
        if row["task"] not in ids:
            raise DataError(f"{row['where']}: unknown task {row['task']!r}; the tasks are {names}. "
                            "Fix the name, or drop the row")
        row["task_id"] = ids[row["task"]]
    return Dataset.from_list(rows)


def split_per_task(dataset: Dataset, eval_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out ``eval_fraction`` of each task's rows (at least one where a task has two or more).

    Taught in: notebooks/09_your_model.ipynb
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction}: choose a fraction in [0, 1)")
    rng = random.Random(seed)
    held = []
    column = list(dataset["task_id"])
    for task_id in sorted(set(column)):
        idx = [i for i, t in enumerate(column) if t == task_id]
        n = round(len(idx) * eval_fraction)
        if eval_fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        held += rng.sample(idx, n) if n else []
    held_set = set(held)
    return (dataset.select([i for i in range(len(dataset)) if i not in held_set]),
            dataset.select(sorted(held)))


def chat_format(dataset: Dataset, tokenizer, system: Optional[str] = None) -> Dataset:
    """Wrap each row's prompt in the tokenizer's chat template, as an instruct model was
    trained to read it: the prompt becomes the rendered conversation up to the assistant's
    turn (generation prompt included), the target stays the answer alone, so the collator's
    loss is on the answer (and the end of turn, the tokenizer's eos) only.

    ``system``: a system message to put first (None: the template's own default, if any).
    Raises ValueError when the tokenizer has no chat template, or when its end of turn is not
    its eos token (training would then teach the model to stop where it should not).

    Taught in: notebooks/10_real_model.ipynb
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat_format: {type(tokenizer).__name__} has no chat template; "
                         "train on the raw prompts (no --chat-template), or set "
                         "tokenizer.chat_template")
    head = [] if system is None else [{"role": "system", "content": system}]

    def render(row):
        user = head + [{"role": "user", "content": row["prompt"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": row["target"]}], tokenize=False)
        after = whole[len(prompt):]
        if not whole.startswith(prompt) or not after.startswith(row["target"]):
            raise ValueError(f"chat_format: {row.get('where', 'a row')}: the template does not "
                             "render the answer right after the generation prompt; it cannot "
                             "be trained with the loss on the answer alone")
        end = after[len(row["target"]):]
        if tokenizer.eos_token and not end.startswith(tokenizer.eos_token):
            raise ValueError(f"chat_format: the template ends a turn with {end[:20]!r} but "
                             f"the eos token is {tokenizer.eos_token!r}; set "
                             "tokenizer.eos_token to the template's end-of-turn token")
        return prompt

    columns = dataset.to_dict()        # rebuilt, not .map(): no progress bar, no cache files
    columns["prompt"] = [render(row) for row in dataset]
    return Dataset.from_dict(columns, features=dataset.features)


def context_length(model, tokenizer) -> int:
    """The longest sequence the model takes: its position limit (or the tokenizer's, if smaller).

    Taught in: notebooks/09_your_model.ipynb
    """
    config = model.config
    limits = [getattr(config, key) for key in ("max_position_embeddings", "n_positions", "n_ctx")
              if isinstance(getattr(config, key, None), int)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:  # "no limit" is a huge int
        limits.append(tokenizer.model_max_length)
    return min(limits) if limits else 1_000_000


def check_fits_context(dataset: Dataset, tokenizer, max_length: int) -> None:
    """Raise ``DataError`` on the first row whose prompt + target + eos exceeds ``max_length`` tokens.

    Taught in: notebooks/09_your_model.ipynb
    """
    prompts = tokenizer(list(dataset["prompt"]), add_special_tokens=True)["input_ids"]
    targets = tokenizer(list(dataset["target"]), add_special_tokens=False)["input_ids"]
    for where, p, t in zip(list(dataset["where"]), prompts, targets):
        if len(p) + len(t) + 1 > max_length:
            raise DataError(f"{where}: prompt + target + eos is {len(p) + len(t) + 1} tokens, longer "
                            f"than the model's context of {max_length}; shorten the prompt (prompt "
                            f"alone: {len(p)} tokens) or drop the row")


# --------------------------------------------------------------------------- the model
def _torch_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)} (or a torch.dtype)")
    return DTYPES[dtype]


def load_model_and_tokenizer(name_or_path: str, device=None, dtype=None):
    """``AutoModelForCausalLM`` and ``AutoTokenizer`` from a hub name or a local folder.

    Offline (``HF_HUB_OFFLINE=1``) a name must already be in the local cache. A tokenizer
    without a pad token gets its eos token as pad (with a warning: padding is masked by
    position, so this is safe here). ``device`` (e.g. "cuda") moves the model; by default
    it stays where it loads (the CPU). ``dtype`` ("float32", "bfloat16", "float16" or a
    torch.dtype) loads the weights in that dtype; by default float32. Returns
    ``(model, tokenizer)``, the model in eval mode.

    Taught in: notebooks/09_your_model.ipynb
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    looks_local = str(name_or_path).startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise OSError(f"cannot load the model {name_or_path!r}: there is no such folder. Pass a "
                      "folder written by model.save_pretrained(...) and tokenizer.save_pretrained(...), "
                      "or a hub name such as 'HuggingFaceTB/SmolLM2-135M'.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with no_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype or torch.float32,
                                                         **PLAIN_TORCH)
    except OSError as err:
        raise OSError(f"cannot load the model {name_or_path!r}: {err}\nPass a folder written by "
                      "save_pretrained, or a hub name; offline, download it first on a machine "
                      f"with internet (huggingface-cli download {name_or_path}).") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token; "
                             "set both (tokenizer.add_special_tokens(...)) and resize the model's "
                             "embeddings before fine-tuning")
        warnings.warn(f"the tokenizer of {name_or_path!r} has no pad token; using its eos token "
                      f"{tokenizer.eos_token!r} as pad (safe: padding is masked by position). Set "
                      "tokenizer.pad_token yourself to choose another.", stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


#: The expert counts of the presets that have them, by default (rank 8 divides evenly).
DEFAULT_SIZES = {"n_common": 2, "n_specific": 2, "n_experts": 4}


def method_config(name: str, n_tasks: int, rank: int = 8, alpha: float = 16.0,
                  dropout: float = 0.0, target_modules: Optional[Sequence[str]] = None,
                  **sizes: int) -> AdapterConfig:
    """The ``AdapterConfig`` preset of method ``name`` (one of ``PRESETS``, or an older name:
    "lora", "independent") for ``n_tasks`` tasks.

    ``sizes`` are the expert counts ``n_common``, ``n_specific`` (CGC-LoRA) and ``n_experts``
    (MoE-LoRA); a preset takes those it has and ignores the others. The defaults (rank 8,
    2 common + 2 specific experts for CGC-LoRA, 4 for MoE-LoRA) divide evenly: each expert
    has rank 2.

    Taught in: notebooks/09_your_model.ipynb
    """
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise TypeError(f"method_config: unknown argument(s) {unknown}; the expert counts are "
                        f"{list(DEFAULT_SIZES)}")
    spec = METHODS.get(method_name(name))
    if spec is None or spec.preset is None:
        raise ValueError(f"unknown method {name!r}; choose one of {list(PRESETS)}")
    preset = getattr(AdapterConfig, spec.preset)
    sizes = {**DEFAULT_SIZES, **sizes}
    return preset(rank=rank, alpha=alpha, n_tasks=n_tasks, dropout=dropout,
                  target_modules=list(target_modules) if target_modules else None,
                  **{k: v for k, v in sizes.items() if k in inspect.signature(preset).parameters})


@dataclass
class FinetuneRun:
    """What ``finetune`` produced: the adapted model, its losses, the per-task table and files.

    Taught in: notebooks/09_your_model.ipynb
    """

    model: torch.nn.Module
    tasks: list[str]
    losses: list[float]
    table: Optional[pd.DataFrame]
    adapters: Path
    exports: dict[str, Path] = field(default_factory=dict)


def _folder_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip(".") or "task"


@dataclass(frozen=True)
class FinetuneSettings:
    """How `finetune` trains and what it records: ``steps`` AdamW steps at rate ``lr`` on
    batches of ``batch_size`` (drawn with ``seed``), a progress bar or not; the base model's
    name for the peft exports (``base_model_name_or_path``); ``chat_template=True`` wraps
    every prompt in the tokenizer's chat template (`chat_format`, with ``system``)."""

    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0
    progress: bool = True
    base_model_name_or_path: Optional[str] = None
    chat_template: bool = False
    system: Optional[str] = None


def finetune(model, tokenizer, train_data: Dataset, eval_data: Optional[Dataset], config: AdapterConfig,
             output_dir, settings: Optional[FinetuneSettings] = None, **knobs) -> FinetuneRun:
    """Add adapters, train, evaluate exact match per task and export one peft adapter per task.

    The data are what ``load_task_data`` returns (they are checked against the model's
    context first). The knobs are a `FinetuneSettings` (``settings``), or its fields as
    keywords (``steps=300``, ``lr=3e-3``, ``batch_size=16``, ``seed=0``, ``progress=True``,
    ``base_model_name_or_path=None``, ``chat_template=False``, ``system=None``), which
    override those of ``settings``. ``chat_template=True`` wraps every prompt in the
    tokenizer's chat template first (`chat_format`, with ``system``), for instruct models.
    Writes ``adapters/``, ``peft/<task>/``, ``eval.csv`` and ``run.json`` under ``output_dir``.

    Taught in: notebooks/09_your_model.ipynb
    """
    settings = with_knobs(settings, FinetuneSettings(), knobs, "finetune")
    task_ids = dict(zip(list(train_data["task"]), list(train_data["task_id"])))
    tasks = sorted(task_ids, key=task_ids.get)
    if config.n_tasks <= max(task_ids.values()):
        raise ValueError(f"config.n_tasks={config.n_tasks} but the data's task ids reach "
                         f"{max(task_ids.values())} (tasks {tasks}); build the config with "
                         f"n_tasks={max(task_ids.values()) + 1}")
    if settings.chat_template:
        train_data = chat_format(train_data, tokenizer, settings.system)
        if eval_data is not None and len(eval_data):
            eval_data = chat_format(eval_data, tokenizer, settings.system)
    limit = context_length(model, tokenizer)
    for data in (train_data, eval_data):
        if data is not None and len(data):
            check_fits_context(data, tokenizer, limit)
    add_adapters(model, config)
    losses = train(model, train_data, tokenizer, steps=settings.steps, lr=settings.lr,
                   batch_size=settings.batch_size, seed=settings.seed, progress=settings.progress)
    table = evaluate(model, eval_data, tokenizer, task_names=tasks) if eval_data is not None and len(eval_data) else None
    out = Path(output_dir)
    adapters = save_adapters(model, out / "adapters")
    exports = {task: export_peft_lora(model, task_ids[task], out / "peft" / _folder_name(task),
                                      base_model_name_or_path=settings.base_model_name_or_path)
               for task in tasks}
    if table is not None:
        table.to_csv(out / "eval.csv")
    _write_run(out / "run.json", {task: task_ids[task] for task in tasks}, config, settings,
               losses, dtype=next(model.parameters()).dtype)
    return FinetuneRun(model, tasks, losses, table, Path(adapters), exports)


def _write_run(path: Path, task_ids: dict, config: AdapterConfig, settings: FinetuneSettings,
               losses: list[float], dtype: torch.dtype) -> None:
    """``run.json``: the task ids, the config, the settings, the first and last loss, the dtype."""
    path.write_text(json.dumps({
        "tasks": task_ids, "config": config.to_dict(), "steps": settings.steps, "lr": settings.lr,
        "batch_size": settings.batch_size, "seed": settings.seed, "first_loss": losses[0],
        "last_loss": losses[-1], "base_model": settings.base_model_name_or_path,
        "chat_template": settings.chat_template, "system": settings.system,
        "dtype": str(dtype).removeprefix("torch.")}, indent=2))


# --------------------------------------------------------------------------- the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cgc_edu.train.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub name or save_pretrained folder")
    p.add_argument("--data", required=True, help=".jsonl / .csv file, save_to_disk folder or datasets name")
    p.add_argument("--eval-data", help="held-out data (same format); default: hold out --eval-fraction")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--split", default="train", help="split of a datasets name")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--target-column", default="target")
    p.add_argument("--tasks-column", default="task")
    p.add_argument("--method", type=method_name, choices=PRESETS, default="cgc_lora")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--n-common", type=int, default=2)
    p.add_argument("--n-specific", type=int, default=2, help="per task (rank must divide by n_common + n_specific)")
    p.add_argument("--n-experts", type=int, default=4, help="moe_lora's experts")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--target-modules", help="comma-separated module names (default: every nn.Linear but lm_head)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help='"auto" (cuda if present), "cpu", "cuda:0", ...')
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="load the model in this dtype (bfloat16 for most real checkpoints); adapters stay float32")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt in the tokenizer's chat template (instruct models)")
    p.add_argument("--system", help="with --chat-template: a system message to put first")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> FinetuneRun:
    """The command line: ``python -m cgc_edu.train.finetune --model ... --data ... --output-dir ...``.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.system is not None and not args.chat_template:
        parser.error("--system is a message in the chat template: add --chat-template")
    columns = dict(prompt_column=args.prompt_column, target_column=args.target_column,
                   task_column=args.tasks_column)
    data = load_task_data(args.data, split=args.split, **columns)
    if args.eval_data:
        train_data = data
        eval_data = load_task_data(args.eval_data, split=args.split,
                                   tasks=sorted(set(list(data["task"]))), **columns)
    else:
        train_data, eval_data = split_per_task(data, args.eval_fraction, seed=args.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, tokenizer = load_model_and_tokenizer(args.model, device=device, dtype=args.dtype)
    n_tasks = max(list(train_data["task_id"])) + 1
    config = method_config(args.method, n_tasks, rank=args.rank, alpha=args.alpha,
                           n_common=args.n_common, n_specific=args.n_specific,
                           n_experts=args.n_experts, dropout=args.dropout,
                           target_modules=args.target_modules.split(",") if args.target_modules else None)
    seed_everything(args.seed)  # the adapters' initialisation
    settings = FinetuneSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                progress=not args.no_progress, base_model_name_or_path=args.model,
                                chat_template=args.chat_template, system=args.system)
    run = finetune(model, tokenizer, train_data, eval_data, config, args.output_dir, settings)
    print(f"tasks: {run.tasks}  loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}")
    if run.table is not None:
        print(run.table.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"adapters: {run.adapters}\npeft adapters: {Path(args.output_dir) / 'peft'}/<task>")
    return run


if __name__ == "__main__":
    main()
