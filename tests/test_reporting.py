"""Reporting of the TinyTasks study: summaries, paired comparisons, premises, collapses, tables."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from cgc_edu.study.report import method_table
from cgc_edu.study.statistics import collapses, convergence, paired_comparison, per_seed_average, premises, summary, within_spread


def fake_results(levels=None, seeds=range(5)):
    levels = levels or {"separate": 0.5, "integrated": 0.2, "cgc_lora": 0.6, "moe_lora": 0.3}
    rows = []
    for m, level in levels.items():
        for seed in seeds:
            for t, task in enumerate(["a", "b"]):
                rows.append({"setting": "named", "method": m, "seed": seed, "task": task,
                             "low_data": task == "b", "exact_match": level + 0.1 * t + 0.01 * seed,
                             "trainable_params": 100, "task_rank": 10, "lr": 3e-3})
    return pd.DataFrame(rows)


def test_summary_mean_std_min_max():
    stats = summary(fake_results()).set_index(["method", "task"])
    assert stats.loc[("cgc_lora", "a"), "mean"] == pytest.approx(0.62)
    assert stats.loc[("cgc_lora", "a"), "std"] == pytest.approx(np.std([0.6, 0.61, 0.62, 0.63, 0.64], ddof=1))
    assert stats.loc[("cgc_lora", "average"), "min"] == pytest.approx(0.65)
    assert stats.loc[("cgc_lora", "average"), "max"] == pytest.approx(0.69)
    assert stats.loc[("cgc_lora", "average"), "n_seeds"] == 5


def test_paired_comparison_hand_case():
    res = fake_results()
    diffs = [0.1, 0.2, -0.05, 0.1, 0.3]
    # move cgc_lora's per-seed average by a known amount against separate
    base = res[res.method == "separate"].copy()
    shifted = base.assign(method="cgc_lora", exact_match=base.exact_match + base.seed.map(dict(enumerate(diffs))))
    res = pd.concat([res[res.method != "cgc_lora"], shifted])
    out = paired_comparison(res, "cgc_lora", "separate")
    assert out["mean_diff"] == pytest.approx(np.mean(diffs))
    assert (out["wins"], out["losses"], out["ties"]) == (4, 1, 0)
    assert out["sign_p"] == pytest.approx(binomtest(4, 5).pvalue) == pytest.approx(0.375)
    assert min(diffs) <= out["ci_low"] < out["mean_diff"] < out["ci_high"] <= max(diffs)
    with pytest.raises(KeyError, match="no runs of \\['nope'\\]"):
        paired_comparison(res, "nope", "separate")


def test_premises_seesaw_and_low_data_gain():
    res = fake_results()
    found = premises(res)
    assert found["seesaw"] == ["a", "b"]          # integrated 0.2..0.34 below separate 0.5..0.64
    assert ("b", "cgc_lora") in found["low_data_gain"] and ("b", "moe_lora") not in found["low_data_gain"]
    close = fake_results({"separate": 0.5, "integrated": 0.48, "cgc_lora": 0.52})
    assert premises(close) == {"seesaw": [], "low_data_gain": []}   # within the seed spread


def test_premises_without_their_methods_are_not_measured_rather_than_not_seen():
    alone = fake_results({"separate": 0.5})
    assert premises(alone) == {"seesaw": None, "low_data_gain": None}
    no_integrated = fake_results({"separate": 0.5, "cgc_lora": 0.6})
    assert premises(no_integrated) == {"seesaw": None, "low_data_gain": [("b", "cgc_lora")]}
    no_low_data = fake_results().assign(low_data=False)     # a suite without low-data tasks
    assert premises(no_low_data) == {"seesaw": ["a", "b"], "low_data_gain": None}


def test_a_report_of_part_of_the_study_says_what_it_did_not_measure():
    """A study of the independent models alone (results/controls/) must not print empty
    ablation tables, list affinity files it never wrote, or call an unmeasured premise
    'not seen'."""
    from dataclasses import asdict

    from cgc_edu.study.methods import Settings
    from cgc_edu.study.report import markdown_report

    results = fake_results({"separate": 0.5})
    grid = pd.DataFrame({"method": ["separate"], "lr": [3e-3], "validation": [0.5], "chosen": [True]})
    config = {"command": "python -m cgc_edu.study --methods separate", "wall_seconds": 60.0,
              "workers": 1, "lr": {"separate": 3e-3}, "lr_grid": [3e-3],
              "settings": asdict(Settings())}
    text = markdown_report(results, grid, pd.DataFrame(), pd.DataFrame(), config)
    assert "Seesaw (the integrated model's best seed below the independent models' worst): not measured" in text
    assert "**not seen**" not in text
    assert "except the independent models: two LoRAs" in text       # as many as the tasks
    assert "## Ablations" not in text and "affinity" not in text.split("## Files")[1]
    baselines = markdown_report(fake_results(), grid, pd.DataFrame(), pd.DataFrame(), config)
    assert "Seesaw (the integrated model's best seed below the independent " \
        "models' worst): `a`, `b`." in baselines
    assert "## Ablations" not in baselines        # CGC-LoRA without an ablation beside it
    levels = {"separate": 0.5, "integrated": 0.2, "cgc_lora": 0.6, "cgc_no_common": 0.1}
    full = markdown_report(fake_results(levels), grid, pd.DataFrame(), pd.DataFrame(), config)
    assert "## Ablations" in full and "a private expert of rank budget / 2 inside" in full


def test_collapses_name_the_seed_and_the_cause():
    res = fake_results()
    res.loc[(res.method == "moe_lora") & (res.seed == 3), "exact_match"] = 0.0
    curves = pd.DataFrame({"method": "moe_lora", "seed": 3, "step": [100, 200, 300],
                           "validation": [0.5, 0.6, 0.0], "train_loss": [1.0, 0.5, 3.0]})
    col = collapses(res, curves)
    assert list(zip(col["method"], col["seed"])) == [("moe_lora", 3)]
    assert "diverged" in col["cause"].iloc[0]
    assert collapses(fake_results()).empty


def test_collapses_are_measured_from_the_best_seed_and_read_the_methods_own_curves():
    """Two seeds of five learn, three stall: the median is a stalled seed, and a rule
    measured from it would hide all three. Seed 0's grid curves at other rates are not
    its run's."""
    res = fake_results({"integrated": 0.5})
    res.loc[res.seed.isin([0, 3]), "exact_match"] = 1.0
    res["lr"] = 6e-3
    steps = [400, 800, 1200]
    curves = pd.concat([
        pd.DataFrame({"method": "integrated", "seed": s, "lr": lr, "step": steps,
                      "validation": v, "train_loss": loss})
        for s, lr, v, loss in [(1, 6e-3, [0.4, 0.45, 0.5], [0.4, 0.3, 0.3]),
                               (2, 6e-3, [0.0, 0.0, 0.0], [3.1, 3.0, 2.9]),
                               (4, 6e-3, [0.4, 0.5, 0.5], [0.4, 0.3, 0.3]),
                               (4, 2.4e-2, [0.9, 0.0, 0.0], [0.2, 3.0, 3.0])]])  # another rate
    col = collapses(res, curves).set_index("seed")
    assert list(col.index) == [1, 2, 4] and (col["best_seed"] == 1.0).all()
    assert "did not reach the solution" in col.loc[1, "cause"]
    assert "learned nothing" in col.loc[2, "cause"] and "3.10 then 2.90" in col.loc[2, "cause"]
    assert "did not reach the solution" in col.loc[4, "cause"]     # not the other rate's divergence


def test_within_spread():
    res = fake_results()
    rerun = res[(res.method == "cgc_lora") & (res.seed == 1)]
    check = within_spread(rerun, res)
    assert check["ok"].all() and check["rerun"].iloc[0] == pytest.approx(0.66)
    off = rerun.assign(exact_match=rerun.exact_match + 0.2)
    assert not within_spread(off, res)["ok"].any()


def test_method_table_row():
    text = method_table(fake_results(), ["cgc_lora", "separate"])
    assert "| CGC-LoRA (4 common + 1 specific) | 62.0 ± 1.6 | 72.0 ± 1.6 | **67.0 ± 1.6** (65.0..69.0) | 100 | 10 | 0.003 |" in text
    assert "b (low)" in text.splitlines()[0]
    assert per_seed_average(fake_results()).shape == (20, 4)


def test_convergence_hand_case():
    """Two seeds of a method at its chosen rate (and one run at another rate, ignored)."""
    rows = []
    for seed, values in [(0, [0.2, 0.5, 0.6, 0.7, 0.7, 0.7]), (1, [0.1, 0.3, 0.5, 0.6, 0.8, 0.9])]:
        rows += [{"setting": "named", "method": "m", "seed": seed, "lr": 0.01, "step": 10 * (i + 1),
                  "validation": v} for i, v in enumerate(values)]
    rows += [{"setting": "named", "method": "m", "seed": 0, "lr": 0.1, "step": 60, "validation": 0.0}]
    rows += [{"setting": "anonymous", "method": "m", "seed": 0, "lr": 0.01, "step": 60, "validation": 0.0}]
    got = convergence(pd.DataFrame(rows), {"m": 0.01})
    # steps 10..60: half-way is step 30, two thirds is step 40
    assert got.loc["m", "last_half"] == pytest.approx(((0.7 - 0.6) + (0.9 - 0.5)) / 2)
    assert got.loc["m", "last_third"] == pytest.approx(((0.7 - 0.7) + (0.9 - 0.6)) / 2)


def test_a_study_of_untuned_methods_alone_reports_without_a_grid():
    """`--methods cgc_uniform --lr-grid 0.012` runs no grid: it must still report (it
    failed with KeyError: 'method')."""
    from dataclasses import asdict

    from cgc_edu.study.methods import Settings
    from cgc_edu.study.report import markdown_report
    from cgc_edu.study.statistics import grid_table

    grid = grid_table([], {"cgc_uniform": 0.012})
    assert list(grid.columns) == ["method", "lr", "validation", "chosen"] and not len(grid)
    config = {"command": "python -m cgc_edu.study --methods cgc_uniform --lr-grid 0.012",
              "wall_seconds": 60.0, "workers": 1, "lr": {"cgc_uniform": 0.012},
              "lr_grid": [0.012], "settings": asdict(Settings())}
    text = markdown_report(fake_results({"cgc_uniform": 0.5}), grid, pd.DataFrame(),
                           pd.DataFrame(), config)
    assert "No grid ran" in text and "0.012" in text.split("No grid ran")[1].split("\n")[0]


def test_stored_results_load_and_older_method_names_are_read_as_the_studys(tmp_path):
    from cgc_edu.methods import METHODS
    from cgc_edu.study.methods import check_methods
    from cgc_edu.study.statistics import load_results

    stored = load_results(Path(__file__).resolve().parent.parent / "results")
    assert set(stored["method"]) <= set(METHODS)
    older = fake_results({"independent": 0.5, "lora": 0.2, "cgc_no_gate": 0.4})
    older.to_csv(tmp_path / "results.csv", index=False)
    read = set(load_results(tmp_path)["method"])
    assert read == {"separate", "integrated", "cgc_uniform"}
    assert check_methods(["lora", "cgc_lora"]) == ["integrated", "cgc_lora"]
