"""The study's numbers: the long table of runs, per-seed averages, paired comparisons with
bootstrap intervals and sign tests, the premises, collapses, convergence, and the stored
results read back.

Everything here reads runs (the dicts `cgc_edu.study.runner.run_one` returns, stored as JSON)
or the long table built from them (`runs_table`, one row per setting, method, seed and task).

Taught in: notebooks/12_appendix_controls.ipynb.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from ..methods import METHODS, method_name

DEFAULT_OUT = Path("results")
# the comparisons the study makes: (method, baseline)
PAIRS = [("cgc_lora", b) for b in ("separate", "integrated", "moe_lora", "cgc_uniform")] + \
        [("one_plus_n", b) for b in ("separate", "integrated", "moe_lora", "cgc_lora", "one_plus_n_designed")]
COLLAPSE = 0.3   # a seed this far (exact match) below the method's best seed is a collapse



# -------------------------------------------------------------- tables
def runs_table(runs: Sequence[dict]) -> pd.DataFrame:
    """The long table: one row per setting, method, seed and task, with exact match on test
    and validation, lr, trainable parameters, the rank a task sees, clusters and seconds.
    """
    rows = []
    for run in runs:
        spec = METHODS[run["method"]]
        for task in run["tasks"]:
            rows.append({
                "setting": run["setting"], "method": run["method"], "label": spec.label,
                "family": spec.family, "seed": run["seed"], "lr": run["lr"], "task": task,
                "cluster": run["cluster_of"][task], "low_data": task in run["low_data"],
                "exact_match": run["test"][task], "n": run["n_test"][task],
                "validation": run["validation"][task], "trainable_params": run["trainable_params"],
                "task_rank": run["task_rank"], "n_common": spec.n_common, "n_specific": spec.n_specific,
                "gate": spec.gate, "kind": spec.kind,
                "clusters": json.dumps(run["clusters"]) if "clusters" in run else "",
                "ari": run.get("ari", np.nan), "train_seconds": run["train_seconds"],
                "eval_seconds": run["eval_seconds"],
                **{k: v for k, v in run["settings"].items() if k not in ("base", "threads", "name_in_prompt")}})
    return pd.DataFrame(rows)


def curves_table(runs: Sequence[dict]) -> pd.DataFrame:
    """Validation curves: setting, method, seed, lr, step, validation exact match (average
    over tasks) and the training loss at that point.
    """
    rows = []
    for run in runs:
        for share, scores in run["curve"]:
            tasks = {t: v for t, v in scores.items() if not t.startswith("_")}
            if len(tasks) < len(run["tasks"]):
                continue   # separately trained parts: wait until every part has a point
            rows.append({"setting": run["setting"], "method": run["method"], "seed": run["seed"],
                         "lr": run["lr"], "step": round(share * run["settings"]["steps"]),
                         "validation": float(np.mean(list(tasks.values()))),
                         "train_loss": scores.get("_loss", np.nan)})
    return pd.DataFrame(rows)


def convergence(curves: pd.DataFrame, lr: dict, setting: str = "named") -> pd.DataFrame:
    """How much each method's validation average still moved near the end of training, at
    its chosen rate ``lr[method]``, in the study's ``setting`` (`rise` on those curves).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    return rise(curves[(curves["setting"] == setting)
                       & (curves["lr"] == curves["method"].map(lr))])


def rise(curves: pd.DataFrame) -> pd.DataFrame:
    """How much each method's validation average still moved near the end of training, mean
    over seeds (in exact-match points, 0..1), from curves of one run per method and seed
    (columns method, seed, step, validation): ``last_half`` is the end minus the point
    nearest mid-run, ``last_third`` the end minus the point nearest two thirds of the run.
    Near 0: the curve is flat (the linear decay of the rate to zero flattens the very end by
    itself, so read both).
    """
    def moved(run, share):
        run = run.groupby("step")["validation"].mean()
        ref = run.index[np.abs(run.index - share * run.index.max()).argmin()]
        return run.iloc[-1] - run[ref]

    rows = [{"method": m, "seed": s, "last_half": moved(run, 1 / 2), "last_third": moved(run, 2 / 3)}
            for (m, s), run in curves.groupby(["method", "seed"], sort=False)]
    return pd.DataFrame(rows).groupby("method", sort=False)[["last_half", "last_third"]].mean()


def grid_table(grid: Sequence[dict], chosen: dict) -> pd.DataFrame:
    """The learning-rate grid: method, lr, final validation exact match, chosen or not.
    """
    rows = [{"method": r["method"], "lr": r["lr"],
             "validation": float(np.mean(list(r["validation"].values()))),
             "chosen": chosen.get(r["method"]) == r["lr"]} for r in grid]
    columns = ["method", "lr", "validation", "chosen"]   # a study of untuned methods: no rows
    return (pd.DataFrame(rows, columns=columns).sort_values(["method", "lr"])
            .reset_index(drop=True))


def affinity_table(affinity_runs: Sequence[dict]) -> pd.DataFrame:
    """One row per seed and affinity measure: its adjusted Rand index against the designed
    clusters and the clusters it found.
    """
    rows = [{"seed": r["seed"], "measure": m["method"], "warmup_steps": m["warmup_steps"],
             "clustering": m.get("clustering", ""), "ari": m["ari"],
             "clusters": " | ".join(",".join(ts) for ts in m["clusters"].values()), "seconds": m["seconds"]}
            for r in affinity_runs for m in r["measures"]]
    return pd.DataFrame(rows).sort_values(["measure", "warmup_steps", "clustering", "seed"]).reset_index(drop=True)


def per_seed_average(results: pd.DataFrame) -> pd.DataFrame:
    """Mean exact match over tasks, per (setting,) method and seed (the "average" column).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    keys = [k for k in ("setting", "method", "seed") if k in results.columns]
    return results.groupby(keys, sort=False)["exact_match"].mean().rename("average").reset_index()


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds, per method, for each task and the
    average. Returns columns ``method, task, mean, std, min, max, n_seeds`` (one setting).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    avg = per_seed_average(results).rename(columns={"average": "exact_match"}).assign(task="average")
    both = pd.concat([results[["method", "seed", "task", "exact_match"]],
                      avg[["method", "seed", "task", "exact_match"]]], ignore_index=True)
    stats = both.groupby(["method", "task"], sort=False)["exact_match"].agg(
        mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0, min="min", max="max",
        n_seeds="size")
    return stats.reset_index()


def paired_comparison(results: pd.DataFrame, method: str, baseline: str, n_boot: int = 10000,
                      seed: int = 0) -> dict:
    """``method`` minus ``baseline`` on the average exact match, paired by seed (same data, same
    initialisation seed): mean difference, a bootstrap 95 % interval over the seeds, wins,
    losses and ties, and the two-sided sign test's p-value.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    avg = per_seed_average(results).pivot(index="seed", columns="method", values="average")
    if method not in avg or baseline not in avg:
        raise KeyError(f"paired_comparison: no runs of {[m for m in (method, baseline) if m not in avg]}; "
                       f"methods present: {list(avg.columns)}.")
    diff = (avg[method] - avg[baseline]).dropna().to_numpy()
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    wins, losses = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
    p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
    return {"method": method, "baseline": baseline, "n_seeds": len(diff), "mean_diff": float(diff.mean()),
            "ci_low": float(np.quantile(boot, 0.025)), "ci_high": float(np.quantile(boot, 0.975)),
            "wins": wins, "losses": losses, "ties": len(diff) - wins - losses, "sign_p": float(p)}


def paired_table(results: pd.DataFrame, pairs=PAIRS) -> pd.DataFrame:
    """`paired_comparison` for every pair whose runs are present.
    """
    present = set(results["method"])
    return pd.DataFrame([paired_comparison(results, a, b) for a, b in pairs if {a, b} <= present])


#: the methods that share parameters across tasks, whose low-data gain `premises` looks for
SHARED = ("integrated", "moe_lora", "cgc_lora", "one_plus_n")


def premises(results: pd.DataFrame) -> dict:
    """The two phenomena the suite is built to show, each beyond the seed spread:

    * ``seesaw``: tasks on which the integrated model's best seed is below the independent
      models' worst seed;
    * ``low_data_gain``: (low-data task, shared method) pairs where the shared method's worst
      seed is above the independent models' best seed.

    A premise whose methods (or, for the low-data gain, low-data tasks) the results lack is
    ``None`` (not measured), never ``[]`` (measured and not seen).

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    stats = summary(results).set_index(["method", "task"])
    tasks = [t for t in pd.unique(results["task"])]
    low = sorted(set(results.loc[results["low_data"], "task"])) if "low_data" in results else []
    present = set(results["method"])
    shared = [m for m in SHARED if m in present]
    out = {"seesaw": None, "low_data_gain": None}
    if {"separate", "integrated"} <= present:
        out["seesaw"] = [t for t in tasks if stats.loc[("integrated", t), "max"] < stats.loc[("separate", t), "min"]]
    if "separate" in present and shared and low:
        out["low_data_gain"] = []
        for t in low:
            for m in shared:
                if stats.loc[(m, t), "min"] > stats.loc[("separate", t), "max"]:
                    out["low_data_gain"].append((t, m))
    return out


def collapses(results: pd.DataFrame, curves: Optional[pd.DataFrame] = None, gap: float = COLLAPSE) -> pd.DataFrame:
    """Seeds on which a method's average lies more than ``gap`` below its best seed, with
    what the validation curve and training loss did on that seed (the likely cause).

    Below the best seed, not the median: a method that learns on two seeds of five and
    stalls on three has a stalled median, behind which the three would hide. ``curves`` may
    hold other rates' runs (the grid's): each method's are read at its rate in ``results``.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    avg = per_seed_average(results)
    rate = results.groupby("method")["lr"].first() if "lr" in results else pd.Series(dtype=float)
    rows = []
    for method, group in avg.groupby("method", sort=False):
        best = group["average"].max()
        for _, row in group[group["average"] < best - gap].iterrows():
            cause = "unknown"
            if curves is not None:
                c = curves[(curves["method"] == method) & (curves["seed"] == row["seed"])]
                if method in rate and "lr" in c:
                    c = c[np.isclose(c["lr"], rate[method])]
                c = c.sort_values("step")
                if len(c):
                    peak, last = c["validation"].max(), c["validation"].iloc[-1]
                    loss = c["train_loss"].to_numpy()
                    if peak > last + 0.2:
                        cause = (f"validation peaked at {100 * peak:.0f} % then fell to {100 * last:.0f} %: "
                                 "training diverged (learning rate too high for this seed)")
                    elif np.nanmin(loss) < loss[-1] - 0.1:
                        cause = f"training loss rose from {np.nanmin(loss):.2f} to {loss[-1]:.2f}: training diverged"
                    elif peak == 0:
                        cause = (f"validation 0 % at every point, training loss {loss[0]:.2f} then "
                                 f"{loss[-1]:.2f}: this seed learned nothing")
                    else:
                        cause = (f"validation stayed at or below {100 * peak:.0f} % with final training loss "
                                 f"{loss[-1]:.2f}: training did not reach the solution on this seed (too few steps or too small a rate)")
            rows.append({"method": method, "seed": int(row["seed"]), "average": row["average"],
                         "best_seed": best, "cause": cause})
    return pd.DataFrame(rows, columns=["method", "seed", "average", "best_seed", "cause"])


def load_results(path: Path = DEFAULT_OUT) -> pd.DataFrame:
    """The stored study's long table (``results.csv``) as a DataFrame.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    file = Path(path) / "results.csv" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no results at {file}; run `python -m cgc_edu.study --out {Path(path)}` "
                                "to produce them, or pass the results folder.")
    results = pd.read_csv(file)
    results["method"] = results["method"].map(method_name)   # older names: today's
    return results


def within_spread(run: pd.DataFrame, stored: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Compare a rerun's per-seed average with the stored seeds' min..max, per method (and
    setting). Returns ``method, rerun, stored_min, stored_max, ok`` (``ok``: inside the range
    widened by ``tolerance``). On the machine that stored the study a rerun repeats its seed
    exactly; other CPU kernels (checked with ``ATEN_CPU_CAPABILITY=default``, one thread)
    moved CGC-LoRA's seed 0 by 3.3 points and seed 4 by 1.6, so the default widens the range
    by 5 points.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    def averages(frame):
        if "setting" not in frame:
            frame = frame.assign(setting="named")
        return per_seed_average(frame)

    mine = averages(run).groupby(["setting", "method"])["average"].mean()
    theirs = averages(stored).groupby(["setting", "method"])["average"].agg(["min", "max"])
    outcome = pd.DataFrame({"rerun": mine, "stored_min": theirs["min"].reindex(mine.index),
                            "stored_max": theirs["max"].reindex(mine.index)})
    outcome["ok"] = (outcome["rerun"] >= outcome["stored_min"] - tolerance) & \
                    (outcome["rerun"] <= outcome["stored_max"] + tolerance)
    return outcome.reset_index()
