"""The study's seed-by-seed figures (chapter 07): small multiples of the validation curves
and the paired differences, in the course's method palette."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from cgc_edu.course.plots import method_style, paired_differences, validation_curves
from cgc_edu.study.statistics import paired_table

LR = {"cgc_lora": 0.012, "moe_lora": 0.006}


def _curves():
    rows = []
    for method, lr in LR.items():
        for seed in range(3):
            for other in (lr, lr * 2):          # a grid rate that must not be drawn
                for step in (200, 400, 600):
                    rows.append({"setting": "named", "method": method, "seed": seed, "lr": other,
                                 "step": step, "validation": step / 1000 + seed / 100})
    return pd.DataFrame(rows)


def _results():
    rows = []
    for seed in range(5):
        for task in ("a", "b"):
            rows.append({"method": "separate", "seed": seed, "task": task, "exact_match": 0.5})
            rows.append({"method": "cgc_lora", "seed": seed, "task": task,
                         "exact_match": 0.5 + 0.01 * (seed + 1)})
    return pd.DataFrame(rows)


def test_validation_curves_draw_one_panel_per_method_one_line_per_seed():
    fig = validation_curves(_curves(), LR, ["cgc_lora", "moe_lora", "cgc_lora"], ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and len(fig.axes) == 4          # the spare panel hidden
    for ax, method in zip(visible, ["cgc_lora", "moe_lora", "cgc_lora"]):
        colour, name = method_style(method)
        assert ax.get_title() == name
        assert len(ax.lines) == 3 + 1                        # 3 seeds and the mean
        assert {to_hex(line.get_color()) for line in ax.lines} == {colour.lower()}
        np.testing.assert_allclose(ax.lines[-1].get_ydata(), [21, 41, 61])   # mean, %
    plt.close(fig)


def test_validation_curves_name_what_is_missing():
    with pytest.raises(ValueError, match="no 'named' curves of \\['integrated'\\]"):
        validation_curves(_curves(), LR, ["integrated"])
    with pytest.raises(ValueError, match="lack columns \\['validation'\\]"):
        validation_curves(_curves().drop(columns="validation"), LR, ["cgc_lora"])


def test_paired_differences_put_a_dot_per_seed_and_the_interval():
    results = _results()
    paired = paired_table(results, pairs=[("cgc_lora", "separate")])
    fig = paired_differences(results, paired)
    ax = fig.axes[0]
    band, dots, tick = ax.lines[:3]
    np.testing.assert_allclose(sorted(dots.get_xdata()), [1, 2, 3, 4, 5])   # points
    np.testing.assert_allclose(band.get_xdata(), 100 * paired[["ci_low", "ci_high"]].iloc[0])
    np.testing.assert_allclose(tick.get_xdata(), [3, 3])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["CGC-LoRA − independent LoRAs"]
    plt.close(fig)


def test_paired_differences_name_what_is_missing():
    results = _results()
    paired = paired_table(results, pairs=[("cgc_lora", "separate")])
    with pytest.raises(ValueError, match="no runs of \\['separate'\\]"):
        paired_differences(results[results["method"] != "separate"], paired)
    with pytest.raises(ValueError, match="paired_table"):
        paired_differences(results, paired.iloc[:0])


def test_verdict_intervals_draw_each_interval_in_its_verdicts_colour():
    from cgc_edu.course.plots import VERDICT_COLORS, verdict_intervals
    rows = pd.DataFrame({"method": ["moe_lora", "cgc_lora"], "baseline": ["cgc_lora", "separate"],
                         "difference": [0.176, 0.01], "ci_low": [0.148, -0.05],
                         "ci_high": [0.205, 0.07], "verdict": ["ahead", "inconclusive"]})
    fig = verdict_intervals(rows, margin=0.02)
    ax = fig.axes[0]
    bars = [line for line in ax.lines if len(line.get_xdata()) == 2 and line.get_linewidth() == 3]
    np.testing.assert_allclose(bars[0].get_xdata(), [14.8, 20.5])
    assert bars[0].get_color() == VERDICT_COLORS["ahead"]
    assert bars[1].get_color() == VERDICT_COLORS["inconclusive"]
    assert [t.get_text() for t in ax.get_yticklabels()][::-1][0] == "MoE-LoRA − CGC-LoRA"
    plt.close(fig)
    with pytest.raises(ValueError, match="unknown verdicts \\['better'\\]"):
        verdict_intervals(rows.assign(verdict="better"), margin=0.02)
    with pytest.raises(ValueError, match="\\['ci_low'\\]"):
        verdict_intervals(rows.drop(columns="ci_low"), margin=0.02)


def test_rate_grid_rings_the_chosen_rate():
    from cgc_edu.course.plots import rate_grid
    grid = pd.DataFrame({"method": ["cgc_lora"] * 3 + ["integrated"] * 3,
                         "lr": [0.006, 0.012, 0.024, 0.0015, 0.003, 0.006],
                         "validation": [0.5, 0.6, 0.55, 0.7, 0.8, 0.05],
                         "chosen": [False, True, False, False, True, False]})
    fig = rate_grid(grid)
    ax = fig.axes[0]
    rings = [line for line in ax.lines if line.get_markersize() == 11]
    assert [float(r.get_xdata()[0]) for r in rings] == [0.012, 0.003]
    np.testing.assert_allclose([float(r.get_ydata()[0]) for r in rings], [60, 80])
    assert ax.get_xscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="no grid runs of \\['moe_lora'\\]"):
        rate_grid(grid, methods=["moe_lora"])
