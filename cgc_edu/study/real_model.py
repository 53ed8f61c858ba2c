"""The real-model study: one integrated LoRA, CGC-LoRA and 1+N on SmolLM2-135M-Instruct.

    python -m cgc_edu.study.real_model --seeds 0,1,2,3,4 --out results/real_model

At one parameter budget (rank 16 in all, 8 rank-2 experts' worth of A and B in every
adapted projection), over the English suite of `cgc_edu.data.english` (two clusters, two
low-data tasks), through the model's chat template:

- ``integrated``: one LoRA of rank 16 trained on every task (always on, no task id);
- ``cgc_lora``: one CGC-LoRA bank, 2 common + 1 specific expert per task (8 experts);
- ``one_plus_n``: 1+N, one CGC-LoRA set per cluster (1 common + 1 specific per task, 4
  experts each); a request that names no task goes to the untouched central model.

Each run records every task's exact match on held-out words and the general probe
(`cgc_edu.train.forgetting.general_probe`: questions outside every task) answered by the model a
request without a task would reach. One JSON per method and seed in ``OUT/runs/``
(resumable: a stored run is read back), then ``OUT/results.csv``, ``OUT/probe.csv`` and
``OUT/config.json``.

Taught in: notebooks/10_real_model.ipynb
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch

from ..adapters.config import AdapterConfig
from ..adapters.injection import add_adapters, trainable_parameters
from ..data.english import ENGLISH_TASK_NAMES, english_clusters, make_english_tasks
from ..framework.oneplusn import OnePlusN
from ..models.smollm2 import load_smollm2
from ..train.finetune import chat_format
from ..train.forgetting import general_probe
from ..train.loop import evaluate, train
from ..utils import seed_everything, training_seed

COMMAND = "python -m cgc_edu.study.real_model"
#: the methods it compares (rows of `cgc_edu.methods.METHODS`)
STUDIED = ("integrated", "cgc_lora", "one_plus_n")
DEFAULTS = {"steps": 100, "lr": 2e-3, "batch_size": 8, "n_test": 12}


def configs() -> dict[str, AdapterConfig]:
    """Each method's adapter config at the one budget (scaling alpha / r = 2 for all)."""
    n = len(ENGLISH_TASK_NAMES)
    return {"integrated": AdapterConfig.lora(rank=16, alpha=32, n_tasks=n),
            "cgc_lora": AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=n, n_common=2,
                                               n_specific=1),
            "one_plus_n": AdapterConfig.cgc_lora(rank=4, alpha=8, n_common=1, n_specific=1)}


def run_one(method: str, seed: int, base, tokenizer, data, settings: dict) -> dict:
    """Train one method on one seed; score the tasks and the general probe."""
    start = time.perf_counter()
    train_kw = dict(steps=settings["steps"], lr=settings["lr"],
                    batch_size=settings["batch_size"], progress=False,
                    task_sampling="uniform")
    if method == "one_plus_n":
        framework = OnePlusN(base, english_clusters(), configs()[method],
                             tokenizer=tokenizer, seed=seed)
        losses = framework.train(data["train"], seed=seed, **train_kw)
        trained = time.perf_counter() - start
        table = framework.evaluate(data["test"])
        params = sum(trainable_parameters(s) for s in framework.sets.values())
        probe = general_probe(framework.base, tokenizer)     # no task: the central model
        first, last = (float(sum(v[0] for v in losses.values()) / len(losses)),
                       float(sum(v[-1] for v in losses.values()) / len(losses)))
    else:
        model = copy.deepcopy(base)
        seed_everything(seed)                                # the adapters' initialisation
        add_adapters(model, configs()[method])
        params = trainable_parameters(model)
        history = train(model, data["train"], tokenizer, seed=seed, **train_kw)
        trained = time.perf_counter() - start
        table = evaluate(model, data["test"], tokenizer, task_names=list(ENGLISH_TASK_NAMES))
        # the integrated LoRA is always on; CGC-LoRA cannot answer without a task id
        probe = general_probe(model, tokenizer) if method == "integrated" else None
        first, last = float(history[0]), float(sum(history[-10:]) / len(history[-10:]))
    scores = table["exact_match"].to_dict()
    return {"method": method, "seed": seed, "training_seed": training_seed(seed),
            "settings": settings, "exact_match": scores, "trainable_parameters": int(params),
            "first_loss": first, "last_loss": last,
            "probe": None if probe is None else probe.to_dict("records"),
            "train_seconds": trained, "seconds": time.perf_counter() - start}


def central_record(base, tokenizer, data) -> dict:
    """The bare central model on the tasks and the probe (no training: one record)."""
    table = evaluate(base, data["test"], tokenizer, task_names=list(ENGLISH_TASK_NAMES))
    return {"method": "central", "seed": None, "exact_match": table["exact_match"].to_dict(),
            "probe": general_probe(base, tokenizer).to_dict("records"),
            "trainable_parameters": 0}


def tables(records: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long tables: one row per method, seed and task; one per method, seed, question."""
    scores = pd.DataFrame([{"method": r["method"], "seed": r["seed"], "task": t,
                            "exact_match": v} for r in records
                           for t, v in r["exact_match"].items()])
    probe = pd.DataFrame([{"method": r["method"], "seed": r["seed"], **q} for r in records
                          if r.get("probe") for q in r["probe"]])
    return scores, probe


def run_study(out: Path, seeds: Sequence[int], methods: Sequence[str] = STUDIED,
              settings: Optional[dict] = None) -> list[dict]:
    """Every method on every seed, stored one JSON per run; returns every record."""
    unknown = [m for m in methods if m not in STUDIED]
    if unknown:
        raise ValueError(f"real_model: unknown method(s) {unknown}; choose among "
                         f"{list(STUDIED)}")
    settings = {**DEFAULTS, **(settings or {})}
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base, tokenizer = load_smollm2()
    raw = make_english_tasks(seed=0, n_test=settings["n_test"])
    data = {split: chat_format(raw[split], tokenizer) for split in raw}
    central = out / "runs" / "central.json"
    if not central.is_file():
        central.write_text(json.dumps(central_record(base, tokenizer, data), indent=1))
    records = [json.loads(central.read_text())]
    for seed in seeds:              # seed by seed: a partial study covers every method
        for method in methods:
            path = out / "runs" / f"{method}_seed{seed}.json"
            stored = json.loads(path.read_text()) if path.is_file() else None
            if stored is None or stored.get("settings") != settings or \
                    stored.get("training_seed") != training_seed(seed):
                print(f"{method}, seed {seed} ...", flush=True)
                stored = run_one(method, seed, base, tokenizer, data, settings)
                path.write_text(json.dumps(stored, indent=1))
            records.append(stored)
    return records


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(STUDIED))
    for key, value in DEFAULTS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=Path("results") / "real_model")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
    settings = {key: getattr(args, key) for key in DEFAULTS}
    start = time.perf_counter()
    records = run_study(args.out, seeds, args.methods.split(","), settings)
    scores, probe = tables(records)
    scores.to_csv(args.out / "results.csv", index=False)
    probe.to_csv(args.out / "probe.csv", index=False)
    argv = list(argv if argv is not None else sys.argv[1:])
    (args.out / "config.json").write_text(json.dumps({
        "command": " ".join([COMMAND, *map(shlex.quote, argv)]), "settings": settings,
        "seeds": seeds, "methods": args.methods.split(","),
        "configs": {m: c.to_dict() for m, c in configs().items()},
        "seconds_this_call": round(time.perf_counter() - start, 1),
        "run_seconds": round(sum(r.get("seconds", 0.0) for r in records), 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__}, indent=1))
    print(scores.pivot_table(index="task", columns="method", values="exact_match").round(2))
    return records


if __name__ == "__main__":
    main()
