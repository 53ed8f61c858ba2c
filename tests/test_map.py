"""The map (`cgc_edu.study.map`): its cells are valid for every method, the report's
verdicts on hand-made runs (a clear winner, a tie within the spread, an incomplete
cell), a second call trains nothing, bad options name the value and the fix."""
import json
import re

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data.suites import suite
from cgc_edu.models import central_config
from cgc_edu.study import runner
from cgc_edu.study.map import (
    CGC,
    MAP_CELLS,
    MAP_METHODS,
    Cell,
    check_cell,
    main,
    run_cell,
)
from cgc_edu.study.map_report import _missing_text, judge
from cgc_edu.methods import METHODS
from cgc_edu.study.methods import Settings

HIDDEN = central_config().hidden_size


def test_the_map_has_its_five_methods_and_spans_the_hidden_size():
    kinds = [(METHODS[m].kind, METHODS[m].n_common, METHODS[m].n_specific,
              METHODS[m].gate) for m in MAP_METHODS]
    assert kinds == [("adapters", 1, 0, "uniform"), ("separate", 0, 0, "task"),
                     ("adapters", 4, 0, "task"), ("adapters", 4, 1, "task"),
                     ("adapters", 4, 1, "uniform")] and CGC == MAP_METHODS[3]
    named = {}
    for c in MAP_CELLS:
        named.setdefault((c.suite, c.setting), []).append(c.rank)
    for key in [("tinytasks", "named"), ("derangements:6x26", "named")]:
        ranks = named[key]
        assert len(ranks) >= 4 and min(ranks) < HIDDEN / 2 and max(ranks) > HIDDEN, key
    assert len(suite("derangements:6x26")) == 26 and ("tinytasks", "anonymous") in named
    assert len({c.name for c in MAP_CELLS}) == len(MAP_CELLS)
    assert all(Cell.parse(c.name) == c for c in MAP_CELLS)


@pytest.mark.parametrize("cell", MAP_CELLS, ids=lambda c: c.name)
def test_every_method_builds_at_every_cell(cell):
    check_cell(cell)
    n_tasks = len(suite(cell.suite))
    for m in MAP_METHODS:
        spec = METHODS[m]
        rank = spec.task_rank(cell.rank, n_tasks)
        config = (AdapterConfig.lora(rank=rank, alpha=2.0 * rank)
                  if spec.kind == "separate" else spec.config(cell.rank, n_tasks))
        add_adapters(LlamaForCausalLM(central_config()), config)
        assert rank >= 1


def _cell(levels: dict, seeds=range(5)) -> pd.DataFrame:
    noise = [0.0, 0.02, -0.02, 0.01, -0.01]
    return pd.DataFrame([{"method": m, "seed": s, "average": v + noise[s]}
                         for m, v in levels.items() for s in seeds])


def test_a_clear_winner_is_beyond_the_spread():
    cell = _cell({"integrated": 0.9, "separate": 0.5, "moe_lora": 0.8})
    j = judge(cell, ["integrated", "separate", "moe_lora"], range(5))
    assert j["complete"] and (j["winner"], j["runner_up"]) == ("integrated", "moe_lora")
    assert j["margin"] == pytest.approx(0.1) and j["beyond_spread"] and j["level"] == []
    assert j["diff_min"] == pytest.approx(0.1) == j["diff_max"]


def test_a_tie_within_the_spread_is_not_beyond_it():
    cell = _cell({"integrated": 0.8, "moe_lora": 0.5})
    # cgc_lora is 1.4 points above the integrated model on average, below it on seed 2
    cgc = pd.DataFrame({"method": "cgc_lora", "seed": range(5),
                        "average": [0.83, 0.84, 0.77, 0.82, 0.81]})
    j = judge(pd.concat([cell, cgc]), ["integrated", "moe_lora", "cgc_lora"], range(5))
    assert (j["winner"], j["runner_up"]) == ("cgc_lora", "integrated")
    assert j["margin"] == pytest.approx(0.014) and j["diff_min"] < 0 < j["diff_max"]
    assert not j["beyond_spread"] and j["level"] == ["integrated"]


def test_an_incomplete_cell_names_what_is_missing_and_judges_nothing():
    cell = _cell({"integrated": 0.9, "moe_lora": 0.5})
    cell = cell[~((cell["method"] == "moe_lora") & cell["seed"].isin([1, 3]))]
    j = judge(cell, ["integrated", "moe_lora"], range(5))
    assert not j["complete"] and j["missing"] == {"moe_lora": [1, 3]}
    assert "winner" not in j and (j["runs"], j["expected"]) == (8, 10)
    assert _missing_text(j) == "incomplete: 8 of 10 runs (missing MoE-LoRA seeds 1,3)"
    alone = cell[cell["method"] == "integrated"]
    gone = judge(alone, ["integrated", "moe_lora"], range(5))
    assert _missing_text(gone) == "incomplete: 5 of 10 runs (missing MoE-LoRA)"


# ------------------------------------------------------------ the command
LEVEL = {"integrated": 0.9, "separate": 0.4, "moe_lora": 0.8, "cgc_lora": 0.6,
         "cgc_uniform": 0.6}


def _fake_run(job):
    """A run record as `runner.run_one` returns it, without training."""
    _, key, settings = job
    tasks = [t.name for t in suite(settings.suite)][:2]
    score = LEVEL[key["method"]] + 0.01 * key["seed"] + settings.rank / 1000
    _fake_run.calls += 1
    return {"method": key["method"], "seed": key["seed"], "lr": key["lr"],
            "setting": settings.setting, "tasks": tasks,
            "test": {t: score for t in tasks},
            "validation": {t: score - key["lr"] for t in tasks},  # the lower rate wins
            "task_rank": 1, "trainable_params": 10, "train_seconds": 2.0,
            "eval_seconds": 0.5, "settings": {"steps": settings.steps}}


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A folder with a stored study's chosen rates; training replaced by `_fake_run`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    lr = {m: 0.01 for m in METHODS}
    (tmp_path / "results" / "config.json").write_text(json.dumps({"lr": lr}))
    monkeypatch.setattr(runner, "_job", _fake_run)
    _fake_run.calls = 0
    return tmp_path


def test_the_command_reports_resumes_and_trains_only_what_is_missing(study):
    args = ["--cells", "tinytasks_named_r12,tinytasks_named_r24", "--no-progress"]
    first = main(args)
    assert _fake_run.calls == 2 * 5 * 5
    out = study / "results" / "map"
    table = pd.read_csv(out / "map.csv").set_index(["cell", "method"])
    assert len(table) == 2 * 5 and table["n_seeds"].eq(5).all()
    mean = table.loc[("tinytasks_named_r12", "integrated"), "mean"]
    assert mean == pytest.approx(0.932)
    text = (out / "map.md").read_text()
    assert "| tinytasks_named_r12 | **one LoRA** |" in text
    assert "ahead on every seed" in text
    assert "| tinytasks_named_r48 | not run yet (0 of 25 runs) |" in text
    assert first["judged"]["tinytasks_named_r24"]["beyond_spread"]
    versus = first["versus"]["tinytasks_named_r24"]
    verdicts = [versus[m]["verdict"] for m in ("separate", "integrated", "cgc_uniform")]
    assert verdicts == ["ahead", "behind", "level"]
    config = json.loads((out / "config.json").read_text())
    assert len(config["calls"]) == 1 and config["calls"][0]["trained"] == 50
    assert "--cells tinytasks_named_r12,tinytasks_named_r24" in config["command"]
    assert config["lr_source"].startswith("the stored study") and config["steps"] == 600
    # a second call finds every run stored: it trains nothing and keeps the time
    main(args)
    assert _fake_run.calls == 50
    again = json.loads((out / "config.json").read_text())
    assert again["calls"] == config["calls"]
    assert again["wall_seconds"] == config["wall_seconds"]
    # a run deleted is trained again, and that call's time joins the first's
    runs = out / "tinytasks_named_r24" / "runs"
    next(runs.glob("run_named_moe_lora_3_*.json")).unlink()
    main(args)
    assert _fake_run.calls == 51
    assert len(json.loads((out / "config.json").read_text())["calls"]) == 2


def test_each_cell_is_judged_on_its_own_seeds(study):
    """More seeds where the spread is wide: a call with seeds 0-4 on one cell leaves the
    other cells judged, complete, on the 3 seeds they were run on (and --report-only too)."""
    from cgc_edu.study.map_report import read_map, verdicts

    main(["--cells", "tinytasks_named_r12,tinytasks_named_r24", "--seeds", "0,1,2",
          "--no-progress"])
    for call in (["--cells", "tinytasks_named_r12", "--seeds", "0,1,2,3,4"],
                 ["--report-only"]):
        result = main([*call, "--no-progress"])
        assert result["judged"]["tinytasks_named_r12"]["n_seeds"] == 5
        assert result["judged"]["tinytasks_named_r24"]["complete"]
        assert result["judged"]["tinytasks_named_r24"]["n_seeds"] == 3
    assert _fake_run.calls == 2 * 5 * 3 + 5 * 2
    out = study / "results" / "map"
    stored = read_map(out)
    assert verdicts(stored, "tinytasks_named_r24")["n_seeds"] == 3
    assert verdicts(stored, "tinytasks_named_r12")["n_seeds"] == 5
    assert stored["config"]["cells"]["tinytasks_named_r24"]["seeds"] == [0, 1, 2]
    assert stored["config"]["seeds"] == [0, 1, 2, 3, 4]
    text = (out / "map.md").read_text()
    assert "seeds 0, 1, 2, 3, 4 in 1 cell; seeds 0, 1, 2 in 1 cell" in text
    assert "with 5 seeds this is the sign test's strongest outcome, one-sided p = 1/32; " \
           "with 3 seeds this is the sign test's strongest outcome, one-sided p = 1/8" in text
    assert "| tinytasks_named_r24 | **one LoRA** |" in text
    # a seed that one method lacks: that cell is incomplete, naming the missing run
    next((out / "tinytasks_named_r12" / "runs").glob("run_named_integrated_4_*")).unlink()
    judged = main(["--report-only", "--no-progress"])["judged"]["tinytasks_named_r12"]
    assert not judged["complete"] and judged["missing"] == {"integrated": [4]}


def test_a_grid_per_cell_chooses_on_the_first_seed(study):
    main(["--cells", "tinytasks_anonymous_r24", "--methods", "cgc_lora,cgc_uniform",
          "--lr-grid", "0.003,0.012", "--seeds", "0,1", "--no-progress"])
    config = json.loads((study / "results" / "map" / "config.json").read_text())
    # the grid's seed-0 run at the chosen rate is the map's own: 2 grid runs + 1 + 2
    assert _fake_run.calls == 5 and "a grid on seed 0" in config["lr_source"]
    assert config["cells"]["tinytasks_anonymous_r24"]["lr"] == {"cgc_lora": 0.003,
                                                               "cgc_uniform": 0.003}


def test_report_only_and_dry_run_train_nothing(study, capsys):
    main(["--cells", "tinytasks_named_r12", "--dry-run"])
    assert "tinytasks_named_r12: 25 of 25 runs to train" in capsys.readouterr().out
    main(["--report-only"])
    assert _fake_run.calls == 0
    assert "not run yet (0 of 25" in (study / "results" / "map" / "map.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--cells", "tinytasks_r24"], "write <suite>_<setting>_r<rank>"),
    (["--cells", "tinytasks_named_r10"],
     ("moe_lora, cgc_lora, cgc_uniform cannot split rank 10 among the 8 tasks of "
      "tinytasks; ranks every method splits there: 12, 24, 36, 48")),
    (["--cells", "nosuch_named_r12"], "unknown suite 'nosuch'"),
    (["--budgets", "7"], "no cell left: suites None, budgets [7]"),
    (["--steps", "0"], "--steps 0 --workers 1: both must be at least 1"),
    (["--seeds", "0,a"], "--seeds '0,a': give comma-separated integers"),
    (["--methods", "nope"], "unknown method(s) ['nope']"),
    (["--lr-grid", "0.01,x"], "--lr-grid '0.01,x': give comma-separated rates"),
    (["--suites", "swaps:9"], "drop a filter, or name a cell"),
])
def test_a_bad_option_names_the_value_and_the_fix(study, args, needle):
    with pytest.raises(ValueError) as err:
        main(args)
    assert needle in str(err.value)


def test_missing_stored_rates_point_to_a_grid(study):
    only = json.dumps({"lr": {"cgc_lora": 0.01}})
    (study / "results" / "config.json").write_text(only)
    with pytest.raises(ValueError, match="give the map its own grid"):
        main(["--cells", "tinytasks_named_r12"])


def test_a_cell_trains_real_runs_under_the_studys_keys(tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(central_config()).save_pretrained(tmp_path / "base")
    recipe = Settings(steps=2, n_train=16, n_low=8, n_validation=3, n_test=3,
                      curve_points=0, min_separate_steps=1, base=str(tmp_path / "base"))
    cell, lr = Cell("tinytasks", "named", 12), {"integrated": 0.003, "cgc_lora": 0.012}
    done = run_cell(cell, tmp_path, list(lr), [0], recipe, lr=lr, progress=False)
    assert done["trained"] == 2 and {r["method"] for r in done["runs"]} == set(lr)
    run = next(r for r in done["runs"] if r["method"] == "cgc_lora")
    assert run["settings"]["rank"] == 12 and run["task_rank"] == 5
    # the study's own key finds the file: a cell folder is a study's results folder
    key = runner._key("run", cell.settings(recipe), method="cgc_lora", seed=0, lr=0.012)
    assert runner._run_file(tmp_path / cell.name, "run", key).is_file()
    again = run_cell(cell, tmp_path, list(lr), [0], recipe, lr=lr, progress=False)
    assert again["trained"] == 0


# ------------------------------------------------------------ reading it back, walking it
def test_read_map_and_verdicts_judge_the_stored_runs_as_the_report_did(study):
    from cgc_edu.study.map_report import read_map, stored_map_folder, verdicts

    first = main(["--cells", "tinytasks_named_r12,tinytasks_anonymous_r24", "--no-progress"])
    (study / "notebooks").mkdir()
    assert stored_map_folder(study / "notebooks") == study / "results" / "map"
    stored = read_map(study / "results" / "map")
    assert len(stored["seeds"]) == 2 * 25 and stored["config"]["seeds"] == list(range(5))
    for cell in ("tinytasks_named_r12", "tinytasks_anonymous_r24"):
        v = verdicts(stored, cell)
        want = first["judged"][cell]
        assert (v["winner"], v["runner_up"], v["beyond_spread"]) == (
            want["winner"], want["runner_up"], want["beyond_spread"])
        assert v["margin"] == pytest.approx(want["margin"])
        assert {m: c["verdict"] for m, c in v["versus"].items()} == {
            m: c["verdict"] for m, c in first["versus"][cell].items()}
    with pytest.raises(KeyError, match=r"no runs of cell 'tinytasks_named_r48'; the map has"):
        verdicts(stored, "tinytasks_named_r48")
    with pytest.raises(FileNotFoundError, match=r"python -m cgc_edu.study.map --out"):
        read_map(study / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no results/map/map_seeds.csv in /"):
        stored_map_folder("/")
    # "with 5 seeds ... 1/32": the rule's words follow the seeds the map has
    assert "with 5 seeds this is the sign test's strongest outcome, one-sided p = 1/32" in (
        study / "results" / "map" / "map.md").read_text()


def test_method_map_draws_a_line_per_method_and_rejects_a_missing_cell(study):
    from matplotlib.colors import to_hex

    from cgc_edu.course.plots import method_map, method_style
    from cgc_edu.study.map_report import read_map

    main(["--cells", "tinytasks_named_r12,tinytasks_named_r24", "--no-progress"])
    table = read_map(study / "results" / "map")["table"]
    fig = method_map(table, "tinytasks", budget=24, hidden_size=128)
    ax = fig.axes[0]
    lines = [c.lines[0] for c in ax.containers]   # one error-bar line per method
    assert [to_hex(l.get_color()) for l in lines] == [
        method_style(m)[0].lower() for m in MAP_METHODS]
    means = table[table["method"] == "integrated"].sort_values("rank")["mean"] * 100
    assert list(lines[0].get_ydata()) == pytest.approx(list(means))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["12", "24"]
    with pytest.raises(ValueError, match=r"no cells of suite 'tinytasks' with 'anonymous'"):
        method_map(table, "tinytasks", "anonymous")
    with pytest.raises(ValueError, match=r"lacks columns \['suite'"):
        method_map(pd.DataFrame({"x": [1]}), "tinytasks")


def test_map_explorer_walks_the_cells_and_shows_their_verdicts(study):
    from cgc_edu.course.map_explorer import MapExplorer
    from cgc_edu.study.map_report import read_map, verdicts

    main(["--cells", "tinytasks_named_r12,tinytasks_named_r24,tinytasks_anonymous_r24,"
          "derangements_6x26_named_r60", "--no-progress"])
    stored = read_map(study / "results" / "map")
    walk = MapExplorer(stored)
    s = walk.state
    assert (s["suite"], s["setting"], s["budget"]) == ("tinytasks", "named", 12)
    assert s["summary"].startswith("tinytasks_named_r12: one LoRA wins with")
    assert "beyond the seed spread" in s["summary"]
    assert "CGC-LoRA is behind one LoRA (-30.0); ahead of independent LoRAs (+20.0)" in s["summary"]
    assert s["scores"]["integrated"] == pytest.approx(
        [100 * (0.9 + 0.012 + 0.01 * k) for k in range(5)])
    assert bytes(walk.image.value).startswith(b"\x89PNG")
    walk.budget.value = 24
    assert walk.state["verdict"]["winner"] == verdicts(stored, "tinytasks_named_r24")["winner"]
    walk.setting.value = "anonymous"
    assert walk.state["cell"] == "tinytasks_anonymous_r24" and list(walk.budget.options) == [24]
    # a suite with named prompts only: the prompt and budget choices follow it
    walk.suite.value = "derangements:6x26"
    assert list(walk.setting.options) == ["named"] and list(walk.budget.options) == [60]
    assert walk.state["cell"] == "derangements_6x26_named_r60"
    walk.suite.value = "tinytasks"
    assert walk.state["cell"] == "tinytasks_named_r12"
    for kwargs, needle in [({"suite": "swaps"}, "suite='swaps'; the map has"),
                           ({"setting": "hidden"}, "setting='hidden'; tinytasks has"),
                           ({"budget": 48}, "budget=48; tinytasks with named prompts has "
                                            "budgets [12, 24]")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            MapExplorer(stored, **kwargs)
