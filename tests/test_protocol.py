"""The fair protocol (`cgc_edu.study.protocol`, `cgc_edu.study.fair_map`, `train.Recipe`):
the recipe's warm-up and clipping, the best checkpoint, the rate grid and its extension,
the paired statistics against scipy and hand-computed values, the four verdicts, and the
map's command on hand-made runs (it resumes and trains only what is missing)."""
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.data.suites import suite
from cgc_edu.methods import METHODS
from cgc_edu.models import load_central_model
from cgc_edu.study import fair_map, runner
from cgc_edu.study.methods import Settings
from cgc_edu.study.protocol import (Protocol, choose, collapsed, compare, flat_last_third, holm,
                                    judge, verdict)
from cgc_edu.train import Recipe, score_items, train


# ------------------------------------------------------------------ the recipe
def test_warm_up_rises_then_decays_to_zero():
    r = Recipe(steps=100, warmup=0.1)
    rates = [r.rate(s) for s in range(100)]
    assert rates[0] == pytest.approx(1 / 11) and rates[9] == pytest.approx(10 / 11)
    assert rates[10] == pytest.approx(1.0) and all(np.diff(rates[:11]) > 0)
    assert all(np.diff(rates[10:]) < 0) and rates[-1] == pytest.approx(1 / 90)
    # no warm-up: the notebooks' schedule, 1 - s / steps
    assert [Recipe(steps=50).rate(s) for s in range(50)] == [1 - s / 50 for s in range(50)]


@pytest.mark.parametrize("knobs, message", [
    ({"warmup": 1.5}, "warmup=1.5"), ({"clip": 0.0}, "clip=0.0"), ({"steps": 0}, "steps=0"),
    ({"lr": -1.0}, "lr=-1.0"), ({"task_sampling": "x"}, "task_sampling='x'")])
def test_a_bad_recipe_names_the_value(knobs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**knobs)


@pytest.fixture(scope="module")
def tiny():
    data = make_tiny_tasks(seed=0, n_train=64, n_low=16, n_validation=4, n_test=4)
    return data, build_tokenizer()


def _model(n_tasks=8):
    torch.manual_seed(0)
    return add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, n_tasks=n_tasks))


def test_unknown_knob_is_refused_before_training(tiny):
    data, tok = tiny
    model = _model()
    before = [p.clone() for p in model.parameters() if p.requires_grad]
    with pytest.raises(TypeError, match="warm_up.*warmup"):
        train(model, data["train"], tok, steps=2, warm_up=0.1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, [p for p in model.parameters() if p.requires_grad]))


def test_clipping_changes_the_run_from_its_first_step(tiny):
    data, tok = tiny
    losses = {clip: train(_model(), data["train"], tok, steps=4, lr=1e-2, clip=clip, progress=False)
              for clip in (None, 1e-3)}
    assert losses[None][0] == pytest.approx(losses[1e-3][0], rel=1e-6)   # the same first batch
    assert losses[None][-1] != pytest.approx(losses[1e-3][-1], rel=1e-4)


def test_clip_grad_norm_is_applied(tiny, monkeypatch):
    data, tok = tiny
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: calls.append(max_norm) or real(params, max_norm))
    train(_model(), data["train"], tok, steps=3, clip=0.5, progress=False)
    assert calls == [0.5] * 3
    calls.clear()
    train(_model(), data["train"], tok, steps=3, progress=False)
    assert calls == []


def test_score_items_averages_to_evaluate(tiny):
    from cgc_edu.train import evaluate
    data, tok = tiny
    model = _model()
    items = score_items(model, data["test"], tok)
    assert len(items) == len(data["test"]) and set(items["exact_match"]) <= {0.0, 1.0}
    table = evaluate(model, data["test"], tok).drop(index="average")
    assert np.allclose(items.groupby("task")["exact_match"].mean().reindex(table.index),
                       table["exact_match"])


def test_the_best_checkpoint_is_restored(tiny):
    """_fit with best=True ends at the weights of its best validation point."""
    data, tok = tiny
    model = _model()
    snapshots = {}
    real_evaluate = runner.evaluate
    scores = iter([0.2, 0.9, 0.1, 0.3])   # the second point is the best

    def fake(m, rows, tok_, task_names=None):
        table = real_evaluate(m, rows, tok_, task_names=task_names)
        table["exact_match"] = next(scores)
        snapshots[len(snapshots)] = [p.detach().clone() for p in m.parameters() if p.requires_grad]
        return table

    runner.evaluate, saved = fake, runner.evaluate
    try:
        curve = runner._fit(model, data["train"], tok, Recipe(steps=8, lr=1e-2), data["validation"],
                            points=4, best=True)
    finally:
        runner.evaluate = saved
    now = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(now, snapshots[1]))
    assert not all(torch.equal(a, b) for a, b in zip(now, snapshots[3]))
    assert [bool(s.get("_best")) for _, s in curve] == [False, True, False, False]


# --------------------------------------------------------------- the budgets
def test_the_two_budget_axes():
    n = 8
    assert METHODS["separate"].task_rank(24, n, "params") == 3        # 8 LoRAs of rank 3 = 24
    assert METHODS["separate"].task_rank(24, n, "total") == 10        # CGC-LoRA's task rank
    assert METHODS["cgc_lora"].task_rank(24, n, "params") == 10
    for m in fair_map.METHODS_MAPPED:
        assert METHODS[m].task_rank(20, n, "per_task") == 20
    with pytest.raises(ValueError, match="rank 4 is below one rank per task"):
        METHODS["separate"].task_rank(4, n, "params")
    with pytest.raises(ValueError, match="budget='half'"):
        METHODS["cgc_lora"].task_rank(24, n, "half")


@pytest.mark.parametrize("cell", fair_map.CELLS, ids=lambda c: c.name)
def test_every_map_cell_builds_below_the_width(cell):
    assert cell.check(fair_map.METHODS_MAPPED) is cell
    assert fair_map.parse_cell(cell.name) == cell


def test_the_prompt_settings_of_the_cells():
    protocol = Protocol()
    spaced = fair_map.parse_cell("tinytasks_spaced_r24").settings(protocol)
    named = fair_map.parse_cell("tinytasks_named_r24").settings(protocol)
    assert (spaced.name_in_prompt, spaced.setting) == (" ", "spaced")
    assert (named.name_in_prompt, named.setting) == (True, "named")
    keys = [runner._key("run", s, method="cgc_lora", seed=0, lr=0.01) for s in (spaced, named)]
    assert keys[0]["setting"] == "spaced" and keys[0] != keys[1]
    with pytest.raises(ValueError, match="tinytasks_quoted_r24"):
        fair_map.parse_cell("tinytasks_quoted_r24")


def test_a_cell_at_the_width_is_refused():
    with pytest.raises(ValueError, match="at or above the projections' width 128"):
        fair_map.Cell("tinytasks", "named", 144).check(fair_map.METHODS_MAPPED)
    with pytest.raises(ValueError, match="<r\\|t><rank>"):
        fair_map.parse_cell("tinytasks_named_x24")


def test_protocol_settings_are_the_fair_recipe():
    s = Protocol().settings(Settings())
    assert (s.rslora, s.alpha, s.warmup, s.clip, s.best_checkpoint, s.items) == \
        (True, 8.0, 0.06, 1.0, True, True)
    config = METHODS["cgc_lora"].config(24, 8, "params", s.alpha, s.rslora)
    assert config.scaling == pytest.approx(8 / math.sqrt(24))


# --------------------------------------------------------------------- the grid
def test_the_grid_is_log_spaced_and_extends_past_an_edge():
    p = Protocol()
    assert p.grid(0.01) == [0.005, 0.01, 0.02]
    assert p.next_rate(0.01, {0.005: 0.1, 0.01: 0.5, 0.02: 0.9}) == 0.04
    assert p.next_rate(0.01, {0.005: 0.9, 0.01: 0.5, 0.02: 0.1}) == 0.0025
    assert p.next_rate(0.01, {0.005: 0.1, 0.01: 0.9, 0.02: 0.5}) is None
    full = {0.01 * 2 ** k: float(k) for k in range(6)}   # rising to the last: stop at grid_max
    assert p.next_rate(0.01, full) is None
    assert choose({0.01: 0.5, 0.02: 0.5, 0.04: 0.1}) == 0.01   # ties: the smaller rate
    with pytest.raises(ValueError, match="tuning_seed=0 is among the reported"):
        Protocol(tuning_seed=0)


def test_curves_flat_and_collapsed():
    rising = [(1 / 3, {"a": 0.2}), (2 / 3, {"a": 0.5}), (1.0, {"a": 0.9, "_loss": 1.0})]
    flat = [(1 / 3, {"a": 0.8}), (2 / 3, {"a": 0.9}), (1.0, {"a": 0.91})]
    assert not flat_last_third(rising, 0.02) and flat_last_third(flat, 0.02)
    assert collapsed(0.4, rising) and not collapsed(0.5, rising)


# --------------------------------------------------------------- statistics
def test_compare_is_the_paired_t_interval_over_seeds():
    rng = np.random.default_rng(0)
    a = {s: rng.integers(0, 2, 50) for s in range(5)}
    b = {s: rng.integers(0, 2, 50) for s in range(5)}
    out = compare(a, b)
    d = np.array([np.mean(a[s] - b[s]) for s in range(5)])
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(5)
    t = stats.t.ppf(0.975, 4)
    assert out["difference"] == pytest.approx(mean, rel=1e-12)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((mean - t * se, mean + t * se), rel=1e-9)
    assert out["p"] == pytest.approx(2 * stats.t.sf(abs(mean / se), 4), rel=1e-9)
    with pytest.raises(ValueError, match="same test items"):
        compare({0: [1, 0], 1: [1]}, {0: [1, 0], 1: [1, 1]})
    with pytest.raises(ValueError, match="at least 2"):
        compare({0: [1]}, {0: [0]})


def test_more_seeds_can_sharpen_a_verdict():
    """A steady gain of 3 points: inconclusive on 2 seeds, ahead on 8 (the sign rule of
    the first map could only lose verdicts as seeds were added)."""
    gains = [0.03, 0.05, 0.02, 0.04, 0.03, 0.05, 0.02, 0.04]
    rows = []
    for n in (2, 8):
        a = {s: [0.5 + gains[s]] for s in range(n)}
        b = {s: [0.5] for s in range(n)}
        rows.append(compare(a, b))
    frame = judge(pd.DataFrame(rows))
    assert frame["verdict"].tolist() == ["inconclusive", "ahead"]


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x, made monotone
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("row, expected", [
    ((0.05, 0.03, 0.07, 0.01), "ahead"), ((-0.05, -0.07, -0.03, 0.01), "behind"),
    ((0.0, -0.01, 0.015, 0.9), "equivalent"), ((0.05, 0.03, 0.07, 0.2), "inconclusive"),
    ((0.0, -0.1, 0.1, 0.9), "inconclusive")])
def test_the_four_verdicts(row, expected):
    assert verdict(*row, margin=0.02) == expected


# ------------------------------------------------------------------- the map
LEVEL = {"integrated": 0.9, "separate": 0.5, "moe_lora": 0.8, "cgc_lora": 0.85, "cgc_uniform": 0.85}


def _fake_run(job):
    """A run as `runner.run_one` returns it under the protocol, without training: the best
    rate is the method's centre x 4 for CGC-LoRA (the grid must extend), the centre else."""
    _, key, settings = job
    tasks = [t.name for t in suite(settings.suite)][:2]
    best = METHODS[key["method"]].lr * (4 if key["method"] == "cgc_lora" else 1)
    val = LEVEL[key["method"]] - abs(math.log2(key["lr"] / best)) / 10
    rng = np.random.default_rng(key["seed"])
    items = {t: [int(v) for v in rng.random(20) < LEVEL[key["method"]]] for t in tasks}
    _fake_run.calls.append((key["method"], key["lr"], key["seed"]))
    return {"method": key["method"], "seed": key["seed"], "lr": key["lr"],
            "setting": settings.setting, "tasks": tasks, "items": items,
            "test": {t: float(np.mean(v)) for t, v in items.items()},
            "validation": {t: val for t in tasks},
            "curve": [(0.5, {t: val for t in tasks}), (1.0, {t: val for t in tasks})],
            "task_rank": 1, "trainable_params": 10, "train_seconds": 2.0, "eval_seconds": 0.5,
            "settings": {"steps": settings.steps}}


def test_the_map_command_tunes_reports_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_job", _fake_run)
    _fake_run.calls = []
    args = ["--cells", "tinytasks_named_r24", "--out", str(tmp_path), "--no-progress"]
    fair_map.main(args)
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert set(grid["seed"]) == {100}                          # the tuning seed only
    chosen = grid[grid["chosen"]].set_index("method")["lr"]
    assert chosen["cgc_lora"] == pytest.approx(4 * METHODS["cgc_lora"].lr)   # extended twice
    assert len(grid[grid["method"] == "cgc_lora"]) == 5
    assert chosen["integrated"] == pytest.approx(METHODS["integrated"].lr)
    seeds = pd.read_csv(tmp_path / "map_seeds.csv")
    assert sorted(set(seeds["seed"])) == [0, 1, 2, 3, 4] and len(seeds) == 25
    comparisons = pd.read_csv(tmp_path / "map.csv")
    assert len(comparisons) == 10 and set(comparisons["verdict"]) <= {
        "ahead", "behind", "equivalent", "inconclusive"}
    assert {"difference", "ci_low", "ci_high", "p_holm"} <= set(comparisons.columns)
    items = pd.read_csv(tmp_path / "items.csv.gz")
    assert len(items) == 25 * 2 * 20
    # same seed, same items: integrated and separate differ by their levels' draws alone
    row = comparisons.set_index(["method", "baseline"]).loc[("integrated", "separate")]
    assert row["verdict"] == "ahead" and row["ci_low"] > 0
    trained = len(_fake_run.calls)
    fair_map.main(args)                                        # all stored: nothing trained
    assert len(_fake_run.calls) == trained
    fair_map.main([*args, "--methods", "integrated"])          # a run of one method ...
    reported = pd.read_csv(tmp_path / "map_seeds.csv")         # ... reports every stored one
    assert set(reported["method"]) == set(seeds["method"]) and len(reported) == 25
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["calls"]) == 3 and config["protocol"]["tuning_seed"] == 100


def test_the_map_command_refuses_bad_options(tmp_path):
    with pytest.raises(ValueError, match="'dora'.*not in the map"):
        fair_map.main(["--methods", "dora", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--seeds 'a,b'"):
        fair_map.main(["--seeds", "a,b", "--out", str(tmp_path)])


def test_the_ablations_run_last_in_the_studys_cell_and_are_judged_against_cgc_lora(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_job", _fake_run)
    for m in fair_map.ABLATIONS:
        LEVEL.setdefault(m, 0.7)
    _fake_run.calls = []
    fair_map.main(["--cells", "tinytasks_named_r24", "--methods", "cgc_lora,integrated", "--ablations",
                   "--out", str(tmp_path), "--no-progress"])
    order = [m for m, _, _ in _fake_run.calls]
    first_ablation = min(order.index(m) for m in fair_map.ABLATIONS)
    assert all(m in ("cgc_lora", "integrated") for m in order[:first_ablation])
    comparisons = pd.read_csv(tmp_path / "map.csv")
    versus = comparisons[comparisons["method"].isin(fair_map.ABLATIONS)]
    assert sorted(versus["method"]) == sorted(fair_map.ABLATIONS) and set(versus["baseline"]) == {"cgc_lora"}
    assert len(comparisons) == 1 + len(fair_map.ABLATIONS)


def test_read_map_and_one_cells_verdicts_stand_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_job", _fake_run)
    _fake_run.calls = []
    fair_map.main(["--cells", "tinytasks_named_r24", "--methods", "cgc_lora,integrated,separate",
                   "--out", str(tmp_path), "--no-progress"])
    stored = fair_map.read_map(tmp_path)
    assert set(stored) == {"grid", "map_seeds", "items", "curves", "map", "config"}
    # another cell's comparisons in the map raise its Holm family, not this cell's
    other = stored["map"].assign(cell="elsewhere", p=1e-4)
    stored["map"] = pd.concat([stored["map"], other, other], ignore_index=True)
    mine = fair_map.cell_verdicts(stored, "tinytasks_named_r24")
    assert len(mine) == 3 and set(mine["cell"]) == {"tinytasks_named_r24"}
    by_hand = np.minimum(1, np.sort(mine["p"].to_numpy()) * np.array([3, 2, 1]))
    by_hand = np.maximum.accumulate(by_hand)
    np.testing.assert_allclose(np.sort(mine["p_holm"].to_numpy()), by_hand, rtol=1e-12)
    with pytest.raises(ValueError, match="no comparisons of cell 'nowhere'"):
        fair_map.cell_verdicts(stored, "nowhere")
    with pytest.raises(FileNotFoundError, match="no map.csv"):
        fair_map.read_map(tmp_path / "empty")
