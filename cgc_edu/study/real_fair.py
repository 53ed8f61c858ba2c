"""The real model as a practitioner would judge it: ``python -m cgc_edu.study.real_fair``.

SmolLM2-135M-Instruct (`cgc_edu.models.smollm2`) learns the lexicon suite
(`cgc_edu.data.lexicon`: nine English tasks in three clusters, 50 test words a task) or your
own tasks (``--data FILE.jsonl``: columns task, prompt, target and optionally cluster),
through its chat template, by seven methods at equal trainable parameters (one LoRA of
``--rank`` over the same projections):

- the baselines a practitioner runs today, with peft itself: ``peft_task`` (one LoRA per
  task), ``peft_cluster`` (one per cluster) and ``peft_all`` (one for every task), served
  together in one ``PeftModel`` with ``adapter_names`` (``"__base__"`` for a request that
  names no task);
- cgc_edu's ``moe_lora``, ``cgc_lora``, ``cgc_uniform`` (its uniform-gate ablation) and
  ``one_plus_n`` (a CGC-LoRA set per cluster).

Every method under the fair protocol (`cgc_edu.study.protocol`): its own rate grid on a
tuning seed (shorter runs: ``--grid-steps``), warm-up, clipping, rsLoRA scaling, the best
validation checkpoint; then the reported seeds, every test item's score stored. Each run
also measures what is not kept by construction: the general probe answered with each task's
adapter switched on (a misrouted request), and the loss on held-out general English text
(`cgc_edu.train.forgetting`) with each task's adapter on, against the bare model's.

One JSON per run in ``OUT/runs/`` (resumable); the report writes ``grid.csv``,
``seeds.csv``, ``items.csv.gz``, ``curves.csv``, ``probe.csv``, ``comparisons.csv`` (the
four verdicts) and ``config.json``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch
from datasets import Dataset, DatasetDict
from peft import LoraConfig, get_peft_model

from ..adapters.config import AdapterConfig
from ..adapters.injection import add_adapters, trainable_parameters
from ..data.english import probe_prompts
from ..data.general_text import general_questions, general_text
from ..data.lexicon import make_lexicon_tasks
from ..framework.affinity import subset_tasks
from ..framework.oneplusn import OnePlusN
from ..framework.task_router import TaskClassifier
from ..methods import METHODS
from ..models.smollm2 import load_smollm2
from ..train.finetune import DataError, chat_format, load_task_data
from ..train.forgetting import general_probe, text_loss
from ..train.loop import Recipe, score_items
from ..utils import seed_everything, training_seed
from .protocol import Protocol, choose, compare, judge, parse_methods, parse_seeds
from .runner import _fit

COMMAND = "python -m cgc_edu.study.real_fair"
STUDIED = ("peft_task", "peft_cluster", "peft_all", "moe_lora", "cgc_lora", "cgc_uniform",
           "one_plus_n")
PROTOCOL = Protocol(seeds=(0, 1, 2), grid_max=4)


@dataclass(frozen=True)
class RealSettings:
    """What a run of the real-model study depends on besides method, seed and rate."""

    steps: int = 300
    grid_steps: int = 150
    batch_size: int = 8
    rank: int = 52                 # one LoRA of this rank over every target module
    min_part_steps: int = 30       # a per-task or per-cluster model trains at least this
    curve_points: int = 4
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj")
    data: Optional[str] = None     # a JSONL file of your tasks; None: the lexicon suite


@dataclass
class Suite:
    """The tasks, chat-formatted: splits, task names in id order, clusters."""

    data: DatasetDict
    tasks: list
    clusters: dict = field(default_factory=dict)


# -------------------------------------------------------------------- data
def read_tasks(path, seed: int = 0, test_share: float = 0.2, validation_share: float = 0.1) -> DatasetDict:
    """Your tasks from a JSONL file (columns task, prompt, target, optional cluster), split
    per task into train, validation and test rows by ``seed``. A malformed file raises
    `DataError` naming the line and the fix; a task too small to split, naming the task."""
    rows = load_task_data(path)
    raw = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    clusters = [str(r.get("cluster", "all")) for r in raw]
    rows = rows.add_column("cluster", clusters)
    splits = {"train": [], "validation": [], "test": []}
    rng = torch.Generator().manual_seed(seed)
    for task_id in sorted(set(rows["task_id"])):
        mine = [r for r in rows if r["task_id"] == task_id]
        n_test, n_val = max(1, round(test_share * len(mine))), max(1, round(validation_share * len(mine)))
        if len(mine) < n_test + n_val + 1:
            raise DataError(f"{path}: task {mine[0]['task']!r} has {len(mine)} row(s); a task needs "
                            f"at least {n_test + n_val + 1} to give train, validation and test "
                            "rows: add rows or drop the task")
        order = torch.randperm(len(mine), generator=rng).tolist()
        parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        for split, index in parts.items():
            splits[split] += [{**mine[i], "low_data": False} for i in index]
    return DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})


def load_suite(tokenizer, settings: RealSettings, chat: bool = True) -> Suite:
    """The study's tasks: the lexicon suite, or ``settings.data``; chat-formatted for an
    instruct model (``chat=False`` keeps the raw prompts: a model without a template)."""
    if settings.data is None:
        raw = make_lexicon_tasks(seed=0)
    else:
        raw = read_tasks(settings.data)
    data = DatasetDict({s: chat_format(d, tokenizer) if chat else d for s, d in raw.items()})
    names = [n for _, n in sorted(set(zip(data["train"]["task_id"], data["train"]["task"])))]
    clusters: dict = {}
    for task in names:
        cluster = data["train"]["cluster"][data["train"]["task"].index(task)]
        clusters.setdefault(cluster, []).append(task)
    return Suite(data, names, clusters)


# ----------------------------------------------------------------- methods
def peft_units(method: str, suite: Suite) -> dict[str, list[str]]:
    """The adapters of a peft baseline: name -> the tasks it is trained on and serves."""
    per = METHODS[method].per
    if per == "task":
        return {t: [t] for t in suite.tasks}
    if per == "cluster":
        return dict(suite.clusters)
    return {"all": list(suite.tasks)}


def _peft_config(rank: int, settings: RealSettings):
    return LoraConfig(r=rank, lora_alpha=PROTOCOL.alpha, use_rslora=True, lora_dropout=0.0,
                      target_modules=list(settings.target_modules), task_type="CAUSAL_LM")


class PeftServed:
    """A peft baseline: one PeftModel holding one LoRA per unit, served with adapter_names."""

    def __init__(self, base, method: str, suite: Suite, settings: RealSettings, seed: int):
        self.units = peft_units(method, suite)
        self.unit_of = {t: u for u, tasks in self.units.items() for t in tasks}
        rank = max(1, settings.rank // len(self.units))   # within one LoRA of rank settings.rank
        seed_everything(seed)
        names = list(self.units)
        self.model = get_peft_model(copy.deepcopy(base), _peft_config(rank, settings), adapter_name=names[0])
        for name in names[1:]:
            self.model.add_adapter(name, _peft_config(rank, settings))

    def parts(self, suite: Suite):
        for unit, tasks in self.units.items():
            self.model.set_adapter(unit)      # peft: this adapter trainable, the others frozen
            yield unit, tasks, self.model

    def scorer(self, task: str):
        """(model, task id) that answers ``task``: its unit's adapter active (no task ids)."""
        self.model.set_adapter(self.unit_of[task])
        return self.model, None

    def params(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n)

    @torch.no_grad()
    def mixed_logits(self, input_ids: torch.Tensor, tasks: Sequence[Optional[str]]) -> torch.Tensor:
        """One forward of a mixed batch as peft serves it: each row through its task's
        adapter (``adapter_names``), ``"__base__"`` for a row that names no task (None)."""
        names = ["__base__" if t is None else self.unit_of[t] for t in tasks]
        self.model.eval()                  # peft mixes adapters in inference only
        return self.model(input_ids=input_ids, adapter_names=names).logits


class BankServed:
    """cgc_edu's methods: one bank for every task (MoE-LoRA, CGC-LoRA, its uniform gate),
    or one CGC-LoRA set per cluster (1+N)."""

    def __init__(self, base, method: str, suite: Suite, settings: RealSettings, seed: int):
        spec, n = METHODS[method], len(suite.tasks)
        self.tasks = list(suite.tasks)
        targets = list(settings.target_modules)
        seed_everything(seed)
        if spec.kind == "one_plus_n":
            r_e = METHODS["cgc_lora"].config(settings.rank, n, "params").expert_rank
            per_task = r_e * (spec.n_common + spec.n_specific)
            configs = {c: AdapterConfig.cgc_lora(rank=per_task, alpha=PROTOCOL.alpha, use_rslora=True,
                                                 n_tasks=len(t), n_common=spec.n_common,
                                                 n_specific=spec.n_specific, target_modules=targets)
                       for c, t in suite.clusters.items()}
            self.framework = OnePlusN(copy.deepcopy(base), suite.clusters, configs, seed=seed)
            self.model = None
        else:
            config = replace(spec.config(settings.rank, n, "params", PROTOCOL.alpha, True),
                             target_modules=tuple(targets))
            self.model, self.framework = add_adapters(copy.deepcopy(base), config), None

    def parts(self, suite: Suite):
        if self.framework is None:
            yield "all", list(suite.tasks), self.model
        else:
            for cluster, tasks in self.framework.clusters.items():
                yield cluster, tasks, self.framework.sets[cluster]

    def scorer(self, task: str):
        """(model, task id) that answers ``task``: the bank and the task's index, or its
        cluster's set and its local id."""
        if self.framework is None:
            return self.model, self.tasks.index(task)
        cluster, local = self.framework.route(task)
        return self.framework.sets[cluster], local

    def params(self) -> int:
        if self.framework is None:
            return trainable_parameters(self.model)
        return sum(trainable_parameters(s) for s in self.framework.sets.values())


def build(base, method: str, suite: Suite, settings: RealSettings, seed: int):
    """The method's served models, fresh (adapters initialised from ``seed``)."""
    cls = PeftServed if METHODS[method].kind == "peft" else BankServed
    return cls(base, method, suite, settings, seed)


# --------------------------------------------------------------- one run
def _local(rows, tasks):
    """Rows of ``tasks`` with task ids local to them (a per-cluster or per-task model)."""
    return subset_tasks(rows, tasks) if len(tasks) < len(set(rows["task"])) else rows


def run_one(base, tokenizer, suite: Suite, method: str, seed: int, lr: float,
            settings: RealSettings, grid: bool = False, extras: Optional[dict] = None) -> dict:
    """Train ``method`` on ``seed`` at rate ``lr`` (the grid's shorter run when ``grid``);
    score validation and test item by item; unless ``grid``, the misrouted probe and the
    general-text loss (``extras``: {"texts": [...]} for the loss; None skips both)."""
    start = time.perf_counter()
    served = build(base, method, suite, settings, seed)
    steps = settings.grid_steps if grid else settings.steps
    n = len(suite.tasks)
    curves = []
    for unit, tasks, model in served.parts(suite):
        share = max(settings.min_part_steps, round(steps * len(tasks) / n)) if len(tasks) < n else steps
        recipe = Recipe(steps=share, lr=lr, batch_size=settings.batch_size, seed=seed,
                        task_sampling="uniform", warmup=PROTOCOL.warmup, clip=PROTOCOL.clip)
        curves.append({"unit": unit, "steps": share, "curve": _fit(
            model, _local(suite.data["train"], tasks), tokenizer, recipe,
            _local(suite.data["validation"], tasks), settings.curve_points, best=True, task_names=tasks)})
    trained = time.perf_counter() - start

    def items(split):
        frames = []
        for task in suite.tasks:
            model, task_id = served.scorer(task)
            rows = suite.data[split].filter(lambda r: r["task"] == task)
            rows = rows.map(lambda r: {"task_id": task_id or 0})
            frames.append(score_items(model, rows, tokenizer))
        return pd.concat(frames, ignore_index=True)

    test, validation = items("test"), items("validation")
    record = {"method": method, "seed": seed, "lr": lr, "grid": grid, "settings": asdict(settings),
              "tasks": suite.tasks, "clusters": suite.clusters,
              "validation": validation.groupby("task")["exact_match"].mean().to_dict(),
              "test": test.groupby("task")["exact_match"].mean().to_dict(),
              "items": {t: [int(v) for v in g] for t, g in test.groupby("task", sort=False)["exact_match"]},
              "answers": {t: list(g) for t, g in test.groupby("task", sort=False)["answer"]},
              "curves": curves, "trainable_params": int(served.params()), "steps": steps,
              "train_seconds": round(trained, 1)}
    if not grid and extras is not None:
        record.update(_general(served, tokenizer, suite, extras, record["items"]))
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def _general(served, tokenizer, suite: Suite, extras: dict, items: dict) -> dict:
    """What is not kept by construction: the general probe and the general-text loss with
    each task's adapter switched on (a misrouted request), and the test items answered end
    to end through the router (``extras["routes"]``: a misrouted item is answered by the
    adapter it was sent to, or by the bare model when sent to none)."""
    probe, loss = {}, {}
    for task in suite.tasks:
        model, task_id = served.scorer(task)
        probe[task] = general_probe(model, tokenizer, task_ids=task_id)["right"].astype(int).tolist()
        loss[task] = text_loss(model, tokenizer, extras["texts"], task_id=task_id)
    routed = {t: list(v) for t, v in items.items()}
    for task, routes in extras["routes"]["test"].items():
        rows = suite.data["test"].filter(lambda r: r["task"] == task)
        for i, sent in enumerate(routes):
            if sent == task:
                continue
            model, task_id = served.scorer(sent) if sent is not None else (extras["base"], None)
            row = rows.select([i]).map(lambda r: {"task_id": task_id or 0})
            routed[task][i] = int(score_items(model, row, tokenizer)["exact_match"].iloc[0])
    return {"misrouted_probe": probe, "text_loss": loss, "routed_items": routed}


# ------------------------------------------------------------- the router
def router_extras(base, tokenizer, suite: Suite, out: Path, n_texts: int = 32) -> dict:
    """What every reported run shares: the general texts, the bare model, and a router
    (`TaskClassifier`) that reads each request with the bare model, trained on the tasks'
    training prompts and, as "no task", on general passages (other passages than the texts
    the loss is measured on) and short general questions (`general_questions`, none from the
    probe). A second router, trained with the passages alone, is kept for the record: it
    shows why the questions are needed. Its routes of the test items and of the probe
    questions, the errors and the bare model's probe go to ``OUT/router.json``, which a rerun
    on the same data reads back instead of fitting again."""
    texts = general_text(n_chunks=n_texts, seed=0)
    chat = lambda t: tokenizer.apply_chat_template([{"role": "user", "content": t}],  # noqa: E731
                                                   tokenize=False, add_generation_prompt=True)
    passages = [chat(t) for t in general_text(n_chunks=64, seed=1) if t not in texts]
    questions = [chat(q) for q in general_questions(64, seed=0)]
    train, test = suite.data["train"], suite.data["test"]
    probe = probe_prompts(tokenizer)
    key = hashlib.sha256(json.dumps([list(train["prompt"]), list(train["task"]),
                                     list(test["prompt"]), passages, questions, probe]).encode())
    stored = Path(out) / "router.json"
    if stored.is_file() and json.loads(stored.read_text()).get("key") == key.hexdigest():
        return {"texts": texts, "base": base, "routes": json.loads(stored.read_text())}

    def fit(general):
        router = TaskClassifier().fit(base, tokenizer, list(train["prompt"]), list(train["task"]),
                                      general=general)
        return router, router.predict(probe)

    _, passages_only = fit(passages)
    router, probe_routes = fit(passages + questions)
    sent = router.predict(list(test["prompt"]))
    routes = {t: [s for s, task in zip(sent, test["task"]) if task == t] for t in suite.tasks}
    central = general_probe(base, tokenizer)["right"].astype(int).tolist()
    sent_share = lambda r: sum(x is not None for x in r) / len(r)   # noqa: E731
    record = {"test_error": router.error_rate(list(test["prompt"]), list(test["task"])),
              "probe_sent_to_an_adapter": sent_share(probe_routes),
              "passages_only_probe_sent_to_an_adapter": sent_share(passages_only),
              "test": routes, "probe": probe_routes, "passages_only_probe": passages_only,
              "central_probe": central, "key": key.hexdigest()}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "router.json").write_text(json.dumps(record, indent=1))
    return {"texts": texts, "base": base, "routes": record}


# ----------------------------------------------------------------- the study
def _run_path(out: Path, method: str, seed: int, lr: float, grid: bool) -> Path:
    kind = "grid" if grid else "run"
    return Path(out) / "runs" / f"{kind}_{method}_{seed}_{lr:.6g}.json"


def run_study(out: Path, base, tokenizer, suite: Suite, methods: Sequence[str] = STUDIED,
              settings: RealSettings = RealSettings(), protocol: Protocol = PROTOCOL,
              extras: Optional[dict] = None, chat: bool = True) -> dict:
    """Each method's grid on the tuning seed, then its reported seeds; every run stored as
    it finishes and read back when present (a stored run of other settings is run again)."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    stamp = asdict(settings)

    def get(method, seed, lr, grid):
        path = _run_path(out, method, seed, lr, grid)
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored["settings"] == json.loads(json.dumps(stamp)):
                return stored
        print(f"{method} seed {seed} lr {lr:g}{' (grid)' if grid else ''} ...", flush=True)
        record = run_one(base, tokenizer, suite, method, seed, lr, settings, grid, extras)
        path.write_text(json.dumps(record))
        return record

    grid_runs, runs, chosen = [], [], {}
    for method in methods:
        centre = METHODS[method].lr
        rates = protocol.grid(centre)
        while True:
            found = [get(method, protocol.tuning_seed, r, True) for r in rates]
            scores = {r["lr"]: sum(r["validation"].values()) / len(r["validation"]) for r in found}
            more = protocol.next_rate(centre, scores)
            if more is None:
                break
            rates.append(more)
        grid_runs += found
        chosen[method] = choose(scores)
    for seed in protocol.seeds:                  # seed by seed: a partial study covers every method
        runs += [get(m, seed, chosen[m], False) for m in methods]
    return {"grid": grid_runs, "runs": runs, "lr": chosen}


def tables(study: dict, protocol: Protocol = PROTOCOL) -> dict[str, pd.DataFrame]:
    """grid, seeds, items, curves, probe and comparisons (the four verdicts) of a study."""
    grid = pd.DataFrame([{"method": r["method"], "lr": r["lr"], "seed": r["seed"],
                          "validation": sum(r["validation"].values()) / len(r["validation"]),
                          "chosen": r["lr"] == study["lr"][r["method"]]} for r in study["grid"]])
    runs = study["runs"]
    seeds = pd.DataFrame([{"method": r["method"], "seed": r["seed"], "lr": r["lr"],
                           "steps": r["steps"], "average": sum(r["test"].values()) / len(r["test"]),
                           "trainable_params": r["trainable_params"], "train_seconds": r["train_seconds"],
                           "misrouted_probe": (sum(map(sum, r["misrouted_probe"].values()))
                                               / sum(map(len, r["misrouted_probe"].values()))
                                               if "misrouted_probe" in r else None),
                           "text_loss": (sum(r["text_loss"].values()) / len(r["text_loss"])
                                         if "text_loss" in r else None),
                           "end_to_end": (sum(map(sum, r["routed_items"].values()))
                                          / sum(map(len, r["routed_items"].values()))
                                          if "routed_items" in r else None)} for r in runs])
    items = pd.DataFrame([{"method": r["method"], "seed": r["seed"], "task": t, "item": i,
                           "exact_match": v} for r in runs for t, vs in r["items"].items()
                          for i, v in enumerate(vs)])
    curves = pd.DataFrame([{"method": r["method"], "seed": r["seed"], "unit": c["unit"],
                            "step": round(share * c["steps"]),
                            "validation": sum(v for k, v in s.items() if not k.startswith("_"))
                            / max(1, sum(not k.startswith("_") for k in s)),
                            "best": bool(s.get("_best"))}
                           for r in runs for c in r["curves"] for share, s in c["curve"]])
    by = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = [v for t in r["tasks"] for v in r["items"][t]]
    comps = [{"method": a, "baseline": b, **{k: v for k, v in compare(by[a], by[b]).items()
                                            if k != "seed_differences"}}
             for a, b in combinations(list(by), 2) if len(set(by[a]) & set(by[b])) >= 2]
    comparisons = judge(pd.DataFrame(comps, columns=["method", "baseline", "difference", "ci_low",
                                                     "ci_high", "p", "n_seeds"]), protocol)
    return {"grid": grid, "seeds": seeds, "items": items, "curves": curves,
            "comparisons": comparisons}


def write_report(study: dict, out: Path, config: dict) -> dict:
    frames = tables(study)
    for name, frame in frames.items():
        frame.to_csv(Path(out) / (f"{name}.csv.gz" if name == "items" else f"{name}.csv"),
                     index=False, float_format="%.6g")
    (Path(out) / "config.json").write_text(json.dumps(config, indent=1))
    return frames


# ---------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a JSONL file of your tasks (task, prompt, target[, cluster])")
    parser.add_argument("--methods", default=",".join(STUDIED))
    parser.add_argument("--seeds", default=",".join(map(str, PROTOCOL.seeds)))
    defaults = RealSettings()
    for name in ("steps", "grid_steps", "batch_size", "rank"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--out", type=Path, default=Path("results") / "real_model")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = parse_methods(args.methods, STUDIED, "the real-model study")
    seeds = parse_seeds(args.seeds)
    settings = replace(defaults, data=args.data, **{n: getattr(args, n) for n in
                                                    ("steps", "grid_steps", "batch_size", "rank")})
    base, tokenizer = load_smollm2()
    suite = load_suite(tokenizer, settings)
    start = time.perf_counter()
    extras = router_extras(base, tokenizer, suite, args.out)
    study = run_study(args.out, base, tokenizer, suite, methods, settings,
                      replace(PROTOCOL, seeds=seeds), extras)
    config = {"command": " ".join([COMMAND, *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
              "settings": asdict(settings), "lr": study["lr"], "seconds_this_call":
              round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    frames = write_report(study, args.out, config)
    print(frames["seeds"].groupby("method")["average"].mean().round(3).to_string())
    return study


if __name__ == "__main__":
    main()
