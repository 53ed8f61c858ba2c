"""Pictures of the layers, drawn from their configuration (matplotlib only).

`lora_diagram` draws one LoRA layer, `cgc_lora_diagram` the layer of any `AdapterConfig`
(frozen W0, the experts with their ranks, the mask S_t of one task, the gate, the sum), and
`one_plus_n_diagram` the 1+N serving pattern. Nothing is hard-coded: change the config and the
picture changes with it. Every drawn part carries a ``gid`` (``"expert:common:0"``,
``"gate"``, ``"adapter set:extract"``, ...) so code and tests can find it; colours come from
`cgc_edu.course.plots.PART_COLORS`. Figures are at most `MAX_WIDTH` (7.3) inches wide, inside the book's 750 px column.

Taught in: notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ..adapters.config import AdapterConfig
from ..methods import method_of
from .plots import METHOD_COLORS, PART_COLORS

#: The widest figure the book's column (750 px) shows without scaling, in inches at dpi 100,
#: less the few pixels a tight bounding box adds.
MAX_WIDTH = 7.3
_TEXT = "#222222"
_MUTED = "#9a9a9a"


# ------------------------------------------------------------------ drawing helpers
def _canvas(ax, size, xlim, ylim):
    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_axis_off()
    return ax.figure, ax


def _box(ax, x, y, w, h, text, face, gid, edge=None, text_color=_TEXT, fontsize=8, lw=1.2,
         round_=0.08, **text_kw):
    """A rounded box with its lower-left corner at (x, y) and centred text."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={round_}",
                           facecolor=face, edgecolor=edge or "#444444", lw=lw, gid=gid)
    ax.add_patch(patch)
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
                color=text_color, **text_kw)
    return patch


def _arrow(ax, start, end, color="#444444", lw=1.0, ls="-", gid="arrow", head=True):
    arrow = FancyArrowPatch(start, end, arrowstyle="-|>" if head else "-", mutation_scale=9,
                            color=color, lw=lw, ls=ls, gid=gid, shrinkA=0, shrinkB=0)
    ax.add_patch(arrow)
    return arrow


def _circle_sum(ax, x, y, gid, label="+", r=0.22):
    _box(ax, x - r, y - r, 2 * r, 2 * r, "", "white", gid, round_=r)
    ax.text(x, y, label, ha="center", va="center", fontsize=10, color=_TEXT)


def drawn_parts(fig, prefix: str = "") -> list[str]:
    """The gids of the parts drawn in ``fig`` that start with ``prefix``, in drawing order.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    return [p.get_gid() for ax in fig.axes for p in ax.patches
            if p.get_gid() and p.get_gid().startswith(prefix)]


# ------------------------------------------------------------------ LoRA
def lora_diagram(rank: int = 4, alpha: float = 8.0, d_in: Optional[int] = None,
                 d_out: Optional[int] = None, rslora: bool = False, ax=None):
    """One LoRA layer: y = W0 x + s · B A x, with W0 frozen and s = alpha / r.

    Draws the frozen W0 (d_out x d_in), A (r x d_in), B (d_out x r), the scaling and the sum.
    With ``rslora=True`` the scaling is rsLoRA's alpha / sqrt(r) (Kalajdzievski 2023).
    ``d_in``/``d_out`` print the shapes as numbers (symbols when left out).

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_diagram: rank={rank!r}; pass a positive integer.")
    din = "d_in" if d_in is None else str(d_in)
    dout = "d_out" if d_out is None else str(d_out)
    scaling = alpha / rank ** 0.5 if rslora else alpha / rank
    rule = "α/√r" if rslora else "α/r"
    fig, ax = _canvas(ax, (6.4, 2.6), (0, 10), (0, 4))
    ax.text(0.35, 2.0, "x", ha="center", va="center", fontsize=12, color=_TEXT)
    ax.text(0.35, 1.55, f"({din})", ha="center", va="center", fontsize=7, color=_MUTED)
    # Two paths from x: the frozen weight on top, the low-rank update below.
    ax.plot([0.7, 1.1, 1.1], [2.0, 2.0, 3.2], color="#444444", lw=1.0)
    ax.plot([1.1, 1.1], [2.0, 0.9], color="#444444", lw=1.0)
    _arrow(ax, (1.1, 3.2), (2.0, 3.2))
    _box(ax, 2.0, 2.75, 4.4, 0.9, f"W0  frozen,  {dout} × {din}", PART_COLORS["frozen"],
         "frozen:W0", fontsize=9)
    _arrow(ax, (1.1, 0.9), (2.0, 0.9))
    _box(ax, 2.0, 0.55, 1.5, 0.7, f"A\n{rank} × {din}", PART_COLORS["common"], "lora:A",
         text_color="white", fontsize=8)
    _arrow(ax, (3.5, 0.9), (4.0, 0.9))
    ax.text(3.75, 1.15, f"r={rank}", ha="center", fontsize=7, color=_TEXT)
    _box(ax, 4.0, 0.55, 1.5, 0.7, f"B\n{dout} × {rank}", PART_COLORS["common"], "lora:B",
         text_color="white", fontsize=8)
    _arrow(ax, (5.5, 0.9), (6.1, 0.9))
    _box(ax, 6.1, 0.55, 1.55, 0.7, f"× {rule}\n= {scaling:.3g}", "white", "lora:scaling",
         fontsize=8)
    ax.text(3.75, 0.2, "trainable: A random, B = 0 at the start", ha="center", fontsize=7,
            color=_MUTED)
    # The sum and the output.
    _arrow(ax, (6.4, 3.2), (8.3, 3.2), head=False)
    _arrow(ax, (8.3, 3.2), (8.3, 2.22))
    _arrow(ax, (7.65, 0.9), (8.3, 0.9), head=False)
    _arrow(ax, (8.3, 0.9), (8.3, 1.78))
    _circle_sum(ax, 8.3, 2.0, "sum")
    _arrow(ax, (8.52, 2.0), (9.3, 2.0))
    ax.text(9.55, 2.0, "y", ha="center", va="center", fontsize=12, color=_TEXT)
    kind = "rsLoRA" if rslora else "LoRA"
    ax.set_title(f"{kind}: y = W0 x + {rule} · B A x   (r = {rank}, α = {alpha:g})", fontsize=10)
    return fig


# ------------------------------------------------------------------ CGC-LoRA
def _expert_groups(config: AdapterConfig, names: Sequence[str]):
    """[(kind, label, [expert ids])]: the common block, then one block per task."""
    groups = []
    if config.n_common:
        groups.append(("common", "common", list(range(config.n_common))))
    for t in range(config.n_tasks if config.n_specific else 0):
        start = config.n_common + t * config.n_specific
        groups.append(("specific", str(names[t]), list(range(start, start + config.n_specific))))
    return groups


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0–3, 7": a long S_t in a few characters."""
    runs: list[list[int]] = []
    for e in ids:
        if runs and e == runs[-1][-1] + 1:
            runs[-1].append(e)
        else:
            runs.append([e])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def cgc_lora_diagram(config: AdapterConfig, task=0, task_names: Optional[Sequence[str]] = None,
                     weights: Optional[Sequence[float]] = None, ax=None):
    """The layer of ``config`` as task ``task`` sees it: y = W0 x + (α/r) Σ_e g_t,e B_e A_e x.

    Draws the frozen W0, every expert of the bank with its rank r_e (the common block and
    each task's own block, labelled), the mask S_t (the experts task ``task`` may use in
    colour, the others greyed with weight 0), the gate reading the task id, and the sums.
    ``weights``: the E gate weights to print (e.g. ``layer.gate_weights(torch.tensor([t]))[0]``);
    by default the gate's start, uniform over S_t. Works for every preset (LoRA,
    independent, MoE-LoRA, CGC-LoRA).

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"cgc_lora_diagram: config is a {type(config).__name__}; pass an "
                        "AdapterConfig, e.g. AdapterConfig.cgc_lora(rank=6, n_tasks=3).")
    c = config
    names = [str(n) for n in task_names] if task_names is not None else [
        f"task {t}" for t in range(c.n_tasks)]
    if len(names) != c.n_tasks:
        raise ValueError(f"cgc_lora_diagram: {len(names)} task names for n_tasks={c.n_tasks}; "
                         "pass one name per task.")
    t = names.index(str(task)) if str(task) in names and not isinstance(task, int) else task
    if not isinstance(t, int) or not 0 <= t < c.n_tasks:
        raise ValueError(f"cgc_lora_diagram: task={task!r}; pass a task id in [0, {c.n_tasks - 1}] "
                         f"or one of the names {names}.")
    E, r_e, allowed = c.n_experts, c.expert_rank, set(c.allowed_experts(t))
    if weights is None:
        weights = [1.0 / len(allowed) if e in allowed else 0.0 for e in range(E)]
    weights = [float(w) for w in (weights.detach() if hasattr(weights, "detach") else weights)]
    if len(weights) != E:
        raise ValueError(f"cgc_lora_diagram: {len(weights)} weights for {E} experts; pass the "
                         "gate weights of one task over the whole bank.")
    groups = _expert_groups(c, names)
    # Horizontal layout: the expert row spans x in [2.4, 9.6], a small gap between groups.
    left, right = 2.4, 9.4
    gap = 0.25 if len(groups) <= 5 else 0.12
    slot = (right - left - gap * (len(groups) - 1)) / E
    width = min(slot * 0.82, 1.1)
    fig, ax = _canvas(ax, (MAX_WIDTH, 4.1), (0, 10.6), (0, 6.2))
    font = 7 if slot > 0.45 else 6
    narrow, thin = slot < 0.42, slot < 0.3      # too narrow for two lines / for upright text
    x_of, cursor = {}, left
    for i, (kind, label, members) in enumerate(groups):
        lo = cursor
        for e in members:
            x_of[e] = cursor + slot / 2
            cursor += slot
        hi = cursor
        on = any(e in allowed for e in members)
        ax.plot([lo + 0.05, hi - 0.05], [4.05, 4.05], color=PART_COLORS[kind] if on else _MUTED,
                lw=2)
        # Labels wider than their block alternate between two rows so neighbours never collide.
        stagger = (hi - lo) < 0.11 * len(label) + 0.1 and i % 2 == 1
        ax.text((lo + hi) / 2, 4.4 if stagger else 4.1, label, ha="center", va="bottom",
                fontsize=font, color=_TEXT if on else _MUTED)
        cursor += gap
    # The input bus over the experts, and the frozen path on top.
    ax.text(0.35, 4.75, "x", ha="center", va="center", fontsize=12, color=_TEXT)
    ax.plot([0.65, 2.0], [4.75, 4.75], color="#444444", lw=1.0)
    ax.plot([2.0, 2.0], [4.75, 5.55], color="#444444", lw=1.0)
    _arrow(ax, (2.0, 5.55), (3.3, 5.55))
    _box(ax, 3.3, 5.2, 4.2, 0.7, "W0  (frozen base weight)", PART_COLORS["frozen"], "frozen:W0",
         fontsize=8)
    ax.plot([2.0, x_of[E - 1]], [4.75, 4.75], color="#444444", lw=1.0)
    top, bottom = 3.35, 2.55
    for e in range(E):
        kind = "common" if e < c.n_common else "specific"
        on = e in allowed
        _arrow(ax, (x_of[e], 4.75), (x_of[e], top + 0.02 if on else top), lw=0.8,
               color="#444444" if on else _MUTED)
        inside = f"{e}" if narrow else f"{e}\nr={r_e}"
        _box(ax, x_of[e] - width / 2, bottom, width, top - bottom, inside,
             PART_COLORS[kind] if on else PART_COLORS["masked"], f"expert:{kind}:{e}",
             edge="#333333" if on else "#c8c8c8", text_color="white" if on else _MUTED,
             fontsize=font, lw=1.4 if on else 0.8, rotation=90 if thin else 0)
        # Each expert's output times its gate weight, zero outside S_t.
        ax.plot([x_of[e], x_of[e]], [bottom, 1.95], color="#444444" if on else _MUTED,
                lw=0.8, ls="-" if on else ":")
        ax.text(x_of[e], 2.2, f"{weights[e]:.2f}", ha="center", va="center",
                fontsize=5.5 if narrow else font, rotation=90 if narrow else 0, color=PART_COLORS["gate"] if on else _MUTED,
                fontweight="bold" if on else "normal",
                bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none"))
    ax.text(left - 0.1, 2.2, "g_t,e", ha="right", va="center", fontsize=7,
            color=PART_COLORS["gate"])
    ax.text(left - 0.1, (top + bottom) / 2, f"B_e A_e\nr_e = {r_e}", ha="right", va="center",
            fontsize=7, color=_TEXT)
    # The weighted sum of the experts, scaled, added to W0 x.
    ax.plot([x_of[0], x_of[E - 1]], [1.95, 1.95], color="#444444", lw=1.0)
    ax.plot([x_of[E - 1], 9.85], [1.95, 1.95], color="#444444", lw=1.0)
    _arrow(ax, (7.5, 5.55), (9.85, 5.55), head=False)
    _arrow(ax, (9.85, 5.55), (9.85, 4.22))
    _arrow(ax, (9.85, 1.95), (9.85, 3.78))
    _circle_sum(ax, 9.85, 4.0, "sum")
    ax.text(9.85, 2.9, f"× α/r\n= {c.scaling:.3g}", ha="center", va="center", fontsize=7,
            color=_TEXT, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
    _arrow(ax, (10.07, 4.0), (10.3, 4.0))
    ax.text(10.45, 4.0, "y", ha="center", va="center", fontsize=12, color=_TEXT)
    # The gate: task id -> weights over S_t (learned, fixed uniform, or a single expert).
    if c.experts_per_task == 1:
        gate_text, gate_kind = "no gate needed:\nweight 1 on the\ntask's one expert", "no"
    elif c.gate == "uniform":
        gate_text, gate_kind = "gate (fixed):\nuniform over S_t", "uniform"
    else:
        gate_text, gate_kind = "gate (learned):\nsoftmax(W_g emb(t))\nmasked to S_t", "learned"
    _box(ax, 0.1, 0.25, 2.05, 1.25, gate_text, "white", "gate", edge=PART_COLORS["gate"],
         fontsize=7, lw=1.6)
    ax.text(1.12, 2.05, f"task id t = {t}" + (f"\n({names[t]})" if task_names else ""), ha="center", va="center", fontsize=7,
            color=_TEXT)
    _arrow(ax, (1.12, 1.8), (1.12, 1.5))
    ax.plot([2.15, x_of[E - 1]], [0.85, 0.85], color=PART_COLORS["gate"], lw=1.2)
    for e in sorted(allowed):
        _arrow(ax, (x_of[e], 0.85), (x_of[e], 2.02), color=PART_COLORS["gate"], lw=1.0, ls="--")
    s_t = "{" + _ranges(sorted(allowed)) + "}"
    ax.text(left, 0.3, f"S_t = {s_t}: {len(allowed)} of {E} experts, task rank |S_t|·r_e = "
            f"{len(allowed) * r_e}   ({gate_kind} gate; budget '{c.budget}')",
            ha="left", va="center", fontsize=7, color=_TEXT)
    ax.set_title(f"{method_of(c)}: {c.n_common} common + {c.n_specific} specific × "
                 f"{_count(c.n_tasks, 'task')} = {_count(E, 'expert')} of rank {r_e} (r = {c.rank}, α = {c.alpha:g})\n"
                 f"as task {t}{f' ({names[t]})' if task_names else ''} sees it: the experts outside S_t are greyed",
                 fontsize=9)
    return fig


# ------------------------------------------------------------------ 1+N
def one_plus_n_diagram(clusters, request: Optional[str] = None, ax=None):
    """1+N serving: one frozen central model, N adapter sets inside it, a router from task
    to set. The sets are drawn inside the central model's box: their experts live in its
    layers, beside each frozen W0, not in front of the model.

    ``clusters``: ``{cluster name: [task names]}`` (or a `cgc_edu.framework.OnePlusN`).
    ``request``: a task name whose route is drawn in bold (router -> its cluster's set).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    clusters = getattr(clusters, "clusters", clusters)
    if not isinstance(clusters, Mapping) or not clusters:
        raise ValueError(f"one_plus_n_diagram: clusters={clusters!r}; pass a non-empty dict "
                         "{cluster name: [task names]}.")
    clusters = {str(k): [str(t) for t in v] for k, v in clusters.items()}
    tasks = [t for members in clusters.values() for t in members]
    chosen = None
    if request is not None:
        found = [name for name, members in clusters.items() if str(request) in members]
        if not found:
            raise KeyError(f"one_plus_n_diagram: request={request!r} is not a task of any cluster; "
                           f"known tasks: {tasks}.")
        chosen = found[0]
    n = len(clusters)
    top = n * 1.0 + 1.0                      # the sets' rows, and a header above them
    fig, ax = _canvas(ax, (MAX_WIDTH, max(2.6, 0.75 * n + 1.3)), (0, 10), (0, top + 0.1))
    mid = n / 2 + 0.2                          # the middle of the sets' rows
    _box(ax, 0.05, mid - 0.45, 1.5, 0.9, "request\n(prompt, task)", "white", "request",
         fontsize=8)
    _box(ax, 1.95, mid - 0.6, 1.55, 1.2, "router\ntask → set,\nlocal task id",
         PART_COLORS["router"], "router", text_color="white", fontsize=8)
    _arrow(ax, (1.55, mid), (1.95, mid))
    # The 1: the central model, drawn around the sets: their experts sit in its layers.
    _box(ax, 3.9, 0.1, 5.1, top - 0.1, "", PART_COLORS["frozen"], "central")
    ax.text(6.45, top - 0.32, "the 1: the central model (frozen, shared by every set)",
            ha="center", va="center", fontsize=8, fontweight="bold", color=_TEXT)
    ax.text(6.45, top - 0.62, "a set's experts sit in the model's layers, beside each $W_0$",
            ha="center", va="center", fontsize=7, color=_TEXT)
    for i, (name, members) in enumerate(clusters.items()):
        y = top - 0.8 - (i + 1) * 1.0 + 0.1       # row i of the sets, from the top
        bold = name == chosen
        _box(ax, 4.25, y, 4.4, 0.8, "", "white", f"adapter set:{name}",
             edge=METHOD_COLORS["cgc_lora"], lw=2.2 if bold else 1.0)
        ax.text(6.45, y + 0.57, f"{name}  (CGC-LoRA set)", ha="center", va="center",
                fontsize=8, fontweight="bold" if bold else "normal", color=_TEXT)
        listed = textwrap.wrap(", ".join(members), 64, max_lines=2, placeholder=" …")
        ax.text(6.45, y + 0.25, "\n".join(listed), ha="center", va="center", fontsize=6.5,
                color=_TEXT, linespacing=1.1)
        _arrow(ax, (3.5, mid), (4.25, y + 0.4), lw=2.0 if bold else 0.8,
               color="#222222" if bold else _MUTED, gid=f"route:{name}")
    _arrow(ax, (9.0, mid), (9.9, mid))
    ax.text(9.45, mid + 0.08, "answer", ha="center", va="bottom", fontsize=8, color=_TEXT)
    title = f"1+N: one central model + {n} adapter set{'s' if n != 1 else ''} for {len(tasks)} tasks"
    if chosen is not None:
        local = clusters[chosen].index(str(request))
        title += f"; '{request}' goes to {chosen}, local task id {local}"
    ax.set_title(title, fontsize=9)
    return fig


__all__ = ["MAX_WIDTH", "lora_diagram", "cgc_lora_diagram", "one_plus_n_diagram",
           "drawn_parts"]
