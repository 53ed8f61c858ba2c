"""The paper's comparison on TinyTasks, the one trainer of comparisons: ``python -m cgc_edu.study``.

The study, as Song et al. 2024 frame it (every row states its trainable parameters and the
rank one task sees):

* baselines: the central model untouched; **multiple independent models** (one LoRA per
  task, each trained alone, at the rank a task sees in CGC-LoRA); an **integrated model**
  (one LoRA of the total budget on all tasks); MoE-LoRA; CGC-LoRA; 1+N (CGC-LoRA per cluster,
  the clusters measured from the data by default, the suite's labels as an option);
* ablations of CGC-LoRA: no common experts, no specific experts, uniform gate, and a sweep
  of (n_common, n_specific), all at the same total budget;
* two prompt settings: instruction-bearing prompts (``"reverse:cab="``, the main table: one
  shared LoRA can read what is asked) and anonymous prompts (``"cab="``: only the task id
  tells the tasks apart);
* recipes that converge: each tuned method's learning rate is chosen on the validation split
  from `LR_GRID` (seed 0), the others use CGC-LoRA's; validation curves are recorded;
* task affinity measures against the designed clusters (adjusted Rand index, per seed).

Every run is stored as one JSON file under ``<out>/runs/`` as it finishes, so an interrupted
study resumes where it stopped. `cgc_edu.study.report` turns the runs into ``results.csv``,
``results.md`` and the figures. ``--quick`` reruns one stored configuration (under a minute).

Taught in: notebooks/12_appendix_controls.ipynb.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..adapters.config import AdapterConfig
from ..adapters.injection import add_adapters, trainable_parameters
from ..data.suites import suite
from ..data.tinytasks import build_tokenizer, make_tiny_tasks
from ..framework.affinity import (
    AFFINITY_METHODS,
    AffinitySettings,
    adjusted_rand_index,
    affinity_probe,
    cluster_tasks,
    measure_affinity,
    measured_clusters,
    prior_clusters,
    subset_tasks,
    task_order,
)
from ..framework.oneplusn import OnePlusN
from ..models.central import load_central_model
from ..train.loop import Recipe, evaluate, score_items, train
from ..methods import METHODS, expert_rank
from ..utils import seed_everything, training_seed
from .methods import (
    AFFINITY_WARMUPS,
    ANONYMOUS,
    CLUSTERINGS,
    LR_GRID,
    STUDY_PROMPTS,
    SEEDS,
    Settings,
    check_methods,
)
from .report import write_report
from .statistics import load_results, runs_table, within_spread

COMMAND = "python -m cgc_edu.study"
DEFAULT_OUT = Path("results")          # relative to the caller's working directory


# -------------------------------------------------------------- one run
def _fit(model, rows, tok, recipe: Recipe, val_rows, points: int, best: bool = False,
         task_names=None):
    """Train by ``recipe``; return the validation curve [(share of the steps, {task: exact
    match})]. With ``best`` the model ends at its best validation point (early stopping's
    checkpoint: the trainable weights of the point with the highest average, the first on
    ties); the curve says which (``"_best": 1`` on that point)."""

    steps = recipe.steps
    every = max(1, steps // max(points, 1))
    curve, kept = [], {}

    def record(step, m):
        if points and step > 0 and (step % every == 0 or step == steps) and (not curve or curve[-1][0] != step / steps):
            table = evaluate(m, val_rows, tok, task_names=task_names).drop(index="average")
            curve.append((round(step / steps, 4), table["exact_match"].to_dict()))
            score = float(table["exact_match"].mean())
            if best and score > kept.get("score", -1.0):
                kept.update(score=score, point=len(curve) - 1,
                            state={n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})

    losses = train(model, rows, tok, recipe, callback=record, callback_every=every, progress=False)
    if kept:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in kept["state"]:
                    param.copy_(kept["state"][name])
        curve[kept["point"]][1]["_best"] = 1
    # the training loss at the same points (mean of the steps since the previous point)
    for i, (share, scores) in enumerate(curve):
        end = round(share * steps)
        window = losses[max(0, end - every): end]
        scores["_loss"] = float(sum(window) / len(window))
    return curve


def _merge_curves(parts):
    """Curves of separately trained models (each on its tasks) as one curve, by share of steps."""
    merged, n_parts = {}, len(parts)
    for curve in parts:
        for share, scores in curve:
            scores = dict(scores)
            loss = scores.pop("_loss", None)
            merged.setdefault(share, {}).update(scores)
            if loss is not None:   # the parts' losses, averaged (each part counts once)
                merged[share]["_loss"] = merged[share].get("_loss", 0.0) + loss / n_parts
    shares = sorted(merged)
    out, last = [], {}
    for s in shares:
        last.update(merged[s])
        out.append((s, dict(last)))
    return out


def _per_task(items: pd.DataFrame, tasks) -> pd.DataFrame:
    """Items scored (`score_items`) as exact match and count per task, in ``tasks``' order."""
    table = items.groupby("task")["exact_match"].agg(exact_match="mean", n="size")
    return table.reindex([t for t in tasks if t in table.index])


def _share(part, rows, settings) -> float:
    """The share of the joint run's steps a part of the tasks gets: by rows, or by tasks
    when the joint run samples tasks uniformly."""
    if settings.task_sampling == "uniform":
        return len(set(part["task"])) / len(set(rows["task"]))
    return len(part) / len(rows)


def separate_steps(settings: Settings, task_rows: Mapping[str, int]) -> dict[str, int]:
    """The steps each independent LoRA trains, given each task's training rows: its share of
    the joint run's ``settings.steps`` (by rows, or 1/N under uniform task sampling), but at
    least ``settings.min_separate_steps``, so that a task with little data still learns. The
    floor can give the independent LoRAs more steps in all than the joint run has.

    Taught in: notebooks/11_which_method.ipynb.
    """
    total, n = sum(task_rows.values()), len(task_rows)
    return {task: max(settings.min_separate_steps, round(settings.steps * (
        1 / n if settings.task_sampling == "uniform" else rows / total)))
        for task, rows in task_rows.items()}


def run_one(method: str, seed: int, lr: float, settings: Settings = Settings()) -> dict:
    """Train and evaluate one method with one seed (data, initialisation, batch order) and lr.

    Returns a dict: the method, seed, lr, settings, ``test`` (exact match per task), ``n_test``,
    ``validation`` (final exact match per task), ``curve`` (validation exact match at
    `Settings.curve_points` points of training), trainable parameters, the rank a task sees,
    the clusters (1+N) and the seconds spent.
    """

    spec = METHODS[check_methods([method])[0]]
    torch.set_num_threads(settings.threads)
    seed_everything(seed)
    data = make_tiny_tasks(seed=seed, n_train=settings.n_train, n_low=settings.n_low,
                           n_validation=settings.n_validation, n_test=settings.n_test,
                           name_in_prompt=settings.name_in_prompt, tasks=suite(settings.suite))
    tok = build_tokenizer()
    base = load_central_model(settings.base)
    train_rows, val_rows = data["train"], data["validation"]
    tasks = task_order(train_rows)
    n_tasks = len(tasks)
    start = time.perf_counter()
    extra: dict = {}
    recipe = Recipe(steps=settings.steps, lr=lr, batch_size=settings.batch_size, seed=seed,
                    task_sampling=settings.task_sampling, warmup=settings.warmup, clip=settings.clip)
    fit = dict(points=settings.curve_points, best=settings.best_checkpoint)

    def lora_alpha(rank):   # the scaling: alpha / r (2 unless alpha is set), or alpha / sqrt(r)
        return 2.0 * rank if settings.alpha is None else settings.alpha
    if spec.kind == "central":
        params, curve = 0, []
        scorer = lambda split: score_items(base, split, tok)
    elif spec.kind == "separate":
        rank = spec.task_rank(settings.rank, n_tasks, settings.budget)
        models, parts, params = {}, [], 0
        steps_of = separate_steps(settings, Counter(train_rows["task"]))
        for task in tasks:
            with torch.random.fork_rng():
                torch.manual_seed(training_seed(seed))
                model = add_adapters(load_central_model(settings.base), AdapterConfig.lora(
                    rank=rank, alpha=lora_alpha(rank), use_rslora=settings.rslora))
            mine = subset_tasks(train_rows, [task])
            parts.append(_fit(model, mine, tok, replace(recipe, steps=steps_of[task]),
                              val_rows=subset_tasks(val_rows, [task]), task_names=[task], **fit))
            models[task] = model
            params += trainable_parameters(model)
        curve = _merge_curves(parts)

        def scorer(split):
            return pd.concat([score_items(models[t], subset_tasks(split, [t]), tok) for t in tasks])
    elif spec.kind == "one_plus_n":
        designed = prior_clusters(train_rows)
        if method == "one_plus_n_designed":
            clusters = designed
        else:
            clusters, _ = measured_clusters(base, train_rows, len(designed), tok, method=settings.affinity,
                                            warmup_steps=settings.affinity_warmup, seed=seed)
        r_e = expert_rank(settings.rank, n_tasks)
        per_task = r_e * (spec.n_common + spec.n_specific)
        configs = {c: AdapterConfig(rank=per_task, alpha=lora_alpha(per_task), n_common=spec.n_common,
                                    n_specific=spec.n_specific, n_tasks=len(t), budget="per_task",
                                    use_rslora=settings.rslora)
                   for c, t in clusters.items()}
        fw = OnePlusN(base, clusters, configs, tokenizer=tok, seed=seed)
        parts = []
        for cluster, members in clusters.items():   # the joint run's steps, shared (`_share`)
            mine = subset_tasks(train_rows, members)
            steps = max(1, round(settings.steps * _share(mine, train_rows, settings)))
            parts.append(_fit(fw.sets[cluster], mine, tok, replace(recipe, steps=steps),
                              val_rows=subset_tasks(val_rows, members), task_names=members, **fit))
        curve = _merge_curves(parts)
        params = sum(trainable_parameters(s) for s in fw.sets.values())
        scorer = fw.score_items
        extra = {"clusters": clusters, "ari": adjusted_rand_index(clusters, designed)}
    else:
        model = add_adapters(base, spec.config(settings.rank, n_tasks, settings.budget,
                                               lora_alpha(settings.rank), settings.rslora))
        curve = _fit(model, train_rows, tok, recipe, val_rows=val_rows, **fit)
        params = trainable_parameters(model)
        scorer = lambda split: score_items(model, split, tok)
    trained = time.perf_counter()
    items = scorer(data["test"])
    test = _per_task(items, tasks)
    validation = _per_task(scorer(val_rows), tasks)
    done = time.perf_counter()
    if settings.items:   # every test item's score, in the test split's order of each task
        extra["items"] = {t: [int(v) for v in g] for t, g in items.groupby("task", sort=False)["exact_match"]}
    return {"method": method, "seed": seed, "lr": lr, "setting": settings.setting,
            "settings": asdict(settings), "tasks": tasks,
            "cluster_of": dict(zip(data["test"]["task"], data["test"]["cluster"])),
            "low_data": sorted({t for t, low in zip(data["test"]["task"], data["test"]["low_data"]) if low}),
            "test": test["exact_match"].to_dict(), "n_test": test["n"].astype(int).to_dict(),
            "validation": validation["exact_match"].to_dict(), "curve": curve,
            "trainable_params": int(params),
            "task_rank": spec.task_rank(settings.rank, n_tasks, settings.budget),
            "train_seconds": round(trained - start, 2), "eval_seconds": round(done - trained, 2), **extra}


def affinity_run(seed: int, settings: Settings = Settings()) -> dict:
    """Every affinity measure, cold (at the bare central model) and after the joint warm-up,
    each clustered two ways (average linkage of the affinity; complete linkage of the tasks'
    affinity profiles) into as many clusters as the suite designs, scored by adjusted Rand index.
    """

    torch.set_num_threads(settings.threads)
    data = make_tiny_tasks(seed=seed, n_train=settings.n_train, n_low=settings.n_low, n_validation=0,
                           n_test=0, name_in_prompt=settings.name_in_prompt, tasks=suite(settings.suite))
    tok, base = build_tokenizer(), load_central_model(settings.base)
    designed = prior_clusters(data["train"])
    out = {"seed": seed, "setting": settings.setting, "settings": asdict(settings), "designed": designed,
           "measures": []}
    begin = time.perf_counter()
    for warmup in sorted({*AFFINITY_WARMUPS, settings.affinity_warmup}):
        start = time.perf_counter()
        knobs = AffinitySettings(rank=8, seed=seed, warmup_steps=warmup, warmup_lr=3e-3,
                                 batch_size=settings.batch_size)
        probe = affinity_probe(base, data["train"], tok, knobs)
        warm_seconds = time.perf_counter() - start
        for method in AFFINITY_METHODS:
            if method == "update" and warmup == 0:
                continue   # a fresh LoRA's update is mostly its first steps' gradients: "gradient" again
            start = time.perf_counter()
            aff = measure_affinity(probe, data["train"], tok, method, knobs)
            seconds = round(time.perf_counter() - start + warm_seconds, 2)
            for clustering, (linkage_method, on) in CLUSTERINGS.items():
                clusters = cluster_tasks(aff, len(designed), linkage_method, on)
                out["measures"].append({"method": method, "warmup_steps": warmup, "clustering": clustering,
                                        "clusters": clusters, "ari": adjusted_rand_index(clusters, designed),
                                        "affinity": aff.round(4).to_dict(), "seconds": seconds})
    out["total_seconds"] = round(time.perf_counter() - begin, 2)
    return out


# --------------------------------------------------------------- the study
def _run_file(out: Path, kind: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    name = "_".join(str(key[k]) for k in ("setting", "method", "seed") if k in key)
    return Path(out) / "runs" / f"{kind}_{name}_{digest}.json"


def _job(job):
    kind, key, settings = job
    if kind == "affinity":
        return affinity_run(key["seed"], settings)
    return run_one(key["method"], key["seed"], key["lr"], settings)


#: Settings fields only some runs depend on: the affinity 1+N clusters by matters to the runs
#: that measure clusters (and to the affinity study), not to the others.
_AFFINITY_FIELDS = ("affinity", "affinity_warmup")
#: the fair protocol's knobs, at the values every run had before they existed
_FIRST_RECIPE = {k: Settings.__dataclass_fields__[k].default for k in
                 ("budget", "alpha", "rslora", "warmup", "clip", "best_checkpoint", "items")}


def _key(kind, settings, **kw):
    """What a stored run depends on: its file's name is a digest of this."""
    # grid_steps only says which steps the grid runs with; a run's own steps are in "steps"
    # (so a study stored before grid_steps existed is still found)
    skip = {"grid_steps"}
    if settings.suite == "tinytasks":   # so is a study stored before other suites existed
        skip.add("suite")
    if kind == "run" and kw.get("method") != "one_plus_n":
        skip.update(_AFFINITY_FIELDS)
    # the protocol's knobs at the first recipe's values: a run stored before they existed keeps its key
    skip.update(k for k, v in _FIRST_RECIPE.items() if getattr(settings, k) == v)
    fields = {k: v for k, v in asdict(replace(settings, threads=1)).items() if k not in skip}
    return {"kind": kind, "settings": fields, **kw, "setting": settings.setting}


def run_jobs(jobs: list, out: Path, workers: int = 1, progress: bool = True, desc: str = "runs") -> list[dict]:
    """Run (kind, key, settings) jobs, each stored as ``out/runs/*.json``; finished ones are
    read back, not redone.
    """
    todo, done = [], []
    for job in jobs:
        file = _run_file(out, job[0], job[1])
        if file.is_file():
            done.append(json.loads(file.read_text()))
        else:
            todo.append((job, file))
    bar = tqdm(total=len(jobs), initial=len(done), desc=desc, disable=not progress)

    def collect(result, file):
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(file)     # atomic: an interrupted write never looks finished
        done.append(result)
        bar.set_postfix_str(f"{result.get('method', 'affinity')} seed {result['seed']}")
        bar.update()

    if workers <= 1:
        for job, file in todo:
            collect(_job(job), file)
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_job, job): file for job, file in todo}
            for future in as_completed(futures):
                collect(future.result(), futures[future])
    bar.close()
    run_jobs.trained = len(todo)   # how many were trained by this call (the rest were read back)
    return done


def choose_lr(grid_runs: list[dict]) -> dict[str, float]:
    """Per method, the grid's learning rate with the best final validation exact match
    (averaged over tasks; ties go to the smaller rate).
    """
    best: dict[str, tuple] = {}
    for run in grid_runs:
        score = sum(run["validation"].values()) / len(run["validation"])
        cand = (score, -run["lr"])
        if run["method"] not in best or cand > best[run["method"]][0]:
            best[run["method"]] = (cand, run["lr"])
    return {m: lr for m, (_, lr) in best.items()}


def run_study(out: Path = DEFAULT_OUT, methods: Sequence[str] = tuple(METHODS), seeds: Sequence[int] = SEEDS,
              settings: Settings = Settings(), lr_grid: Sequence[float] = LR_GRID,
              anonymous: Sequence[str] = tuple(ANONYMOUS), affinity_seeds: Optional[Sequence[int]] = None,
              ablation_seeds: Optional[Sequence[int]] = None, anonymous_seeds: Optional[Sequence[int]] = None,
              workers: int = 1, progress: bool = True) -> dict:
    """The whole study: learning-rate grid (first seed), every method and seed at its chosen
    rate, the anonymous-prompt table, the affinity measures. Returns the runs, by part.

    ``seeds`` serve the baselines; ablations and sweep points use ``ablation_seeds``, the
    anonymous table ``anonymous_seeds`` and the affinity study ``affinity_seeds`` (each
    defaulting to ``seeds``): a way to shrink the study where time is short, said in results.md.
    """

    methods = check_methods(methods)
    n_tasks = len(suite(settings.suite))   # an unknown suite fails here, before any run
    for method in methods:                 # and so does a budget it cannot split
        try:
            METHODS[method].task_rank(settings.rank, n_tasks)
        except ValueError as err:
            raise ValueError(f"--suite {settings.suite} has {n_tasks} tasks, and {method} cannot split "
                             f"--rank {settings.rank} among them: {err}") from None
    out = Path(out)
    named = replace(settings, name_in_prompt=True)
    tuned = [m for m in methods if METHODS[m].tuned]
    # the grid may run fewer steps than the study (Settings.grid_steps) where the hour is short
    on_grid = replace(named, steps=min(named.steps, named.grid_steps)) if named.grid_steps else named
    grid_jobs = [("run", _key("run", on_grid, method=m, seed=seeds[0], lr=lr), on_grid)
                 for m in tuned for lr in lr_grid]
    grid = run_jobs(grid_jobs, out, workers, progress, desc="lr grid")
    trained = run_jobs.trained
    chosen = choose_lr(grid)
    fallback = chosen.get("cgc_lora", lr_grid[len(lr_grid) // 2])
    lr_of = {m: chosen.get(m, chosen.get(METHODS[m].lr_from, fallback)) for m in methods}
    ablation_seeds = list(seeds if ablation_seeds is None else ablation_seeds)
    jobs = [("run", _key("run", named, method=m, seed=s, lr=lr_of[m]), named)
            for m in methods for s in (seeds if METHODS[m].family == "baseline" else ablation_seeds)]
    anon = replace(settings, name_in_prompt=False)
    jobs += [("run", _key("run", anon, method=m, seed=s, lr=lr_of[m]), anon)
             for m in anonymous if m in methods for s in (seeds if anonymous_seeds is None else anonymous_seeds)]
    aff_seeds = list(seeds if affinity_seeds is None else affinity_seeds)
    jobs += [("affinity", _key("affinity", named, seed=s), named) for s in aff_seeds]
    runs = run_jobs(jobs, out, workers, progress, desc="study")
    return {"grid": grid, "lr": lr_of, "lr_grid": list(lr_grid), "trained": trained + run_jobs.trained,
            "runs": [r for r in runs if "method" in r], "affinity": [r for r in runs if "method" not in r]}


# ------------------------------------------------------------- quick rerun
def stored_config(path: Path = DEFAULT_OUT) -> dict:
    """The stored study's ``config.json`` (settings, chosen learning rates, command).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no study at {file}; run `{COMMAND}` (or pass the results folder).")
    return json.loads(file.read_text())


def stored_settings(path: Path = DEFAULT_OUT) -> Settings:
    """The Settings the stored study ran with (from ``config.json``).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    config = stored_config(path)
    return Settings(**{k: v for k, v in config["settings"].items() if k in Settings.__dataclass_fields__})


def quick_run(method: str = "cgc_lora", seed: int = 0, path: Path = DEFAULT_OUT,
              threads: int = 1, setting: str = "anonymous", **overrides) -> pd.DataFrame:
    """Rerun one configuration of the stored study (its settings and chosen lr, one seed).

    ``threads``: torch threads for the run. Two are faster on an idle 2-core machine (the
    CLI's ``--quick`` default), but under ``OMP_WAIT_POLICY=PASSIVE`` a second thread costs
    more than it brings on a model this small.

    ``setting``: "anonymous" (the second table's prompts, ``"cab="``: half as long as the
    instruction prompts, so the same 1200 steps train in under a minute) or "named" (the
    main table's). Returns the long table (`cgc_edu.study.report.runs_table`) of that run.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    if setting not in STUDY_PROMPTS:
        raise ValueError(f"quick_run: setting={setting!r}; choose one of {STUDY_PROMPTS}.")
    config = stored_config(path)
    # no validation curve: the same training, fewer evaluations (curves never change the model)
    settings = replace(stored_settings(path), threads=threads, name_in_prompt=setting == "named",
                       **{"curve_points": 0, **overrides})
    return runs_table([run_one(method, seed, config["lr"][method], settings)])


# -------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, among {', '.join(METHODS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    parser.add_argument("--lr-grid", default=",".join(map(str, LR_GRID)), help="learning rates tried (first seed)")
    parser.add_argument("--anonymous", default=",".join(ANONYMOUS),
                        help="methods also run with anonymous prompts ('' for none)")
    parser.add_argument("--affinity-seeds", default=None,
                        help="seeds of the affinity study (default: --seeds; '' for none)")
    parser.add_argument("--ablation-seeds", default=None, help="seeds of ablations and sweep (default: --seeds)")
    parser.add_argument("--anonymous-seeds", default=None, help="seeds of the anonymous table (default: --seeds)")
    defaults = Settings()
    for field in ("steps", "batch_size", "rank", "n_train", "n_low", "n_validation", "n_test",
                  "curve_points", "min_separate_steps", "affinity_warmup"):
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    parser.add_argument("--grid-steps", type=int, default=defaults.grid_steps,
                        help=f"the learning-rate grid's runs train at most this many steps (default "
                             f"{defaults.grid_steps}; 0: as many as --steps)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default 1 per worker; 2 for --quick)")
    parser.add_argument("--affinity", default=defaults.affinity, choices=AFFINITY_METHODS,
                        help="the affinity measure 1+N clusters by")
    parser.add_argument("--task-sampling", default=defaults.task_sampling, choices=("uniform", "data"),
                        help="joint runs: every task an equal share of each batch, or tasks by rows")
    parser.add_argument("--base", default=None, help="central model folder (default: the shipped one)")
    parser.add_argument("--suite", default=defaults.suite,
                        help="the tasks: tinytasks, positions, swaps:P, derangements:L or keys:K "
                             "(see cgc_edu.data.suites)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results folder (default ./results of the working directory)")
    parser.add_argument("--quick", action="store_true",
                        help="rerun one configuration (first of --methods if given, else cgc_lora; first seed; "
                             "--quick-setting prompts) of the study stored in --out and compare it with the stored seeds")
    parser.add_argument("--quick-setting", default="anonymous", choices=STUDY_PROMPTS,
                        help="--quick: anonymous prompts (under a minute) or the main table's instruction prompts")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        method = args.methods.split(",")[0] if args.methods != ",".join(METHODS) else "cgc_lora"
        seed = int(args.seeds.split(",")[0])
        start = time.perf_counter()
        frame = quick_run(method, seed, args.out, threads=args.threads or 2, setting=args.quick_setting)
        check = within_spread(frame, load_results(args.out))
        print(check.round(3).to_string(index=False))
        print(f"quick rerun in {time.perf_counter() - start:.0f} s")
        return frame
    args.grid_steps = args.grid_steps or None
    settings = Settings(threads=args.threads or 1, **{f: getattr(args, f) for f in (
        "steps", "batch_size", "rank", "n_train", "n_low", "n_validation", "n_test", "curve_points",
        "min_separate_steps", "affinity_warmup", "affinity", "task_sampling", "grid_steps", "base",
        "suite")})
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    study = run_study(args.out, args.methods.split(","), seeds, settings,
                      [float(x) for x in args.lr_grid.split(",")],
                      [m for m in args.anonymous.split(",") if m],
                      *[None if v is None else [int(s) for s in v.split(",") if s]
                        for v in (args.affinity_seeds, args.ablation_seeds, args.anonymous_seeds)],
                      workers=args.workers, progress=not args.no_progress)
    wall = time.perf_counter() - start
    # quoted as a shell needs it (an empty value such as --anonymous '' must survive a copy-paste);
    # without --no-progress, which changes what is printed, not what is run
    argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-progress"]
    command = " ".join([COMMAND, *map(shlex.quote, argv)])
    calls = 1
    n_jobs = len(study["grid"]) + len(study["runs"]) + len(study["affinity"])
    if study["trained"] < n_jobs and (args.out / "config.json").is_file():
        # some runs were read back: the study's time is that of the calls that trained them
        previous = stored_config(args.out)
        if previous.get("command") == command:
            before = previous.get("calls", 1)
            wall, calls = ((previous["wall_seconds"], before) if study["trained"] == 0
                           else (previous["wall_seconds"] + wall, before + 1))
    write_report(study, args.out, settings, command, wall, workers=args.workers, calls=calls)
    print(f"{len(study['runs'])} runs in {wall:.0f} s -> {args.out}/results.csv, results.md")
    return study


if __name__ == "__main__":
    main()
