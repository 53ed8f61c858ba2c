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
