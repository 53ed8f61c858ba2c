"""The plots draw what they should: labels, cells and values, not only 'no exception'."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.patches import Rectangle

from cgc_edu.course import plots
from fixtures.gate_data import synthetic_recording


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def rec():
    return synthetic_recording()


def _labels(ticklabels):
    return [t.get_text() for t in ticklabels]


def test_heatmap_shows_one_modules_gates_with_blocks_marked(rec):
    fig = plots.gate_heatmap(rec, "model.layers.1.self_attn.q_proj", step=10)
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    np.testing.assert_allclose(image.data, rec.gates[1, 2], rtol=1e-6)
    np.testing.assert_array_equal(image.mask, ~rec.allowed_mask())       # grey outside S_t
    assert _labels(ax.get_xticklabels()) == rec.expert_labels
    assert _labels(ax.get_yticklabels()) == rec.task_names
    assert ax.get_xlabel() == "expert" and ax.get_ylabel() == "task"
    assert "step 10" in ax.get_title()
    # thick separator between the 2 common experts and the specific ones, thin between tasks
    lines = {round(line.get_xdata()[0], 2): line.get_linewidth() for line in ax.lines}
    assert lines[1.5] > lines[2.5] == lines[3.5]
    cells = [t.get_text() for t in ax.texts if t.get_text()[:1].isdigit()]
    expected = [f"{v:.2f}" for v in rec.gates[1, 2][rec.allowed_mask()]]
    assert cells == expected
    assert len(fig.axes) == 2                                          # heatmap + colour bar


def test_heatmap_of_one_task_into_a_given_axes(rec):
    fig, ax = plt.subplots()
    out = plots.gate_heatmap(rec, 0, tasks="rev", ax=ax, annotate=False, colorbar=False)
    assert out is fig and len(fig.axes) == 1
    np.testing.assert_allclose(ax.images[0].get_array().data, rec.gates[-1, 0, [2]], rtol=1e-6)
    assert _labels(ax.get_yticklabels()) == ["rev"]
    assert not [t for t in ax.texts if t.get_text()[:1].isdigit()]


def test_grid_has_one_panel_per_module_row_per_layer(rec):
    fig = plots.gate_heatmap_grid(rec, step=0)
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    for m, ax in enumerate(panels):
        np.testing.assert_allclose(ax.images[0].get_array().data, rec.gates[0, m], rtol=1e-6)
    assert [ax.get_ylabel() for ax in panels] == ["layer 0", "", "layer 1", ""]
    assert panels[0].get_title() == "L0 self_attn.q_proj"
    assert "step 0" in fig.get_suptitle()


def test_grid_labels_do_not_run_together(rec):
    # small panels: no "common"/"task-specific" headers over them ("commontask-specific"), and
    # the bottom row's expert labels upright, so no two labels overlap
    fig = plots.gate_heatmap_grid(rec, step=-1)
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert not [t for ax in panels for t in ax.texts if "common" in t.get_text()
                or "specific" in t.get_text()]
    assert "common experts | task-specific" in fig.get_suptitle()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for ax in panels for t in ax.get_xticklabels()
             if t.get_text()]
    assert boxes
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_grid_reuses_a_figure(rec):
    fig = plt.figure()
    plots.gate_heatmap_grid(rec, fig=fig)
    plots.gate_heatmap_grid(rec, fig=fig, tasks=["add"])
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and panels[0].images[0].get_array().shape == (1, 5)


def test_evolution_of_one_task_plots_its_allowed_experts_over_steps(rec):
    fig = plots.gate_evolution(rec, 1, "sub", step=20)
    ax = fig.axes[0]
    curves = [line for line in ax.lines if len(line.get_xdata()) == 4]
    assert [line.get_label() for line in curves] == ["common 0", "common 1", "task sub / 0"]
    for line, e in zip(curves, (0, 1, 3)):
        np.testing.assert_array_equal(line.get_xdata(), rec.steps)
        np.testing.assert_allclose(line.get_ydata(), rec.gates[:, 1, 1, e], rtol=1e-6)
    marker = [line for line in ax.lines if len(line.get_xdata()) == 2]
    assert marker[0].get_xdata()[0] == 20
    assert ax.get_xlabel() == "training step"


def test_evolution_of_all_tasks_plots_their_common_share(rec):
    ax = plots.gate_evolution(rec, 0).axes[0]
    assert [line.get_label() for line in ax.lines] == rec.task_names
    for t, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_ydata(), rec.gates[:, 0, t, :2].sum(-1), rtol=1e-6)


def test_common_share_per_task_and_layer(rec):
    ax = plots.common_share(rec, step=30).axes[0]
    share = rec.gates[3, ..., :2].sum(-1)                         # (modules, tasks)
    expected = np.stack([share[:2].mean(0), share[2:].mean(0)], axis=1)
    np.testing.assert_allclose(ax.images[0].get_array(), expected, rtol=1e-6)
    assert _labels(ax.get_xticklabels()) == ["layer 0", "layer 1"]
    assert _labels(ax.get_yticklabels()) == rec.task_names
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in expected.ravel())
    by_module = plots.common_share(rec, by="module").axes[0]
    np.testing.assert_allclose(by_module.images[0].get_array(), rec.gates[-1, ..., :2].sum(-1).T,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="by='head'"):
        plots.common_share(rec, by="head")


def test_common_share_colour_is_white_at_the_uniform_start(rec):
    """The start is n_common / |S_t|, not 0.5: the colour map is centred there."""
    image = plots.common_share(rec, step=0).axes[0].images[0]
    start = rec.n_common / (rec.n_common + rec.n_specific)
    assert image.norm(start) == pytest.approx(0.5)
    assert image.norm(0.0) == pytest.approx(0.0) and image.norm(1.0) == pytest.approx(1.0)


def test_affinity_matrix_groups_tasks_by_cluster():
    rng = np.random.default_rng(0)
    matrix = np.corrcoef(rng.random((5, 6)))
    fig = plots.affinity_matrix(matrix, list("abcde"), clusters=["x", "y", "x", "y", "z"])
    ax = fig.axes[0]
    order = [0, 2, 1, 3, 4]
    assert _labels(ax.get_yticklabels()) == ["a", "c", "b", "d", "e"]
    np.testing.assert_allclose(ax.images[0].get_array(), matrix[np.ix_(order, order)])
    boxes = [(p.get_x(), p.get_width()) for p in ax.patches if isinstance(p, Rectangle)]
    assert boxes == [(-0.5, 2), (1.5, 2), (3.5, 1)]
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("cluster")] == \
        ["cluster x", "cluster y", "cluster z"]
    with pytest.raises(ValueError, match="square"):
        plots.affinity_matrix(matrix[:4], list("abcde"))
    with pytest.raises(ValueError, match="2 cluster labels for 5 tasks"):
        plots.affinity_matrix(matrix, list("abcde"), clusters=[0, 1])


def _results():
    rng = np.random.default_rng(1)
    rows = [dict(method=m, seed=s, task=t, exact_match=float(rng.random()))
            for m in ("lora", "cgc_lora") for s in range(3) for t in ("add", "sub")]
    return pd.DataFrame(rows)


def test_method_comparison_bars_are_seed_means_with_min_max_spread():
    df = _results()
    ax = plots.method_comparison(df).axes[0]
    assert _labels(ax.get_xticklabels()) == ["add", "sub", "average"]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["lora", "cgc_lora"]
    for container in bars:
        method = container.get_label()
        sub = df[df.method == method]
        means = sub.groupby("task", sort=False).exact_match.mean().tolist()
        average = sub.groupby("seed").exact_match.mean()
        heights = [p.get_height() for p in container.patches]
        np.testing.assert_allclose(heights, means + [average.mean()], rtol=1e-9)
        # the error bar of the first bar spans the lowest to the highest seed
        segments = container.errorbar.lines[2][0].get_segments()
        first = sub[sub.task == "add"].exact_match
        np.testing.assert_allclose(sorted(segments[0][:, 1]), [first.min(), first.max()],
                                   rtol=1e-9)
    assert ax.get_ylabel() == "exact match"


def test_method_comparison_rejects_other_formats():
    with pytest.raises(ValueError, match=r"lack columns \['seed'\]"):
        plots.method_comparison(_results().drop(columns="seed"))
    with pytest.raises(TypeError, match="DataFrame"):
        plots.method_comparison([1, 2])


def _affinity():
    a = np.array([[1, .73, .5, .1], [.73, 1, .4, .2], [.5, .4, 1, .3], [.1, .2, .3, 1]])
    return pd.DataFrame(a, index=list("abcd"), columns=list("abcd"))


def test_task_tree_shows_the_closest_pair_above_zero_and_cuts_between_joins():
    from cgc_edu.framework import cluster_tasks, task_linkage

    affinity = _affinity()
    heights = np.sort(task_linkage(affinity)[:, 2])
    assert heights[0] == pytest.approx(1 - 0.73)          # 1 - cosine: visible, not at 0
    for n in (2, 3, 4):
        fig = plots.task_tree(affinity, n_clusters=n)
        (cut,) = [line.get_ydata()[0] for line in fig.axes[0].lines]
        assert (heights < cut).sum() == len(affinity) - n   # n clusters below the line
        assert len(cluster_tasks(affinity, n)) == n
    assert not plots.task_tree(affinity, n_clusters=1).axes[0].lines
    assert set(plots.TASK_COLORS).isdisjoint(plots.METHOD_COLORS.values())
