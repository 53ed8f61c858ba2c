"""Pictures of what the gates learned, and of the experiments' results (matplotlib).

Every function returns its ``matplotlib.figure.Figure``. Functions that draw one panel take
``ax=`` to draw into an existing axes (the figure is then ``ax.figure``); the grid takes
``fig=`` to reuse a figure. Gate plots read a `cgc_edu.course.recording.GateRecording`; modules,
tasks and steps are named (or indexed, ``step=-1`` is the last recorded step).

Taught in: notebooks/08_gate_lab.ipynb (gates), notebooks/06_one_plus_n.ipynb (affinity),
notebooks/07_experiments.ipynb (method comparison).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.patches import Rectangle
from matplotlib.transforms import ScaledTranslation
from scipy.cluster import hierarchy
from scipy.cluster.hierarchy import dendrogram

from ..methods import MTL_MODELS, METHODS, method_name
from ..framework.affinity import task_linkage
from ..study.statistics import per_seed_average
from .recording import GateRecording

#: Heatmaps annotate every cell when they have at most this many cells.
ANNOTATE_MAX_CELLS = 80
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")

# ------------------------------------------------------------------ palette
# One colour and one name per method, and one colour per part of an adapted layer, for every
# figure of the course (Okabe-Ito colours, readable with colour-blind vision). A method and its
# analogue in chapter 03 share a colour: one shared part (LoRA, shared-bottom) is blue, private
# parts (independent LoRAs) orange, gated shared experts (MoE-LoRA, MMoE) green, common plus
# specific experts (CGC-LoRA, CGC) vermillion.
#: Colours and display names, by key: the methods' (`cgc_edu.methods`, the one table),
#: then chapter 03's models (`cgc_edu.methods.MTL_MODELS`).
METHOD_COLORS = {**{k: m.color for k, m in METHODS.items()},
                 **{k: color for k, (_, color) in MTL_MODELS.items()}}
METHOD_NAMES = {**{k: m.short for k, m in METHODS.items()},
                **{k: name for k, (name, _) in MTL_MODELS.items()}}
#: One colour per task (and per cluster of tasks), a palette apart from the methods' so that
#: a figure of tasks never reads as a figure of methods (Paul Tol's "muted", colour-blind safe).
TASK_COLORS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
               "#882255", "#AA4499")
#: The widest figure (inches at dpi 100) the book's column shows without a scroll bar.
BOOK_WIDTH = 7.3
#: The parts of an adapted layer, as the diagrams draw them (common = LoRA's blue, ...).
PART_COLORS = {"frozen": "#bdbdbd", "common": "#0072B2", "specific": "#E69F00",
               "gate": "#009E73", "masked": "#eeeeee", "router": "#CC79A7"}


def method_style(method: str) -> tuple[str, str]:
    """(colour, display name) of a method key (``"cgc_lora"``) or display name (``"MMoE"``).

    Unknown methods get a dark grey and their own name, so a new method still plots.

    Taught in: notebooks/00_tour.ipynb.
    """
    key = method_name(method.lower().replace("-", "_").replace(" ", "_"))
    return METHOD_COLORS.get(key, "#4d4d4d"), METHOD_NAMES.get(key, method)


# ------------------------------------------------------------------ helpers
def _new_axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def _annotate_cells(ax, values: np.ndarray, mask: Optional[np.ndarray] = None, fmt="{:.2f}"):
    """Write each value in its cell, in black or white, whichever reads on the colour."""
    for (i, j), v in np.ndenumerate(values):
        if mask is not None and not mask[i, j]:
            continue
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                color="white" if v < 0.55 else "black")


def layer_groups(module_names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Group module indices by transformer layer: [("layer 0", [0, 1, ...]), ...].

    Names like ``model.layers.3.self_attn.q_proj`` group by their layer number; modules whose
    names carry no layer number are each their own group, in model order.
    """
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(module_names):
        match = _LAYER.search(name)
        groups.setdefault(f"layer {match.group(1)}" if match else name, []).append(i)
    return list(groups.items())


def short_module_name(name: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``L0 self_attn.q_proj`` (labels that fit)."""
    match = _LAYER.search(name)
    return f"L{match.group(1)} {match.group(2)}" if match else name


def _task_rows(recording: GateRecording, tasks) -> list[int]:
    if tasks is None:
        return list(range(recording.n_tasks))
    if isinstance(tasks, (str, int, np.integer)):
        tasks = [tasks]
    return [recording.task_index(t) for t in tasks]


# ----------------------------------------------------------- gate heatmaps
def gate_heatmap(recording: GateRecording, module=0, step=-1, tasks=None, ax=None,
                 annotate: Optional[bool] = None, colorbar: bool = True, title: Optional[str] = None,
                 headers: bool = True):
    """Task x expert heatmap of one module's gate weights at one step.

    Common and specific experts are separated by a thick line (and labelled above, unless
    ``headers=False``: the grid's small panels have no room), task blocks by thin lines; cells outside a task's allowed set S_t are grey.
    ``tasks`` picks rows (names or indices; default all). Values are written in the cells
    when there are at most `ANNOTATE_MAX_CELLS` of them (or as ``annotate`` says).

    Taught in: notebooks/08_gate_lab.ipynb.
    """
    m, s = recording.module_index(module), recording.step_index(step)
    rows = _task_rows(recording, tasks)
    values = recording.gates[s, m][rows]
    allowed = recording.allowed_mask()[rows]
    n_tasks, n_experts = values.shape
    fig, ax = _new_axes(ax, (1.2 + 0.55 * n_experts, 1.4 + 0.45 * n_tasks))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_array(values, ~allowed), cmap=cmap, vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_experts), recording.expert_labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_tasks), [recording.task_names[r] for r in rows], fontsize=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("task")
    _mark_expert_blocks(ax, recording, headers)
    if annotate if annotate is not None else values.size <= ANNOTATE_MAX_CELLS:
        _annotate_cells(ax, values, allowed)
    step_value = int(recording.steps[s])
    ax.set_title(title if title is not None else
                 f"{recording.module_names[m]} (step {step_value})", fontsize=9, pad=14)
    if colorbar:
        fig.colorbar(image, ax=ax, label="gate weight", shrink=0.9)
    return fig


def _mark_expert_blocks(ax, recording: GateRecording, headers: bool = True):
    """Thick line between common and specific experts, thin lines between task blocks."""
    blocks = recording.layout.blocks()
    for before, block in zip(blocks, blocks[1:]):
        ax.axvline(block.start - 0.5, color="white", lw=3 if before.kind != block.kind else 1)
    for kind, label in (("common", "common"), ("specific", "task-specific")):
        mine = [b for b in blocks if b.kind == kind]
        if mine and headers:
            lo, hi = mine[0].start, mine[-1].stop
            ax.annotate(label, xy=((lo + hi - 1) / 2, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8, color="0.35")


def gate_heatmap_grid(recording: GateRecording, step=-1, tasks=None, fig=None,
                      annotate: bool = False):
    """Every module's task x expert heatmap in a grid, one row per layer.

    Rows are transformer layers (see `layer_groups`), columns the adapted modules of a layer.
    All panels share one colour scale (0..1) and one colour bar. ``fig``: a figure to clear
    and reuse (the widget redraws into one figure).

    Taught in: notebooks/08_gate_lab.ipynb.
    """
    s = recording.step_index(step)
    rows = _task_rows(recording, tasks)
    groups = layer_groups(recording.module_names)
    ncols = max(len(members) for _, members in groups)
    size = (1.0 + ncols * (0.9 + 0.32 * recording.n_experts),
            0.8 + len(groups) * (0.9 + 0.3 * len(rows)))
    shrink = min(1.0, BOOK_WIDTH / size[0])        # never wider than the book's column
    size = (size[0] * shrink, max(2.5, size[1] * shrink))
    if fig is None:
        fig = plt.figure(figsize=size, layout="constrained")
    else:
        fig.clear()
        fig.set_size_inches(*size)
    axes = fig.subplots(len(groups), ncols, squeeze=False)
    image = None
    for r, (label, members) in enumerate(groups):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(members):
                ax.set_axis_off()
                continue
            m = members[c]
            gate_heatmap(recording, m, step, rows, ax=ax, annotate=annotate, colorbar=False,
                         title=short_module_name(recording.module_names[m]), headers=False)
            image = ax.images[0]
            ax.title.set_fontsize(8)
            ax.set_xlabel("")
            ax.set_ylabel(label if c == 0 else "")
            if r < len(groups) - 1:
                ax.set_xticklabels([])
            else:   # upright labels, so that neighbouring panels' labels cannot overlap
                ax.tick_params(axis="x", labelrotation=90, labelsize=6)
                for tick in ax.get_xticklabels():
                    tick.set_horizontalalignment("center")
            if c > 0:
                ax.set_yticklabels([])
    kinds = {b.kind for b in recording.layout.blocks()}
    split = (" — columns: common experts | task-specific (thick white line)"
             if kinds == {"common", "specific"} else "")
    fig.suptitle(f"gate weights of every module (step {int(recording.steps[s])}){split}",
                 fontsize=9)
    fig.colorbar(image, ax=axes, label="gate weight", shrink=0.8)
    return fig


# ------------------------------------------------------------ over training
def gate_evolution(recording: GateRecording, module=0, task=None, ax=None, step=None):
    """Gate weights of one module over the recorded training steps.

    With a ``task``: one line per expert the task may use (its S_t). Without: one line per
    task, its gate mass on the common experts. ``step`` marks a step with a dashed line.

    Taught in: notebooks/08_gate_lab.ipynb.
    """
    m = recording.module_index(module)
    fig, ax = _new_axes(ax, (6.0, 3.4))
    steps = recording.steps
    if task is None:
        share = recording.common_share()[:, m]
        for t, name in enumerate(recording.task_names):
            ax.plot(steps, share[:, t], marker="o", ms=3, label=name)
        ax.set_ylabel("gate mass on common experts")
        ax.set_title(f"{recording.module_names[m]}: common share per task", fontsize=9)
    else:
        t = recording.task_index(task)
        for e in np.flatnonzero(recording.allowed_mask()[t]):
            ax.plot(steps, recording.gates[:, m, t, e], marker="o", ms=3,
                    ls="-" if e < recording.n_common else "--", label=recording.expert_labels[e])
        ax.set_ylabel("gate weight")
        ax.set_title(f"{recording.module_names[m]}: gate of task {recording.task_names[t]}",
                     fontsize=9)
    if step is not None:
        ax.axvline(recording.steps[recording.step_index(step)], color="0.4", ls=":", lw=1.5)
    ax.set_xlabel("training step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# -------------------------------------------------------------- common share
def common_share_table(recording: GateRecording, step=-1, tasks=None, by: str = "layer"):
    """(values, task names, column labels): the gate mass on common experts per task and layer.

    ``by="layer"`` averages the modules of a transformer layer, ``by="module"`` keeps each.
    """
    if by not in ("layer", "module"):
        raise ValueError(f"common_share: by={by!r}; choose 'layer' or 'module'.")
    s = recording.step_index(step)
    rows = _task_rows(recording, tasks)
    share = recording.common_share()[s][:, rows]                     # (modules, tasks)
    if by == "module":
        columns = [short_module_name(n) for n in recording.module_names]
        values = share.T
    else:
        groups = layer_groups(recording.module_names)
        columns = [label for label, _ in groups]
        values = np.stack([share[members].mean(0) for _, members in groups], axis=1)
    return values, [recording.task_names[r] for r in rows], columns


def common_share(recording: GateRecording, step=-1, tasks=None, by: str = "layer", ax=None,
                 annotate: Optional[bool] = None):
    """Heatmap of the share of gate mass on common (vs task-specific) experts, task x layer.

    1 means a task relies only on the shared experts, 0 only on its own.

    Taught in: notebooks/08_gate_lab.ipynb.
    """
    values, task_names, columns = common_share_table(recording, step, tasks, by)
    fig, ax = _new_axes(ax, (1.8 + 0.7 * len(columns), 1.4 + 0.45 * len(task_names)))
    # White is where every task starts (the uniform gate: n_common / |S_t|), not 0.5: blue
    # cells moved towards the common experts, red ones towards the task's own.
    start = recording.n_common / (recording.n_common + recording.n_specific)
    norm = (TwoSlopeNorm(vmin=0.0, vcenter=start, vmax=1.0) if 0.0 < start < 1.0
            else Normalize(vmin=0.0, vmax=1.0))
    image = ax.imshow(values, cmap="RdBu", norm=norm, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, rotation=45 if by == "module" else 0,
                  ha="right" if by == "module" else "center", fontsize=8)
    ax.set_yticks(range(len(task_names)), task_names, fontsize=8)
    ax.set_xlabel(by)
    ax.set_ylabel("task")
    if annotate if annotate is not None else values.size <= ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(float(norm(v)) - 0.5) > 0.3 else "black")
    step_value = int(recording.steps[recording.step_index(step)])
    ax.set_title(f"gate mass on common experts (step {step_value})", fontsize=9)
    bar = fig.colorbar(image, ax=ax, label=f"common share (white: the start, {start:.2f})",
                       shrink=0.9)
    bar.set_ticks(sorted({0.0, round(start, 2), 1.0}))
    return fig


# -------------------------------------------------------------- 1+N and results
def affinity_matrix(matrix, task_names: Sequence[str], clusters: Optional[Sequence] = None,
                    ax=None, annotate: Optional[bool] = None):
    """The task-affinity matrix, tasks ordered by cluster, each cluster outlined.

    Args:
        matrix: (n_tasks, n_tasks) affinities (e.g. cosine similarities of task gradients).
        task_names: one name per row.
        clusters: one cluster label per task (None: one cluster); tasks are grouped by
            cluster, clusters in order of first appearance.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    matrix = np.asarray(matrix, dtype=float)
    n = len(task_names)
    if matrix.ndim != 2 or matrix.shape != (n, n):
        raise ValueError(f"affinity_matrix: matrix has shape {matrix.shape} but there are {n} task "
                         f"names; pass a square ({n}, {n}) matrix, one row per task.")
    clusters = [0] * n if clusters is None else list(clusters)
    if len(clusters) != n:
        raise ValueError(f"affinity_matrix: {len(clusters)} cluster labels for {n} tasks; "
                         "pass one cluster label per task.")
    first_seen = {c: i for i, c in reversed(list(enumerate(clusters)))}
    order = sorted(range(n), key=lambda i: (first_seen[clusters[i]], i))
    values = matrix[np.ix_(order, order)]
    fig, ax = _new_axes(ax, (2.0 + 0.55 * n, 1.2 + 0.5 * n))
    limit = max(float(np.abs(values).max()), 1e-12)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    names = [str(task_names[i]) for i in order]
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    if annotate if annotate is not None else n * n <= ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * limit else "black")
    start = 0
    for label in sorted(first_seen, key=first_seen.get):
        size = clusters.count(label)
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False,
                               edgecolor="black", lw=2.0))
        ax.annotate(f"cluster {label}", xy=(1.0, start + (size - 1) / 2),
                    xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                    va="center", ha="left", rotation=90, fontsize=8)
        start += size
    ax.set_title("task affinity (clusters outlined)", fontsize=9)
    fig.colorbar(image, ax=ax, label="affinity", shrink=0.9)
    return fig


RESULT_COLUMNS = ("method", "seed", "task")


def task_tree(affinity: pd.DataFrame, n_clusters: Optional[int] = None, method: str = "average",
              on: str = "affinity", ax=None, figsize=(6.0, 3.0)):
    """The tasks' hierarchical-clustering tree (`cgc_edu.framework.task_linkage`), cut into
    ``n_clusters`` clusters when given: the cut is a dashed line, each cluster's branches one
    colour of the task palette (scipy's dendrogram), the joins above it grey.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    fig, ax = _new_axes(ax, figsize)
    tree = task_linkage(affinity, method=method, on=on)
    heights = np.sort(tree[:, 2])             # the n - 1 joins, lowest first
    cut = None
    if n_clusters is not None and 1 < n_clusters <= len(affinity):
        # midway between the highest join kept inside a cluster and the lowest one cut
        below = heights[len(heights) - n_clusters] if n_clusters <= len(heights) else 0.0
        cut = (below + heights[len(heights) - n_clusters + 1]) / 2
    hierarchy.set_link_color_palette(list(TASK_COLORS))
    try:
        dendrogram(tree, labels=list(affinity.index), ax=ax, leaf_rotation=45,
                   leaf_font_size=8, color_threshold=cut if cut is not None else 0,
                   above_threshold_color="0.55")
    finally:
        hierarchy.set_link_color_palette(None)
    if cut is not None:
        ax.axhline(cut, color="0.3", ls="--", lw=1)
        # the label sits right of the axes, where no link can cross it
        ax.annotate(f"cut:\n{n_clusters} clusters", (1.0, cut),
                    xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=8,
                    color="0.3")
    ax.set_ylabel("distance (1 − affinity)" if on == "affinity" else "distance (1 − corr.)",
                  fontsize=9)
    ax.set_xlabel("task", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)      # no text larger than the title
    ax.set_ylim(0, None)
    ax.set_title(f"{method}-linkage tree of the tasks (lower joins = more alike)", fontsize=10)
    return fig


def method_comparison(results: pd.DataFrame, metric: str = "exact_match", ax=None,
                      average: bool = True):
    """Grouped bars: per task (and on average over tasks), one bar per method.

    ``results`` is long format, one row per (method, seed, task) with a ``metric`` column,
    e.g. ``method="cgc_lora", seed=0, task="add", exact_match=0.83``. A bar is the mean over
    seeds; its error bar spans the lowest to the highest seed. The "average" group first
    averages the tasks within each seed. Methods and tasks keep their order of appearance.
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"method_comparison: results is a {type(results).__name__}; pass a pandas "
                        f"DataFrame with columns {list(RESULT_COLUMNS) + [metric]}.")
    missing = [c for c in (*RESULT_COLUMNS, metric) if c not in results.columns]
    if missing:
        raise ValueError(f"method_comparison: results lack columns {missing} (it has "
                         f"{list(results.columns)}); pass long format with one row per method, "
                         f"seed and task and a '{metric}' column.")
    if results.empty:
        raise ValueError("method_comparison: results is empty; there is nothing to compare.")
    table = results[list(RESULT_COLUMNS) + [metric]]
    if average:
        per_seed = table.groupby(["method", "seed"], sort=False)[metric].mean().reset_index()
        table = pd.concat([table, per_seed.assign(task="average")], ignore_index=True)
    stats = table.groupby(["task", "method"], sort=False)[metric].agg(["mean", "min", "max"])
    methods, tasks = list(pd.unique(table["method"])), list(pd.unique(table["task"]))
    fig, ax = _new_axes(ax, (1.5 + 0.45 * len(tasks) * len(methods), 3.4))
    width = 0.8 / len(methods)
    x = np.arange(len(tasks))
    for k, method in enumerate(methods):
        rows = stats.xs(method, level="method").reindex(tasks)
        err = np.vstack([rows["mean"] - rows["min"], rows["max"] - rows["mean"]])
        colour, _ = method_style(method)
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, rows["mean"], width, yerr=err,
               capsize=2, label=method, color=colour, error_kw={"lw": 1})
    ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 5 else 0, fontsize=8)
    if average:
        ax.axvline(len(tasks) - 1.5, color="0.6", lw=1, ls=":")
    ax.set_ylabel(metric.replace("_", " "))
    low, high = table[metric].min(), table[metric].max()
    if 0.0 <= low and high <= 1.0:
        ax.set_ylim(0, 1.05)
    n_seeds = results["seed"].nunique()
    ax.set_title(f"{metric.replace('_', ' ')} per task: mean over {n_seeds} seed"
                 f"{'s' if n_seeds != 1 else ''}, bars span min..max", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return fig


def map_overview(seeds: pd.DataFrame, cells: Sequence[str], methods: Sequence[str], ax=None,
                 names: Optional[dict] = None):
    """A map's cells at a glance: one row per cell, each method's mean test score over its
    seeds (a dot in its colour) and a line from its lowest to its highest seed; methods are
    set a little apart vertically so that their lines do not hide each other. ``seeds`` is
    the map's ``map_seeds`` table (columns ``cell, method, seed, average``); ``names`` gives
    a cell's label (default: its name).

    Taught in: notebooks/11_which_method.ipynb.
    """
    need = ["cell", "method", "seed", "average"]
    missing = [c for c in need if c not in getattr(seeds, "columns", ())]
    if missing:
        raise ValueError(f"map_overview: the table lacks columns {missing}; pass the map's "
                         "map_seeds table (fair_map.read_map(...)['map_seeds']).")
    absent = [c for c in cells if c not in set(seeds["cell"])]
    if absent:
        raise ValueError(f"map_overview: no runs of cells {absent}; the table has "
                         f"{sorted(set(seeds['cell']))}.")
    fig, ax = _new_axes(ax, (BOOK_WIDTH, 0.9 + 0.7 * len(cells)))
    for k, method in enumerate(methods):
        colour, label = method_style(method)
        offset = 0.12 * (k - (len(methods) - 1) / 2)
        for row, cell in enumerate(cells):
            mine = 100 * seeds.loc[(seeds["cell"] == cell) & (seeds["method"] == method), "average"]
            if mine.empty:
                continue
            y = len(cells) - 1 - row - offset
            ax.plot([mine.min(), mine.max()], [y, y], color=colour, lw=1.5, alpha=0.7)
            ax.plot(mine.mean(), y, "o", color=colour, ms=6, label=label if row == 0 else None)
    ax.set_yticks(range(len(cells)), [(names or {}).get(c, c) for c in cells[::-1]], fontsize=8)
    ax.set_ylim(-0.6, len(cells) - 0.4)
    ax.set_xlabel("test exact match (%): mean over runs (dot), lowest to highest run (line)",
                  fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=method_style(m)[0], marker="o", lw=1.5,
                          label=method_style(m)[1]) for m in methods]
    ax.legend(handles=handles, fontsize=8, frameon=False, ncols=len(methods),
              loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig


# ------------------------------------------------------------------ the study, seed by seed
CURVE_COLUMNS = ("setting", "method", "seed", "lr", "step", "validation")


def validation_curves(curves: pd.DataFrame, lr: dict, methods: Sequence[str],
                      setting: str = "named", fig=None, ncols: int = 3,
                      names: Optional[dict] = None):
    """Small multiples of a study's validation curves: one panel per method at its chosen
    rate, one thin line per seed and the mean over seeds in bold, in the method's colour.

    ``curves`` is the study's ``curves.csv`` (columns `CURVE_COLUMNS`), ``lr`` maps each
    method to its rate (the study's ``config["lr"]``). The panels share both axes, so the
    spread of the seeds compares across panels; ``names`` overrides their titles (default:
    `method_style`'s names). ``fig`` reuses a figure.

    Taught in: notebooks/07_experiments.ipynb.
    """
    missing = [c for c in CURVE_COLUMNS if c not in getattr(curves, "columns", ())]
    if missing:
        raise ValueError(f"validation_curves: the curves lack columns {missing}; pass the "
                         "study's curves.csv as a DataFrame.")
    rate = curves["method"].map(lr).astype(float)
    at_rate = curves[(curves["setting"] == setting) & np.isclose(curves["lr"], rate)]
    absent = [m for m in methods if m not in set(at_rate["method"])]
    if absent:
        raise ValueError(f"validation_curves: no {setting!r} curves of {absent} at their "
                         f"rates in lr; the curves have {sorted(set(curves['method']))}.")
    nrows = -(-len(methods) // ncols)
    if fig is None:
        fig = plt.figure(figsize=(min(BOOK_WIDTH, 2.5 * ncols), 0.6 + 1.8 * nrows),
                         layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, method in zip(axes, methods):
        colour, name = method_style(method)
        mine = at_rate[at_rate["method"] == method].sort_values("step")
        for _, run in mine.groupby("seed"):
            ax.plot(run["step"], 100 * run["validation"], color=colour, lw=0.8, alpha=0.5)
        mean = mine.groupby("step")["validation"].mean()
        ax.plot(mean.index, 100 * mean.to_numpy(), color=colour, lw=2.2)
        ax.set_title((names or {}).get(method, name), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(methods) - ncols):len(methods)]:
        ax.tick_params(labelbottom=True)     # the lowest panel of each column keeps its steps
    n_seeds = at_rate["seed"].nunique()
    fig.supxlabel("training step", fontsize=8)
    fig.supylabel("validation exact match (%)", fontsize=8)
    fig.suptitle(f"one thin line per seed ({n_seeds}), the mean in bold", fontsize=9)
    return fig


def paired_differences(results: pd.DataFrame, paired: pd.DataFrame, ax=None,
                       names: Optional[dict] = None):
    """Paired comparisons as a picture: one row per pair of ``paired`` (the rows of
    `cgc_edu.study.statistics.paired_table`: ``method, baseline, mean_diff, ci_low,
    ci_high``), a dot per seed for the difference of the two methods' averages on that seed
    (in points), a tick at their mean and a band over the bootstrap 95 % interval, in the
    method's colour. A band clear of the dashed zero line is a difference beyond the seeds'
    noise.

    ``results`` is the study's long table of one setting (``method, seed, task,
    exact_match``); ``names`` overrides the methods' names in the labels (default:
    `method_style`'s).
    """
    missing = [c for c in ("method", "baseline", "mean_diff", "ci_low", "ci_high")
               if c not in getattr(paired, "columns", ())]
    if missing or len(paired) == 0:
        raise ValueError(f"paired_differences: paired lacks rows or columns {missing}; pass "
                         "statistics.paired_table(results) (or some of its rows).")
    average = per_seed_average(results).pivot(index="seed", columns="method", values="average")
    absent = sorted((set(paired["method"]) | set(paired["baseline"])) - set(average))
    if absent:
        raise ValueError(f"paired_differences: results hold no runs of {absent}; they have "
                         f"{sorted(average.columns)}.")
    fig, ax = _new_axes(ax, (6.0, 1.0 + 0.42 * len(paired)))

    def label(method):
        return (names or {}).get(method, method_style(method)[1])

    rows = list(paired.itertuples(index=False))
    for row, pc in enumerate(rows):
        diff = 100 * (average[pc.method] - average[pc.baseline]).dropna()
        colour, y = method_style(pc.method)[0], len(rows) - 1 - row
        ax.plot([100 * pc.ci_low, 100 * pc.ci_high], [y, y], color=colour, lw=7,
                alpha=0.3, solid_capstyle="butt")
        offsets = (np.arange(len(diff)) - (len(diff) - 1) / 2) * 0.07
        ax.plot(diff.to_numpy(), y + offsets, "o", color=colour, ms=4)
        ax.plot([100 * pc.mean_diff] * 2, [y - 0.3, y + 0.3], color=colour, lw=2)
    ax.axvline(0, color="0.4", lw=1, ls="--")
    ax.set_yticks(range(len(rows)),
                  [f"{label(pc.method)} − {label(pc.baseline)}" for pc in rows[::-1]],
                  fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("difference of the average exact match, per seed (points)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("dots: seeds; tick: mean; band: bootstrap 95 % interval", fontsize=9)
    return fig


#: One colour per verdict of the fair protocol (`cgc_edu.study.protocol.VERDICTS`).
VERDICT_COLORS = {"ahead": "#111111", "behind": "#B2182B", "equivalent": "#5E3C99",
                  "inconclusive": "#999999"}   # apart from the methods' colours


def verdict_intervals(comparisons: pd.DataFrame, margin: float, ax=None,
                      names: Optional[dict] = None):
    """The fair protocol's comparisons as a picture: one row per comparison (columns
    ``method, baseline, difference, ci_low, ci_high, verdict``, fractions of exact match,
    as `cgc_edu.study.protocol.judge` returns them), a dot at the mean paired difference and
    a bar over its 95 % interval, coloured by verdict; the shaded band is the equivalence
    margin +-``margin``.

    Taught in: notebooks/07_experiments.ipynb.
    """
    need = ["method", "baseline", "difference", "ci_low", "ci_high", "verdict"]
    missing = [c for c in need if c not in getattr(comparisons, "columns", ())]
    if missing or len(comparisons) == 0:
        raise ValueError(f"verdict_intervals: comparisons lack rows or columns {missing}; pass "
                         "protocol.judge(...) or the rows of a stored map.csv.")
    unknown = sorted(set(comparisons["verdict"]) - set(VERDICT_COLORS))
    if unknown:
        raise ValueError(f"verdict_intervals: unknown verdicts {unknown}; expected "
                         f"{list(VERDICT_COLORS)}.")
    fig, ax = _new_axes(ax, (6.0, 1.0 + 0.4 * len(comparisons)))
    label = lambda m: (names or {}).get(m, method_style(m)[1])   # noqa: E731
    rows = list(comparisons.itertuples(index=False))
    ax.axvspan(-100 * margin, 100 * margin, color="0.9", zorder=0)
    ax.axvline(0, color="0.4", lw=1, ls="--")
    for row, c in enumerate(rows):
        y, colour = len(rows) - 1 - row, VERDICT_COLORS[c.verdict]
        ax.plot([100 * c.ci_low, 100 * c.ci_high], [y, y], color=colour, lw=3)
        ax.plot(100 * c.difference, y, "o", color=colour, ms=6)
    ax.set_yticks(range(len(rows)), [f"{label(c.method)} − {label(c.baseline)}"
                                     for c in rows[::-1]], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("paired difference of test exact match (points), 95 % interval", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    shown = [v for v in VERDICT_COLORS if v in set(comparisons["verdict"])]
    below = ax.transAxes + ScaledTranslation(0, -0.38, fig.dpi_scale_trans)   # under the label
    ax.legend(handles=[plt.Line2D([], [], color=VERDICT_COLORS[v], marker="o", lw=3, label=v)
                       for v in shown], fontsize=8, loc="upper center", frameon=False,
              bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncols=len(shown))
    ax.set_title(f"grey band: equivalent within ±{100 * margin:g} points", fontsize=9)
    return fig


def rate_grid(grid: pd.DataFrame, methods: Optional[Sequence[str]] = None, ax=None):
    """Each method's learning-rate grid: validation exact match on the tuning seed against
    the rate (log scale), one line per method in its colour, the chosen rate ringed.
    ``grid`` has columns ``method, lr, validation, chosen`` (one cell of a stored
    ``grid.csv``).

    Taught in: notebooks/07_experiments.ipynb.
    """
    need = ["method", "lr", "validation", "chosen"]
    missing = [c for c in need if c not in getattr(grid, "columns", ())]
    if missing or len(grid) == 0:
        raise ValueError(f"rate_grid: grid lacks rows or columns {missing}; pass one cell of "
                         "a stored grid.csv.")
    methods = list(methods) if methods is not None else list(dict.fromkeys(grid["method"]))
    absent = sorted(set(methods) - set(grid["method"]))
    if absent:
        raise ValueError(f"rate_grid: no grid runs of {absent}; the grid has "
                         f"{sorted(set(grid['method']))}.")
    fig, ax = _new_axes(ax, (6.0, 3.0))
    for m in methods:
        rows = grid[grid["method"] == m].sort_values("lr")
        colour, name = method_style(m)
        ax.plot(rows["lr"], 100 * rows["validation"], "o-", color=colour, label=name, ms=4)
        best = rows[rows["chosen"]]
        ax.plot(best["lr"], 100 * best["validation"], "o", ms=11, mfc="none", mec=colour, mew=1.5)
    ax.set_xscale("log")
    rates = sorted(set(grid.loc[grid["method"].isin(methods), "lr"]))
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("learning rate (log scale)", fontsize=8)
    ax.set_ylabel("validation exact match (%)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_title("tuning seed: each method's grid, the chosen rate ringed", fontsize=9)
    return fig
