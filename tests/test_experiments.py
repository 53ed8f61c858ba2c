"""The study runner: methods at their budgets, learning-rate choice, a tiny study end to end
(resumable, results folder of the caller), and the quick rerun against the stored study."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from cgc_edu import AdapterConfig, add_adapters, trainable_parameters
from cgc_edu.study import runner
from cgc_edu.methods import METHODS, expert_rank
from cgc_edu.study.methods import SWEEP, Settings
from cgc_edu.study.runner import _key, choose_lr, main, separate_steps
from cgc_edu.models import central_config

REPO = Path(__file__).resolve().parent.parent


def count(model, gates=False):
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and (".gate." in n) == gates)


def test_budgets_and_the_rank_a_task_sees():
    lora = trainable_parameters(add_adapters(LlamaForCausalLM(central_config()), METHODS["integrated"].config(24, 8)))
    for name, method in METHODS.items():
        if method.kind == "adapters":   # one bank of the total budget: one LoRA of rank 24, gates aside
            assert count(add_adapters(LlamaForCausalLM(central_config()), method.config(24, 8))) == lora, name
    ranks = {m: METHODS[m].task_rank(24, 8) for m in METHODS if METHODS[m].kind != "peft"}
    assert (METHODS["peft_all"].task_rank(24, 8), METHODS["peft_task"].task_rank(24, 8)) == (24, 3)
    with pytest.raises(ValueError, match="number of clusters"):
        METHODS["peft_cluster"].task_rank(24, 8)
    assert ranks == {"central": 0, "separate": 10, "integrated": 24, "moe_lora": 24, "cgc_lora": 10,
                     "one_plus_n": 6, "one_plus_n_designed": 6, "cgc_no_common": 3,
                     "cgc_uniform": 10, "cgc_c8_s2": 10, "cgc_c16_s1": 17}
    # 1+N: CGC-LoRA's expert rank per cluster, 2 common + 1 specific: for two clusters the
    # banks hold (2 + k1 + 2 + k2) * r_e = 12 * 2 = 24 ranks, the same budget whatever k1, k2
    assert expert_rank(24, 8) == 2
    assert set(SWEEP) <= set(METHODS)


def test_each_independent_lora_trains_its_share_but_at_least_the_floor():
    """Under uniform sampling a task's share is 1/N of the joint run's steps; by rows, its
    rows' share; never below min_separate_steps (so eight tasks at 500 steps train 800)."""
    uniform = Settings(steps=500, task_sampling="uniform", min_separate_steps=100)
    rows = {f"t{i}": 2000 for i in range(6)} | {"low_a": 20, "low_b": 20}
    assert separate_steps(uniform, rows) == dict.fromkeys(rows, 100)
    by_rows = replace(uniform, task_sampling="data", steps=1200)
    got = separate_steps(by_rows, {"big": 2000, "small": 20})
    assert got == {"big": round(1200 * 2000 / 2020), "small": 100}


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]; choose among"):
        runner.run_study(tmp_path, ["nope"], [0])


def test_choose_lr_takes_the_best_validation_and_the_smaller_rate_on_ties():
    runs = [{"method": "a", "lr": lr, "validation": {"t": v, "u": v}} for lr, v in [(1e-3, 0.5), (3e-3, 0.8), (1e-2, 0.8)]]
    runs += [{"method": "b", "lr": lr, "validation": {"t": v}} for lr, v in [(1e-3, 0.1), (3e-3, 0.0)]]
    assert choose_lr(runs) == {"a": 3e-3, "b": 1e-3}


TINY = ["--seeds", "0,1", "--steps", "2", "--n-train", "16", "--n-low", "8", "--n-validation", "3",
        "--n-test", "3", "--curve-points", "2", "--min-separate-steps", "1", "--affinity-warmup", "1",
        "--lr-grid", "1e-3,1e-2", "--no-progress"]


def test_cli_runs_a_tiny_study_resumes_and_writes_to_the_callers_results(tmp_path, monkeypatch):
    # a tiny central model stands in for the shipped one (same architecture, random weights)
    torch.manual_seed(0)
    LlamaForCausalLM(central_config()).save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    methods = "central,separate,cgc_lora,one_plus_n"
    # (no ablation among the methods: the empty --ablation-seeds changes nothing but the command)
    args = ["--methods", methods, "--anonymous", "cgc_lora", "--ablation-seeds", "", "--base",
            str(tmp_path / "base"), *TINY]
    study = main(args)
    out = tmp_path / "results"                     # ./results of the caller's working directory
    frame = pd.read_csv(out / "results.csv")
    named = frame[frame.setting == "named"]
    assert set(named["method"]) == set(methods.split(",")) and set(frame[frame.setting == "anonymous"]["method"]) == {"cgc_lora"}
    assert len(named) == 4 * 2 * 8 and frame["exact_match"].between(0, 1).all()
    info = named.groupby("method")[["trainable_params", "task_rank"]].first()
    assert info.loc["central", "trainable_params"] == 0 and info.loc["separate", "task_rank"] == 10
    rank10 = trainable_parameters(add_adapters(LlamaForCausalLM(central_config()), AdapterConfig.lora(rank=10)))
    assert info.loc["separate", "trainable_params"] == 8 * rank10    # eight LoRAs of CGC-LoRA's task rank
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["steps"] == 2 and config["seeds"] == [0, 1] and "--steps 2" in config["command"]
    assert "--ablation-seeds '' " in config["command"]    # quoted: the command runs again as printed
    assert set(config["lr"]) == set(methods.split(",")) and config["lr"]["central"] in (1e-3, 1e-2)
    grid = pd.read_csv(out / "lr_grid.csv")
    assert len(grid) == 3 * 2 and grid.groupby("method")["chosen"].sum().eq(1).all()
    text = (out / "results.md").read_text()
    for needle in ["## Main table", "### Paired comparisons", "Seesaw", "## Second table", "adjusted Rand"]:
        assert needle in text, needle
    assert {"curves.png", "comparison.png", "affinity.png", "curves.csv", "affinity.csv"} <= {p.name for p in out.iterdir()}
    n_runs = len(list((out / "runs").glob("*.json")))
    assert n_runs == 3 * 2 + 4 * 2 - 3 + 2 + 2     # grid, the rest at the chosen rate, anonymous, affinity
    # resumable: a second call finds every run stored and trains nothing
    with monkeypatch.context() as patch:
        patch.setattr(runner, "_job", lambda job: pytest.fail(f"redid {job[1]}"))
        again = main(args)
    assert len(again["runs"]) == len(study["runs"])
    assert json.loads((out / "config.json").read_text())["wall_seconds"] == config["wall_seconds"]
    # a call that trains some runs again adds its time to the study's (two calls now)
    next(iter((out / "runs").glob("run_named_cgc_lora_1_*.json"))).unlink()
    main(args)
    second = json.loads((out / "config.json").read_text())
    assert second["calls"] == 2 and second["wall_seconds"] > config["wall_seconds"]
    assert "in 2 calls" in (out / "results.md").read_text()


def test_only_runs_that_measure_clusters_depend_on_the_affinity_settings():
    other = replace(Settings(), affinity="gradient", affinity_warmup=7)
    for method in ["cgc_lora", "separate", "one_plus_n_designed"]:
        assert _key("run", Settings(), method=method, seed=0, lr=1e-2) == \
            _key("run", other, method=method, seed=0, lr=1e-2), method
    assert _key("run", Settings(), method="one_plus_n", seed=0, lr=1e-2) != \
        _key("run", other, method="one_plus_n", seed=0, lr=1e-2)
    assert _key("affinity", Settings(), seed=0) != _key("affinity", other, seed=0)


def test_the_grid_may_run_fewer_steps_than_the_study(tmp_path, monkeypatch):
    torch.manual_seed(0)
    LlamaForCausalLM(central_config()).save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    args = ["--methods", "central,cgc_lora", "--anonymous", "", "--affinity-seeds", "",
            "--base", str(tmp_path / "base"), *TINY, "--steps", "3", "--grid-steps", "1"]
    study = main(args)
    assert {g["settings"]["steps"] for g in study["grid"]} == {1}
    assert {r["settings"]["steps"] for r in study["runs"]} == {3}     # seed 0 rerun at full length
    config = json.loads((tmp_path / "results" / "config.json").read_text())
    assert config["settings"]["grid_steps"] == 1 and config["settings"]["steps"] == 3
    assert "with runs of 1 steps" in (tmp_path / "results" / "results.md").read_text()
    curves = pd.read_csv(tmp_path / "results" / "curves.csv")
    assert curves["step"].max() == 3 and len(curves) == curves[["method", "seed", "step"]].drop_duplicates().shape[0]


@pytest.mark.slow
def test_quick_mode_lands_inside_the_stored_spread():
    """`--quick` reruns CGC-LoRA on seed 0 with anonymous prompts, the stored settings and the
    chosen rate (under a minute) and must land inside the committed results' seed range of
    that table (widened by 5 points, for other CPUs' kernels)."""
    from cgc_edu.study.statistics import load_results, within_spread

    stored = load_results(REPO / "results")
    frame = runner.quick_run("cgc_lora", 0, REPO / "results")
    assert set(frame["setting"]) == {"anonymous"} and frame["steps"].eq(stored["steps"].max()).all()
    check = within_spread(frame, stored[stored.setting == "anonymous"])
    assert bool(check["ok"].all()), check


def test_quick_run_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match="setting='both'"):
        runner.quick_run("cgc_lora", 0, REPO / "results", setting="both")


def test_the_stored_control_differs_from_the_study_only_in_the_independent_models_steps():
    """results/controls/separate_1200 (the independent models trained for the joint run's
    whole 1200 steps each) must stay the study's recipe but for that one setting, at the
    study's chosen rate and seeds, so the appendix to chapter 07 may set the two side by side."""
    from cgc_edu.study.statistics import load_results

    control_dir = REPO / "results" / "controls" / "separate_1200"
    study, control = runner.stored_config(REPO / "results"), runner.stored_config(control_dir)
    differ = {k for k in study["settings"] if study["settings"][k] != control["settings"].get(k)}
    # grid_steps says how the grid ran, and the control has no grid (one rate: the study's)
    assert differ - {"grid_steps"} == {"min_separate_steps"}, differ
    assert control["lr_grid"] == [study["lr"]["separate"]]
    assert control["settings"]["min_separate_steps"] == study["settings"]["steps"]
    assert control["lr"]["separate"] == study["lr"]["separate"]
    runs = load_results(control_dir)
    assert set(runs["method"]) == {"separate"} and set(runs["setting"]) == {"named"}
    assert sorted(runs["seed"].unique()) == study["seeds"]
    assert "--min-separate-steps 1200" in control["command"]


#: results/controls/<suite>: the study's two baselines on the other suites of cgc_edu.data.suites
SUITE_CONTROLS = ["positions", "swaps:9", "swaps:10", "derangements:20", "derangements:6x20",
                  "derangements:10x20", "derangements:6x26"]


@pytest.mark.parametrize("spec", SUITE_CONTROLS)
def test_a_stored_suite_control_is_the_studys_recipe_on_another_suite(spec):
    """Each folder runs the study's recipe (grid, seeds, steps, budget) for the integrated and
    the independent models on another suite; only the suite and the grid's length differ (the
    grid trains as long as the runs: at 600 steps it cannot tell the rates apart there)."""
    from cgc_edu.study.statistics import load_results
    from cgc_edu.data.suites import suite

    folder = REPO / "results" / "controls" / spec.replace(":", "_")
    study, control = runner.stored_config(REPO / "results"), runner.stored_config(folder)
    keys = set(study["settings"]) | set(control["settings"])
    differ = {k for k in keys if study["settings"].get(k) != control["settings"].get(k)}
    if "rank" in differ:   # more tasks than the study's budget splits: the least one that does
        cgc, rank = METHODS["cgc_lora"], control["settings"]["rank"]
        assert rank == cgc.n_common + cgc.n_specific * len(suite(spec)) > study["settings"]["rank"]
        assert f"--rank {rank} " in control["command"]
        differ.remove("rank")
    assert differ == {"grid_steps", "suite"}, differ
    assert control["settings"]["suite"] == spec and control["settings"]["grid_steps"] is None
    assert control["lr_grid"] == study["lr_grid"] and control["seeds"] == study["seeds"]
    methods = set(control["lr"])   # the two a seesaw compares, and any shared method beside
    assert {"integrated", "separate"} <= methods
    assert set(re.search(r"--methods (\S+)", control["command"])[1].split(",")) == methods
    grid = pd.read_csv(folder / "lr_grid.csv")
    assert set(grid["method"]) == methods and len(grid) == len(methods) * len(study["lr_grid"])
    assert grid[grid["chosen"]].set_index("method")["lr"].to_dict() == control["lr"]
    runs = load_results(folder)
    assert set(runs["method"]) == methods and set(runs["setting"]) == {"named"}
    assert list(pd.unique(runs["task"])) == [t.name for t in suite(spec)]
    assert sorted(runs["seed"].unique()) == study["seeds"]
    assert f"--suite {spec} " in control["command"] and "--grid-steps 0" in control["command"]


def test_the_long_control_is_the_26_task_control_with_twice_the_steps_and_its_own_grid():
    """results/controls/derangements_6x26_steps_2400: the integrated model of
    controls/derangements_6x26 trained 2400 steps (about what the 26 independent models take
    together, 100 each), its rate chosen again from a grid around the first choice; the same
    seeds and everything else, so its seeds pair with that folder's independent models."""
    from cgc_edu.study.statistics import load_results
    from cgc_edu.data.suites import suite

    base_folder = REPO / "results" / "controls" / "derangements_6x26"
    folder = REPO / "results" / "controls" / "derangements_6x26_steps_2400"
    base, control = runner.stored_config(base_folder), runner.stored_config(folder)
    differ = {k for k in base["settings"] if base["settings"][k] != control["settings"][k]}
    assert differ == {"steps"} and control["settings"]["steps"] == 2 * base["settings"]["steps"]
    assert control["seeds"] == base["seeds"] and set(control["lr"]) == {"integrated"}
    assert base["lr"]["integrated"] in control["lr_grid"] and len(control["lr_grid"]) == 3
    grid = pd.read_csv(folder / "lr_grid.csv")
    assert grid.loc[grid["validation"].idxmax(), "lr"] == control["lr"]["integrated"]
    runs = load_results(folder)
    assert set(runs["method"]) == {"integrated"} and sorted(runs["seed"].unique()) == base["seeds"]
    assert list(pd.unique(runs["task"])) == [t.name for t in suite(base["settings"]["suite"])]
    share = control["settings"]["min_separate_steps"] * len(pd.unique(runs["task"]))
    assert 0.9 < control["settings"]["steps"] / share < 1   # the independent models' total


def test_the_half_rate_control_is_the_twenty_task_control_at_half_the_integrated_rate():
    """results/controls/derangements_6x20_lr_0.003: the integrated model of
    controls/derangements_6x20 rerun at half its grid's choice, nothing else changed, so
    the appendix to chapter 07 may pair it with that folder's independent models seed by seed."""
    from cgc_edu.study.statistics import load_results
    from cgc_edu.data.suites import suite

    twenty = REPO / "results" / "controls" / "derangements_6x20"
    folder = REPO / "results" / "controls" / "derangements_6x20_lr_0.003"
    base, control = runner.stored_config(twenty), runner.stored_config(folder)
    assert control["settings"] == base["settings"] and control["seeds"] == base["seeds"]
    assert control["lr"] == {"integrated": base["lr"]["integrated"] / 2} and control["lr_grid"] == [0.003]
    runs = load_results(folder)
    assert set(runs["method"]) == {"integrated"} and set(runs["lr"]) == {0.003}
    assert sorted(runs["seed"].unique()) == base["seeds"]
    assert list(pd.unique(runs["task"])) == [t.name for t in suite(base["settings"]["suite"])]


def test_the_share_control_is_the_twenty_task_control_at_the_independent_models_share():
    """results/controls/derangements_6x20_separate_60: its independent models trained for
    exactly their share of the joint run (60 steps: 1200 over 20 tasks), below the study's
    floor of 100; their own grid, the same seeds and everything else."""
    from cgc_edu.study.statistics import load_results
    from cgc_edu.data.suites import suite

    twenty = REPO / "results" / "controls" / "derangements_6x20"
    folder = REPO / "results" / "controls" / "derangements_6x20_separate_60"
    base, control = runner.stored_config(twenty), runner.stored_config(folder)
    differ = {k for k in base["settings"] if base["settings"][k] != control["settings"][k]}
    assert differ == {"min_separate_steps"} and control["seeds"] == base["seeds"]
    n_tasks = len(suite(base["settings"]["suite"]))
    assert n_tasks == 20
    assert control["settings"]["min_separate_steps"] == base["settings"]["steps"] // n_tasks == 60
    assert control["lr_grid"] == base["lr_grid"] and set(control["lr"]) == {"separate"}
    runs = load_results(folder)
    assert set(runs["method"]) == {"separate"} and sorted(runs["seed"].unique()) == base["seeds"]
