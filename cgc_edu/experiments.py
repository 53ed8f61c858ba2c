"""The paper's comparison on TinyTasks: ``python -m cgc_edu.experiments``.

Every method is trained on the same data, for the same steps, at equal trainable parameters
(``budget="total"``: each adapter bank has the parameters of one LoRA of rank ``--rank``;
1+N splits that budget over its N cluster sets), then scored by exact match per task:

* baselines (as in Song et al. 2024): the central model untouched, one LoRA for all tasks,
  an independent LoRA per task, MoE-LoRA, CGC-LoRA on all tasks, and 1+N (one CGC-LoRA set
  per cluster of the suite);
* ablations of CGC-LoRA: no gate (uniform over S_t), no common experts, no specific experts.
  At equal budget, removing the common experts leaves one private LoRA per task and removing
  the specific ones leaves MoE-LoRA: those two rows are the baselines' runs, named again;
* a sweep of (n_common, n_specific).

Writes ``results.csv`` (one row per method, seed and task: the config, exact match, trainable
parameters, wall time), ``config.json`` and ``results.md`` (mean ± standard deviation over
seeds, laid out like the paper's tables). ``--quick`` reruns one configuration of the stored
study (same settings) in under a minute, to compare with it.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import AdapterConfig

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
COMMAND = "python -m cgc_edu.experiments"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a point (n_common, n_specific, gate) of the layer family.

    ``kind``: "central" (no adapter), "adapters" (one bank for all tasks) or "one_plus_n"
    (one bank per cluster, the budget split over the clusters).

    Taught in: notebooks/07_experiments.ipynb.
    """

    name: str
    label: str
    family: str            # "baseline", "ablation" or "sweep"
    kind: str = "adapters"
    n_common: int = 0
    n_specific: int = 0
    gate: str = "task"

    def config(self, rank: int, n_tasks: int, alpha: Optional[float] = None) -> AdapterConfig:
        """The AdapterConfig at total budget ``rank`` (alpha = 2 * rank unless given)."""
        return AdapterConfig(rank=rank, alpha=float(alpha if alpha is not None else 2 * rank),
                             n_common=self.n_common, n_specific=self.n_specific, n_tasks=n_tasks,
                             gate=self.gate, budget="total")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("central", "central model (no adapter)", "baseline", kind="central"),
    Method("lora", "LoRA (one for all tasks)", "baseline", n_common=1, gate="uniform"),
    Method("independent", "independent LoRA per task", "baseline", n_specific=1, gate="uniform"),
    Method("moe_lora", "MoE-LoRA (4 experts)", "baseline", n_common=4),
    Method("cgc_lora", "CGC-LoRA (4 common + 1 specific)", "baseline", n_common=4, n_specific=1),
    Method("one_plus_n", "1+N: CGC-LoRA per cluster (2 + 1)", "baseline", kind="one_plus_n",
           n_common=2, n_specific=1),
    Method("cgc_no_gate", "CGC-LoRA without gate (uniform)", "ablation", n_common=4, n_specific=1,
           gate="uniform"),
    Method("cgc_c0_s3", "CGC-LoRA 0 common + 3 specific", "sweep", n_common=0, n_specific=3),
    Method("cgc_c8_s2", "CGC-LoRA 8 common + 2 specific", "sweep", n_common=8, n_specific=2),
    Method("cgc_c16_s1", "CGC-LoRA 16 common + 1 specific", "sweep", n_common=16, n_specific=1),
]}
#: Ablations that are, at equal budget, baselines already run: row name -> (label, run).
ALIASES = {
    "cgc_no_common": ("CGC-LoRA without common experts (= independent LoRA)", "independent"),
    "cgc_no_specific": ("CGC-LoRA without specific experts (= MoE-LoRA)", "moe_lora"),
}
#: Points of the (n_common, n_specific) sweep, including the baselines that are such points.
SWEEP = ["independent", "cgc_c0_s3", "moe_lora", "cgc_lora", "cgc_c8_s2", "cgc_c16_s1"]


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides the method and the seed.

    Taught in: notebooks/07_experiments.ipynb.
    """

    steps: int = 300
    lr: float = 1e-2
    batch_size: int = 32
    rank: int = 24
    n_train: int = 2000
    n_low: int = 50
    n_test: int = 100
    base: Optional[str] = None      # central model folder; None: the shipped one
    threads: int = 2


def _check(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose among {list(METHODS)}.")
    return list(methods)


def run_one(method: str, seed: int, settings: Settings = Settings()) -> list[dict]:
    """Train and evaluate one method with one seed (data, initialisation and batch order).

    Returns one dict per task: the method's config, exact match, trainable parameters and
    the seconds spent training and evaluating.

    Taught in: notebooks/07_experiments.ipynb.
    """
    from .data import build_tokenizer, make_tiny_tasks
    from .framework import OnePlusN, prior_clusters
    from .injection import add_adapters, trainable_parameters
    from .models import load_central_model
    from .train import evaluate, train
    from .utils import seed_everything

    spec = METHODS[_check([method])[0]]
    torch.set_num_threads(settings.threads)
    seed_everything(seed)
    data = make_tiny_tasks(seed=seed, n_train=settings.n_train, n_low=settings.n_low,
                           n_validation=0, n_test=settings.n_test)
    tok = build_tokenizer()
    base = load_central_model(settings.base)
    n_tasks = len(set(data["train"]["task"]))
    start = time.perf_counter()
    params, clusters = 0, {}
    if spec.kind == "central":
        model, scorer = base, lambda test: evaluate(base, test, tok)
    elif spec.kind == "one_plus_n":
        clusters = prior_clusters(data["train"])
        configs = {c: spec.config(settings.rank // len(clusters), len(t)) for c, t in clusters.items()}
        fw = OnePlusN(base, clusters, configs, tokenizer=tok, seed=seed)
        fw.train(data["train"], steps=settings.steps, lr=settings.lr,
                 batch_size=settings.batch_size, seed=seed, progress=False)
        params = sum(trainable_parameters(s) for s in fw.sets.values())
        scorer = fw.evaluate
    else:
        model = add_adapters(base, spec.config(settings.rank, n_tasks))
        train(model, data["train"], tok, steps=settings.steps, lr=settings.lr,
              batch_size=settings.batch_size, seed=seed, progress=False)
        params = trainable_parameters(model)
        scorer = lambda test: evaluate(model, test, tok)
    trained = time.perf_counter()
    table = scorer(data["test"]).drop(index="average")
    done = time.perf_counter()
    cluster_of = dict(zip(data["test"]["task"], data["test"]["cluster"]))
    return [{
        "method": spec.name, "label": spec.label, "family": spec.family, "seed": seed,
        "task": task, "cluster": cluster_of[task], "exact_match": float(row["exact_match"]),
        "n": int(row["n"]), "trainable_params": params,
        "train_seconds": round(trained - start, 2), "eval_seconds": round(done - trained, 2),
        "n_common": spec.n_common, "n_specific": spec.n_specific, "gate": spec.gate,
        "n_sets": max(1, len(clusters)), **{k: v for k, v in asdict(settings).items()
                                           if k not in ("base", "threads")},
    } for task, row in table.iterrows()]


def _run_job(job):
    method, seed, settings = job
    return run_one(method, seed, settings)


def run_study(methods: Sequence[str] = tuple(METHODS), seeds: Sequence[int] = (0, 1, 2),
              settings: Settings = Settings(), workers: int = 1, progress: bool = True,
              out: Optional[Path] = None) -> pd.DataFrame:
    """Run every (method, seed); return the long results table (one row per task).

    ``workers`` > 1 runs jobs in parallel processes (each with ``settings.threads`` threads).
    With ``out``, rows are appended to ``out/results.partial.csv`` as runs finish.

    Taught in: notebooks/07_experiments.ipynb.
    """
    jobs = [(m, s, settings) for s in seeds for m in _check(methods)]
    rows: list[dict] = []
    bar = tqdm(total=len(jobs), desc="runs", disable=not progress)
    partial = None
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        partial = Path(out) / "results.partial.csv"
        partial.unlink(missing_ok=True)

    def collect(result):
        rows.extend(result)
        if partial is not None:
            pd.DataFrame(result).to_csv(partial, mode="a", header=not partial.exists(), index=False)
        avg = sum(r["exact_match"] for r in result) / len(result)
        bar.set_postfix_str(f"{result[0]['method']} seed {result[0]['seed']}: {avg:.3f}")
        bar.update()

    if workers <= 1:
        for job in jobs:
            collect(_run_job(job))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_run_job, job) for job in jobs]):
                collect(future.result())
    bar.close()
    frame = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(methods)}
    frame = frame.sort_values(["method", "seed"], key=lambda c: c.map(order) if c.name == "method" else c,
                              kind="stable").reset_index(drop=True)
    return frame


# ----------------------------------------------------------------- tables
def per_seed_average(results: pd.DataFrame) -> pd.DataFrame:
    """Mean exact match over tasks, per method and seed (the paper's "average" column)."""
    return results.groupby(["method", "seed"], sort=False)["exact_match"].mean().rename("average").reset_index()


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per method, for every task and the average.

    Returns columns ``method, task, mean, std, min, max, n_seeds``.

    Taught in: notebooks/07_experiments.ipynb.
    """
    avg = per_seed_average(results).rename(columns={"average": "exact_match"}).assign(task="average")
    both = pd.concat([results[["method", "seed", "task", "exact_match"]], avg], ignore_index=True)
    stats = both.groupby(["method", "task"], sort=False)["exact_match"].agg(
        mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0, min="min", max="max",
        n_seeds="size")
    return stats.reset_index()


def _cell(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _table(results: pd.DataFrame, rows: list[tuple[str, str]], with_tasks: bool = True) -> str:
    stats = summary(results).set_index(["method", "task"])
    tasks = list(pd.unique(results["task"])) if with_tasks else []
    params = results.groupby("method")["trainable_params"].first()
    header = ["method", *tasks, "average", "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, run in rows:
        if run not in params.index:
            continue
        cells = [_cell(*stats.loc[(run, t), ["mean", "std"]]) for t in [*tasks, "average"]]
        lines.append("| " + " | ".join([label, *cells, f"{int(params[run]):,}"]) + " |")
    return "\n".join(lines)


def markdown_tables(results: pd.DataFrame, settings: Optional[dict] = None, command: str = COMMAND) -> str:
    """The results as Markdown: main comparison, ablations and the expert sweep.

    Cells are exact match in percent, mean ± standard deviation over seeds.

    Taught in: notebooks/07_experiments.ipynb.
    """
    labels = {m.name: m.label for m in METHODS.values()}
    seeds = sorted(results["seed"].unique())
    parts = ["# CGC-LoRA on TinyTasks", "",
             f"Exact match (%) on the test split, mean ± standard deviation over {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))}); each seed draws the data, the initialisation and the "
             "batch order. All adapters have the same trainable budget (one LoRA of rank "
             f"{results['rank'].iloc[0]}, gates aside).", "",
             f"Produced by: `{command}`", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    parts += ["## Comparison with the baselines", "",
              _table(results, [(labels[m], m) for m, s in METHODS.items() if s.family == "baseline"]), "",
              "## Ablations of CGC-LoRA", "",
              _table(results, [(labels["cgc_lora"], "cgc_lora"), (labels["cgc_no_gate"], "cgc_no_gate")]
                     + [(label, run) for label, run in ALIASES.values()]), "",
              "At equal budget, CGC-LoRA without common experts is one private LoRA per task, and "
              "without specific experts it is MoE-LoRA: those rows reuse the baselines' runs.", "",
              "## Sweep of the number of common and specific experts", "",
              _table(results, [(f"{METHODS[m].n_common} common + {METHODS[m].n_specific} specific"
                                + (" (gate: uniform)" if METHODS[m].gate == "uniform" else ""), m)
                               for m in SWEEP], with_tasks=False), ""]
    return "\n".join(parts)


def load_results(path: Path = RESULTS_DIR) -> pd.DataFrame:
    """The stored study (``results/results.csv``) as a DataFrame.

    Taught in: notebooks/07_experiments.ipynb.
    """
    file = Path(path) / "results.csv" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no results at {file}; run `{COMMAND}` to produce them.")
    return pd.read_csv(file)


def stored_settings(path: Path = RESULTS_DIR) -> Settings:
    """The Settings the stored study ran with (from ``results/config.json``)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return Settings(**{k: v for k, v in config["settings"].items() if k in Settings.__dataclass_fields__})


def quick_run(method: str = "cgc_lora", seed: int = 0, path: Path = RESULTS_DIR,
              progress: bool = False, **overrides) -> pd.DataFrame:
    """Rerun one configuration of the stored study (its settings, one seed): under a minute.

    Taught in: notebooks/07_experiments.ipynb.
    """
    settings = replace(stored_settings(path), **overrides)
    return run_study([method], [seed], settings, workers=1, progress=progress)


def within_spread(run: pd.DataFrame, stored: pd.DataFrame, tolerance: float = 0.02) -> pd.DataFrame:
    """Compare a rerun's per-seed average with the stored seeds' range, per method.

    Returns columns ``method, rerun, stored_min, stored_max, ok`` (ok: the rerun lies in the
    stored min..max, widened by ``tolerance``).

    Taught in: notebooks/07_experiments.ipynb.
    """
    mine = per_seed_average(run).groupby("method")["average"].mean()
    theirs = per_seed_average(stored).groupby("method")["average"].agg(["min", "max"])
    out = pd.DataFrame({"rerun": mine, "stored_min": theirs["min"].reindex(mine.index),
                        "stored_max": theirs["max"].reindex(mine.index)})
    out["ok"] = (out["rerun"] >= out["stored_min"] - tolerance) & (out["rerun"] <= out["stored_max"] + tolerance)
    return out.reset_index(names="method")


# -------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, among {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--rank", type=int, default=Settings.rank, help="total budget: one LoRA of this rank")
    parser.add_argument("--n-train", type=int, default=Settings.n_train, help="training examples per task")
    parser.add_argument("--n-low", type=int, default=Settings.n_low, help="training examples per low-data task")
    parser.add_argument("--n-test", type=int, default=Settings.n_test, help="test examples per task")
    parser.add_argument("--base", default=None, help="central model folder (default: the shipped one)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.csv, config.json, results.md (default results/; "
                             "with --quick nothing is written unless given)")
    parser.add_argument("--quick", action="store_true",
                        help="rerun one configuration (--methods, default cgc_lora; seed 0) of the stored "
                             "study with its settings and compare with it")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress = not args.no_progress
    if args.quick:
        method = args.methods if args.methods != ",".join(METHODS) else "cgc_lora"
        seed = int(args.seeds.split(",")[0])
        frame = quick_run(method, seed, progress=progress)
        print(frame.pivot_table(index="task", columns="method", values="exact_match", sort=False).round(3))
        print(within_spread(frame, load_results()).round(3).to_string(index=False))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            frame.to_csv(args.out / "quick.csv", index=False)
        return frame
    settings = Settings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, rank=args.rank,
                        n_train=args.n_train, n_low=args.n_low, n_test=args.n_test, base=args.base, threads=args.threads)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    out = args.out or RESULTS_DIR
    start = time.perf_counter()
    frame = run_study(methods, seeds, settings, workers=args.workers, progress=progress, out=out)
    wall = time.perf_counter() - start
    frame.to_csv(out / "results.csv", index=False)
    (out / "results.partial.csv").unlink(missing_ok=True)
    from .framework import base_fingerprint
    from .models import load_central_model
    shown = {k: v for k, v in asdict(settings).items() if k not in ("base", "threads")}
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    config = {"command": command, "settings": asdict(settings), "methods": methods, "seeds": seeds,
              "workers": args.workers, "wall_seconds": round(wall, 1),
              "base_fingerprint": base_fingerprint(load_central_model(settings.base)),
              "versions": {"torch": torch.__version__}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "results.md").write_text(markdown_tables(frame, shown, command))
    print(f"{len(frame)} rows in {wall:.0f} s -> {out}/results.csv, results.md")
    return frame


if __name__ == "__main__":
    main()
