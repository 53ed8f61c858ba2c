"""Chapter 11's pieces: `fair_map.versus` turns a cell's comparisons to read against one
baseline, `plots.map_overview` draws the map's cells, and `MapExplorer` walks the stored
fair map (its verdicts are the cell's, its errors name the value and the fix)."""
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from cgc_edu.course import plots                                   # noqa: E402
from cgc_edu.course.map_explorer import MapExplorer, complete_cells  # noqa: E402
from cgc_edu.study import fair_map                                 # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "results" / "fair_map"


def _rows():
    return pd.DataFrame({
        "cell": ["c"] * 3, "method": ["a", "b", "a"], "baseline": ["b", "c", "c"],
        "difference": [0.10, -0.05, 0.02], "ci_low": [0.04, -0.09, -0.03],
        "ci_high": [0.16, -0.01, 0.07], "p_holm": [0.01, 0.03, 0.6],
        "verdict": ["ahead", "behind", "inconclusive"]})


def test_versus_turns_each_row_to_read_against_the_baseline():
    rows = fair_map.versus(_rows(), "b")
    assert list(rows["method"]) == ["a", "c"] and set(rows["baseline"]) == {"b"}
    # a - b stays; b - c becomes c - b: negated, its interval mirrored, behind -> ahead
    np.testing.assert_allclose(rows["difference"], [0.10, 0.05], rtol=1e-12)
    np.testing.assert_allclose(rows["ci_low"], [0.04, 0.01], rtol=1e-12)
    np.testing.assert_allclose(rows["ci_high"], [0.16, 0.09], rtol=1e-12)
    assert list(rows["verdict"]) == ["ahead", "ahead"]
    assert list(fair_map.versus(_rows(), "c")["verdict"]) == ["behind", "inconclusive"]
    with pytest.raises(ValueError, match="no comparison with 'z'.*'a', 'b', 'c'"):
        fair_map.versus(_rows(), "z")


def test_the_stored_maps_holm_is_taken_within_each_cell():
    stored = fair_map.read_map(STORED)
    for cell in dict.fromkeys(stored["map"]["cell"]):
        mine = stored["map"][stored["map"]["cell"] == cell]
        again = fair_map.cell_verdicts(stored, cell)
        np.testing.assert_allclose(mine["p_holm"], again["p_holm"], rtol=1e-5)
        assert list(mine["verdict"]) == list(again["verdict"])


def test_map_overview_draws_each_cell_and_refuses_an_unknown_one():
    seeds = pd.DataFrame({"cell": ["x"] * 4 + ["y"] * 4, "method": ["integrated", "cgc_lora"] * 4,
                          "seed": [0, 0, 1, 1] * 2, "average": [.8, .6, .9, .7, .5, .4, .6, .5]})
    fig = plots.map_overview(seeds, ["x", "y"], ["integrated", "cgc_lora"], names={"x": "X"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["y", "X"]
    dots = [l for l in ax.lines if l.get_marker() == "o"]
    assert sorted(round(d.get_xdata()[0], 6) for d in dots) == [45.0, 55.0, 65.0, 85.0]
    with pytest.raises(ValueError, match="no runs of cells \\['z'\\]"):
        plots.map_overview(seeds, ["z"], ["integrated"])
    with pytest.raises(ValueError, match="lacks columns \\['average'\\]"):
        plots.map_overview(seeds.drop(columns="average"), ["x"], ["integrated"])


def test_the_explorer_reads_each_cells_verdicts():
    stored = fair_map.read_map(STORED)
    cells = complete_cells(stored)
    assert "tinytasks_named_r24" in cells
    walk = MapExplorer(stored, cell="tinytasks_named_r24", baseline="cgc_lora")
    state = walk.state
    want = fair_map.versus(fair_map.cell_verdicts(stored, "tinytasks_named_r24"), "cgc_lora")
    want = want[want["method"].isin(fair_map.METHODS_MAPPED)].set_index("method")["verdict"]
    assert state["verdicts"].set_index("method")["verdict"].to_dict() == want.to_dict()
    assert state["summary"].startswith("tinytasks_named_r24, against CGC-LoRA: ")
    assert all(len(s) == 5 for s in state["scores"].values())
    walk.baseline.value = "integrated"
    assert set(walk.state["verdicts"]["baseline"]) == {"integrated"}
    named = MapExplorer(stored, names={"tinytasks_named_r24": "shift:cab="})
    assert ("shift:cab=", "tinytasks_named_r24") in named.cell.options
    assert named.state["summary"].startswith("shift:cab=, against one LoRA: ")
    order = {c: c.upper() for c in reversed(cells)}        # the dropdown follows the names
    assert [c for _, c in MapExplorer(stored, names=order).cell.options] == list(order)
    assert MapExplorer(stored, names=order).cell.value == cells[-1]


def test_convergence_of_a_cell_is_the_rise_of_its_curves():
    """Two runs of one method in one cell (and another cell, ignored): the end minus the
    point nearest two thirds, and nearest half, of the run, averaged over seeds."""
    rows = [{"cell": "a_r1", "method": "m", "seed": seed, "step": 10 * (i + 1), "validation": v}
            for seed, values in [(0, [0.2, 0.5, 0.6, 0.7, 0.7, 0.7]),
                                 (1, [0.1, 0.3, 0.5, 0.6, 0.8, 0.9])]
            for i, v in enumerate(values)]
    rows += [{"cell": "b_r1", "method": "m", "seed": 0, "step": 60, "validation": 0.0}]
    got = fair_map.convergence({"curves": pd.DataFrame(rows)}, "a_r1")
    assert got.loc["m", "last_third"] == pytest.approx(((0.7 - 0.7) + (0.9 - 0.6)) / 2)
    assert got.loc["m", "last_half"] == pytest.approx(((0.7 - 0.6) + (0.9 - 0.5)) / 2)
    with pytest.raises(ValueError, match="no curves of cell 'c_r1'; the map has"):
        fair_map.convergence({"curves": pd.DataFrame(rows)}, "c_r1")


@pytest.mark.parametrize("kwargs, message", [
    (dict(cell="nowhere_r1"), "cell='nowhere_r1'; the map's complete cells are"),
    (dict(baseline="dora"), "baseline='dora'; use one of"),
])
def test_the_explorer_names_a_bad_choice(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MapExplorer(fair_map.read_map(STORED), **kwargs)
