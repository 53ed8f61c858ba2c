"""The study's report: Markdown tables and figures of the TinyTasks study
(`cgc_edu.study.runner`), built from the numbers of `cgc_edu.study.statistics`. It writes ``results.csv``, ``lr_grid.csv``, ``curves.csv``, ``affinity.csv``,
``config.json``, ``results.md`` and the figures into a results folder.

Taught in: notebooks/12_appendix_controls.ipynb.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..framework.oneplusn import base_fingerprint
from ..models.central import load_central_model
from ..methods import METHODS
from .methods import ANONYMOUS, SWEEP, method_labels
from .statistics import (
    COLLAPSE,
    affinity_table,
    collapses,
    convergence,
    curves_table,
    grid_table,
    paired_table,
    per_seed_average,
    premises,
    runs_table,
    summary,
)


# ------------------------------------------------------------ Markdown
def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def method_table(results: pd.DataFrame, methods: Sequence[str], with_tasks: bool = True,
                 names: Optional[Mapping[str, str]] = None) -> str:
    """A Markdown table: per task mean ± std, the average as mean ± std (min..max), trainable
    parameters, the rank a task sees and the learning rate. ``names``: each row's name by
    method (default: its label, with the study's sizes; e.g. the short names instead).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    labels = {**method_labels(), **(names or {})}
    stats = summary(results).set_index(["method", "task"])
    tasks = list(pd.unique(results["task"])) if with_tasks else []
    low = set(results.loc[results["low_data"], "task"]) if "low_data" in results else set()
    info = results.groupby("method")[["trainable_params", "task_rank", "lr"]].first()
    header = ["method", *[f"{t}{' (low)' if t in low else ''}" for t in tasks], "average (min..max)",
              "trainable params", "rank per task", "lr"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in methods:
        if m not in info.index:
            continue
        cells = [f"{_pct(stats.loc[(m, t), 'mean'])} ± {_pct(stats.loc[(m, t), 'std'])}" for t in tasks]
        a = stats.loc[(m, "average")]
        cells.append(f"**{_pct(a['mean'])} ± {_pct(a['std'])}** ({_pct(a['min'])}..{_pct(a['max'])})")
        lr = "-" if info.loc[m, "trainable_params"] == 0 else f"{info.loc[m, 'lr']:g}"
        lines.append("| " + " | ".join([labels[m], *cells, f"{int(info.loc[m, 'trainable_params']):,}",
                                        str(int(info.loc[m, "task_rank"])), lr]) + " |")
    return "\n".join(lines)


def _seeds_note(results: pd.DataFrame, methods) -> str:
    seeds = sorted(results[results["method"].isin(methods)]["seed"].unique())
    return f"Seeds of these rows: {', '.join(map(str, seeds))}." if seeds else ""


def _frame_md(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _in_words(n: int) -> str:
    """A count as prose writes it: words up to ten, digits above."""
    words = "zero one two three four five six seven eight nine ten".split()
    return words[n] if n < len(words) else str(n)


def markdown_report(results: pd.DataFrame, grid: pd.DataFrame, curves: pd.DataFrame,
                    affinity: pd.DataFrame, config: dict) -> str:
    """The whole study as Markdown (the content of ``results.md``).
    """
    labels = method_labels()
    named = results[results["setting"] == "named"]
    anon = results[results["setting"] == "anonymous"]
    seeds = sorted(named["seed"].unique())
    n_tasks = named["task"].nunique()
    s = config["settings"]
    baselines = [m for m, spec in METHODS.items() if spec.family == "baseline"]
    suite = s.get("suite", "tinytasks")
    title = "TinyTasks" if suite == "tinytasks" else f"the suite `{suite}` (`cgc_edu.data.suites`)"
    parts = [f"# CGC-LoRA and 1+N on {title}", "",
             f"Produced by: `{config['command']}` ({config['wall_seconds'] / 60:.0f} min"
             + (f" in {config['calls']} calls" if config.get("calls", 1) > 1 else "") + ", "
             f"{config['workers']} workers"
             + (f"; its runs take {config['run_seconds'] / 60:.0f} core-minutes in all, "
                f"{config['run_seconds'] / 60 / config['workers']:.0f} min shared by {config['workers']} workers"
                if config.get("run_seconds") else "") + f"). Exact match (%) on the test split ({s['n_test']} examples per "
             f"task), mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}); each seed "
             "draws the data, the initialisation and the batch order. Joint runs train "
             f"{s['steps']} steps of batch {s['batch_size']}"
             + (", every task an equal share of each batch ("
                + (f"a low-data task's {s['n_low']} rows recur, a data-rich task's {s['n_train']} are sampled"
                   if results["low_data"].any() else f"each task's {s['n_train']} rows are sampled")
                + "); separately trained "
                "models and 1+N's cluster sets share those steps in proportion to their tasks"
                if s.get("task_sampling", "data") == "uniform" else
                "; separately trained models and 1+N's cluster sets share those steps in proportion to "
                "their rows")
             + f" (a separate model at least {s['min_separate_steps']}). Adapter banks have the budget of one LoRA of rank {s['rank']} "
             f"(gates aside), except the independent models: {_in_words(n_tasks)} LoRAs, "
             "each of the rank a task sees in "
             "CGC-LoRA.", ""]
    parts += ["## Learning rates", "",
              f"Chosen per method on the validation split ({s['n_validation']} examples per task, final "
              f"exact match averaged over tasks) from the grid {config['lr_grid']}, on seed {seeds[0]}"
              + (f" with runs of {s['grid_steps']} steps" if (s.get("grid_steps") or s["steps"]) < s["steps"] else "") + "; "
              "methods not tuned (ablations, sweep) use CGC-LoRA's rate.", ""]
    if len(grid):
        g = grid.assign(validation=lambda f: (100 * f["validation"]).round(1)).pivot(
            index="method", columns="lr", values="validation")
        g.columns = [f"lr {c:g}" for c in g.columns]
        g.insert(0, "method", [labels[m] for m in g.index])
        g["chosen"] = [f"{config['lr'][m]:g}" for m in g.index]
        parts += [_frame_md(g), ""]
    else:   # only untuned methods ran: they took the grid's middle rate, no grid ran
        rates = ", ".join(f"{labels.get(m, m)} {lr:g}" for m, lr in config["lr"].items())
        parts += [f"No grid ran (no method here is tuned); the rates used: {rates}.", ""]
    parts += ["Validation curves of every run: `curves.png` (the chosen rates, mean over seeds) and `curves.csv`.", ""]
    if len(curves):
        conv = convergence(curves, config["lr"])
        conv = conv.reindex([m for m in labels if m in conv.index])
        conv = (100 * conv).round(1).reset_index()
        conv.insert(0, "label", conv.pop("method").map(labels))
        parts += ["How much the validation average (points) still moved at the end, mean over seeds: the last "
                  "point minus the point nearest half-way and nearest two thirds of training (the rate decays "
                  "linearly to zero, which flattens the very end by itself).", "",
                  _frame_md(conv.rename(columns={"label": "method", "last_half": "last half",
                                                 "last_third": "last third"})), ""]
    parts += ["## Main table: instruction-bearing prompts", "",
              f"Prompts name the task (`{named['task'].iloc[0] if len(named) else 'reverse'}:cab=`), as the "
              "paper's instructions do, so one shared LoRA "
              "(the integrated model) can read what is asked.", "", method_table(named, baselines), ""]
    pairs = paired_table(named)
    if len(pairs):
        p = pairs.assign(**{
            "method": pairs["method"].map(labels), "baseline": pairs["baseline"].map(labels),
            "mean difference (points)": (100 * pairs["mean_diff"]).round(1),
            "bootstrap 95 % CI": [f"{100 * a:.1f}..{100 * b:.1f}" for a, b in zip(pairs["ci_low"], pairs["ci_high"])],
            "wins/losses/ties": [f"{w}/{lo}/{t}" for w, lo, t in zip(pairs["wins"], pairs["losses"], pairs["ties"])],
            "sign test p": pairs["sign_p"].round(3)})
        parts += ["### Paired comparisons (same seed, same data)", "",
                  "Difference of the average exact match, per seed; the bootstrap resamples the seeds. "
                  f"With {len(seeds)} seeds the smallest two-sided sign-test p-value is "
                  f"{2 * 0.5 ** len(seeds):.3f} (with 3 seeds, {2 * 0.5 ** 3:.2f}): the sign test cannot reach "
                  "0.05 with so few seeds; read the interval and the wins.", "",
                  _frame_md(p[["method", "baseline", "n_seeds", "mean difference (points)", "bootstrap 95 % CI",
                               "wins/losses/ties", "sign test p"]]), ""]
    prem = premises(named)

    def found(items, show, needs):
        if items is None:
            return f"not measured (needs {needs})"
        return ", ".join(show(i) for i in items) if items else "**not seen**"

    parts += ["### The suite's premises, beyond the seed spread", "",
              "- Seesaw (the integrated model's best seed below the independent models' worst): "
              + found(prem["seesaw"], lambda t: f"`{t}`", "the integrated and the independent models") + ".",
              "- Sharing helps a low-data task (a shared method's worst seed above the independent models' best): "
              + found(prem["low_data_gain"], lambda tm: f"`{tm[0]}` under {labels[tm[1]]}",
                      "the independent models, a shared method and a low-data task") + ".", ""]
    col = collapses(named, curves[curves["setting"] == "named"] if len(curves) else None)
    parts += ["### Seeds that collapse", ""]
    if len(col):
        c = col.assign(method=col["method"].map(labels), average=(100 * col["average"]).round(1),
                       best_seed=(100 * col["best_seed"]).round(1))
        parts += [f"A seed more than {100 * COLLAPSE:.0f} points below its method's best seed:", "", _frame_md(c), ""]
    else:
        parts += [f"No seed lies more than {100 * COLLAPSE:.0f} points below its method's best seed.", ""]
    if "one_plus_n" in set(named["method"]):
        onp = named[named["method"] == "one_plus_n"].groupby("seed")[["clusters", "ari"]].first()
        parts += ["### Clusters 1+N found", "",
                  f"1+N measures task affinity (`{s['affinity']}`, "
                  + (f"after a joint warm-up of {s['affinity_warmup']} steps" if s["affinity_warmup"]
                     else "at the central model") +
                  ") on each seed's training data and clusters it (complete linkage of the tasks' "
                  "affinity profiles) into as many "
                  f"clusters as the suite designs; adjusted Rand index against the designed clusters: "
                  f"{onp['ari'].mean():.2f} on average ({', '.join(f'{v:.2f}' for v in onp['ari'])}).", ""]
    ablations = ["cgc_lora", "cgc_uniform", "cgc_no_common", "moe_lora", "one_plus_n", "one_plus_n_designed"]
    variants = [m for m, spec in METHODS.items() if spec.family in ("ablation", "sweep")]
    # the section compares CGC-LoRA with its variants: shown when one of them was run
    if set(variants) & set(named["method"]):
        parts += ["## Ablations and the expert sweep (instruction-bearing prompts)", "",
                  method_table(named, ablations), "",
                  "At the same total budget, CGC-LoRA without specific experts (4 + 0) is MoE-LoRA: that "
                  "ablation is the MoE-LoRA row (its own tuned rate). Without common experts each task has a "
                  f"private expert of rank budget / {n_tasks} inside one joint run. "
                  + _seeds_note(named, variants), "",
                  method_table(named, SWEEP, with_tasks=False), ""]
    if len(anon):
        parts += ["## Second table: anonymous prompts", "",
                  "The prompt does not name the task (`cab=`): the same input has a different answer for "
                  "every task, and only the task id that reaches the gates tells them apart. The integrated "
                  "model has no task id: this table shows what routing on a task id adds when the prompt "
                  "hides the task. " + _seeds_note(anon, list(ANONYMOUS)), "",
                  method_table(anon, [m for m in ANONYMOUS]), ""]
    if len(affinity):
        a = affinity.groupby(["measure", "warmup_steps", "clustering"])["ari"].agg(["mean", "std", "min", "max", "size"]).reset_index()
        a = a.rename(columns={"size": "seeds"}).round(2)
        parts += ["## Task affinity against the designed clusters", "",
                  "Adjusted Rand index (1: the designed partition; about 0: chance) of the clusters each "
                  "measure finds (2 clusters), per seed, instruction-bearing prompts. "
                  "`warmup_steps` 0 measures at the bare central model.", "", _frame_md(a), "",
                  "Per seed: `affinity.csv`.", ""]
    with_affinity = len(affinity) > 0     # a study without the affinity part writes no affinity files
    parts += ["## Files", "",
              "`results.csv` (one row per setting, method, seed and task), `lr_grid.csv`, `curves.csv`, "
              + ("`affinity.csv`, " if with_affinity else "")
              + "`config.json` (command, settings, chosen rates, wall time), `runs/` (one "
              "JSON per run: a rerun of the command skips them), figures `curves.png`, `comparison.png`"
              + (", `affinity.png`" if with_affinity else "") + ".", ""]
    return "\n".join(parts)


# ------------------------------------------------------------- figures
def figures(results: pd.DataFrame, curves: pd.DataFrame, affinity: pd.DataFrame, out: Path) -> list[Path]:
    """Write curves.png (validation curves), comparison.png (average per seed and method) and
    affinity.png (adjusted Rand index per measure); return their paths.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = method_labels()
    out = Path(out)
    files = []
    named = curves[curves["setting"] == "named"] if len(curves) else curves
    if len(named):
        chosen = results[results["setting"] == "named"].groupby("method")["lr"].first()
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        for m, lr in chosen.items():
            c = named[(named["method"] == m) & np.isclose(named["lr"], lr)]
            if not len(c):
                continue
            # seeds of separately trained parts have their points at other steps: interpolate
            # every seed onto one grid of steps before taking mean, min and max
            steps = np.linspace(c["step"].min(), c["step"].max(), 8)
            seeds = np.array([np.interp(steps, g.sort_values("step")["step"], g.sort_values("step")["validation"])
                              for _, g in c.groupby("seed")])
            ax.plot(steps, 100 * seeds.mean(axis=0), marker=".", label=labels[m])
            ax.fill_between(steps, 100 * seeds.min(axis=0), 100 * seeds.max(axis=0), alpha=0.12)
        ax.set_xlabel("training step (joint run; separate / per-cluster runs: their share)")
        ax.set_ylabel("validation exact match (%)")
        ax.set_title("Validation curves at the chosen learning rates (mean, min..max over seeds)", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        files.append(out / "curves.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    avg = per_seed_average(results)
    if len(avg):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained",
                                 gridspec_kw={"width_ratios": [3, 1.3]})
        for ax, setting in zip(axes, ["named", "anonymous"]):
            a = avg[avg["setting"] == setting]
            methods = list(pd.unique(a["method"]))
            for i, m in enumerate(methods):
                v = 100 * a[a["method"] == m]["average"].to_numpy()
                ax.bar(i, v.mean(), color="tab:blue", alpha=0.5)
                ax.scatter(np.full(len(v), i), v, color="k", s=8, zorder=3)
            ax.set_xticks(range(len(methods)), [labels[m].split(" (")[0] for m in methods], rotation=60,
                          ha="right", fontsize=7)
            ax.set_ylim(0, 100)
            ax.set_title(f"{setting} prompts" + (": average exact match, each dot a seed"
                                                 if setting == "named" else ""), fontsize=9)
        axes[0].set_ylabel("test exact match (%)")
        files.append(out / "comparison.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    if len(affinity):
        fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
        keys = affinity.groupby(["measure", "warmup_steps", "clustering"])["ari"]
        for i, ((m, w, c), v) in enumerate(keys):
            ax.bar(i, v.mean(), color="tab:green" if "profile" in c else "tab:gray", alpha=0.5)
            ax.scatter(np.full(len(v), i), v, color="k", s=8, zorder=3)
            ax.text(i, -0.55, f"{m}\nwarm-up {w}", ha="center", fontsize=6)
        ax.axhline(0.8, ls="--", color="gray", lw=0.8)
        ax.set_xticks([])
        ax.set_ylim(-0.6, 1.05)
        ax.set_ylabel("adjusted Rand index")
        ax.set_title("Measured vs designed clusters, each dot a seed (gray: average linkage of the affinity; "
                     "green: complete linkage of the profiles; dashed: target 0.8)", fontsize=8)
        files.append(out / "affinity.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


# ---------------------------------------------------------- write / read
def _run_seconds(study: dict) -> float:
    """Seconds of one core that the study's runs took (training and scoring, each run once)."""
    runs = {(r["setting"], r["method"], r["seed"], r["lr"], r["settings"]["steps"]): r
            for r in study["grid"] + study["runs"]}.values()
    return (sum(r["train_seconds"] + r["eval_seconds"] for r in runs)
            + sum(r.get("total_seconds", 0.0) for r in study["affinity"]))


def write_report(study: dict, out: Path, settings, command: str, wall: float, workers: int = 1,
                 calls: int = 1) -> dict:
    """Write every file of the results folder from a `cgc_edu.study.run_study` result.

    ``wall``: the seconds of the ``calls`` calls of ``command`` that trained the runs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = runs_table(study["runs"])
    order = {m: i for i, m in enumerate(method_labels())}
    results = results.sort_values(["setting", "method", "seed"], ascending=[False, True, True],
                                  key=lambda c: c.map(order) if c.name == "method" else c,
                                  kind="stable").reset_index(drop=True)
    # the grid's curves only where its runs have the study's length (Settings.grid_steps)
    same_length = [g for g in study["grid"] if g["settings"]["steps"] == settings.steps]
    curves = curves_table(study["runs"] + same_length).drop_duplicates(["setting", "method", "seed", "lr", "step"])
    grid = grid_table(study["grid"], study["lr"])
    affinity = affinity_table(study["affinity"]) if study["affinity"] else pd.DataFrame()
    config = {"command": command, "settings": {k: v for k, v in asdict(settings).items() if k != "base"},
              "base": settings.base, "lr": study["lr"], "lr_grid": study["lr_grid"],
              "seeds": sorted({r["seed"] for r in study["runs"]}), "workers": workers,
              "wall_seconds": round(wall, 1), "calls": calls,
              "run_seconds": round(_run_seconds(study), 1),
              "base_fingerprint": base_fingerprint(load_central_model(settings.base)),
              "versions": {"torch": torch.__version__}}
    results.to_csv(out / "results.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    grid.to_csv(out / "lr_grid.csv", index=False)
    if len(affinity):
        affinity.to_csv(out / "affinity.csv", index=False)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "results.md").write_text(markdown_report(results, grid, curves, affinity, config))
    figures(results, curves, affinity, out)
    return config
