"""MapExplorer: walk the fair map of which method wins where (ipywidgets).

Pick a cell of the map (a suite, its prompts and a budget) and a baseline; the explorer
shows every seed's score of each method in the cell, and each method's paired difference
from the baseline with its 95 % interval and verdict (ahead, behind, equivalent,
inconclusive), and says the verdicts in words. Nothing is trained: it reads a map made by
``python -m cgc_edu.study.fair_map`` (`fair_map.read_map`) and judges a cell with
`fair_map.cell_verdicts`.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from typing import Optional

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..methods import METHODS
from ..study.fair_map import METHODS_MAPPED, cell_verdicts, versus
from ..study.protocol import Protocol
from . import plots
from .knobs.base import Knobs


def complete_cells(stored: dict, methods=METHODS_MAPPED) -> list[str]:
    """The cells of a stored map in which every one of ``methods`` has all the protocol's
    reported seeds, in the map's order.

    Taught in: notebooks/11_which_method.ipynb.
    """
    runs, seeds = stored["map_seeds"], set(stored["config"]["protocol"]["seeds"])
    done = []
    for cell in dict.fromkeys(runs["cell"]):
        mine = runs[runs["cell"] == cell]
        if all(seeds <= set(mine.loc[mine["method"] == m, "seed"]) for m in methods):
            done.append(cell)
    return done


def verdict_text(cell: str, rows) -> str:
    """A cell's verdicts against one baseline (`fair_map.versus` rows) as one sentence."""
    base = METHODS[rows["baseline"].iloc[0]].short
    parts = [f"{METHODS[r.method].short} {r.verdict} ({100 * r.difference:+.1f} points, "
             f"{100 * r.ci_low:+.1f} to {100 * r.ci_high:+.1f})"
             for r in rows.itertuples(index=False)]
    return f"{cell}, against {base}: " + "; ".join(parts) + "."


class MapExplorer(Knobs):
    """Controls: ``cell`` (Dropdown of the map's complete cells) and ``baseline`` (Dropdown
    of its methods). ``state``: cell, baseline, scores (method -> its per-seed scores, %),
    verdicts (`fair_map.versus` rows), summary.

    Args:
        stored: a map as `cgc_edu.study.fair_map.read_map` returns it.
        cell, baseline: the first choice (default: the first complete cell, one LoRA).
        names: a label for each cell, shown in the dropdown and the titles (default: its
            name); the dropdown lists the cells it names first, in its order.

    Taught in: notebooks/11_which_method.ipynb.
    """

    dpi = 100

    def __init__(self, stored: dict, cell: Optional[str] = None, baseline: str = "integrated",
                 protocol: Protocol = Protocol(), names: Optional[dict] = None):
        cells = complete_cells(stored)
        if not cells:
            raise ValueError("MapExplorer: the map has no complete cell yet; make it first: "
                             "python -m cgc_edu.study.fair_map")
        named = [c for c in (names or {}) if c in cells]
        cells = named + [c for c in cells if c not in named]
        cell = cells[0] if cell is None else cell
        if cell not in cells:
            raise ValueError(f"MapExplorer: cell={cell!r}; the map's complete cells are {cells}.")
        if baseline not in METHODS_MAPPED:
            raise ValueError(f"MapExplorer: baseline={baseline!r}; use one of "
                             f"{list(METHODS_MAPPED)}.")
        self.stored, self.protocol = stored, protocol
        self.names = {c: (names or {}).get(c, c) for c in cells}
        self.cell = widgets.Dropdown(options=[(self.names[c], c) for c in cells], value=cell,
                                     description="cell")
        self.baseline = widgets.Dropdown(options=[(METHODS[m].short, m) for m in METHODS_MAPPED],
                                         value=baseline, description="against")
        self._build([[self.cell, self.baseline]], (plots.BOOK_WIDTH, 3.0))

    def _compute(self) -> dict:
        cell, baseline = self.cell.value, self.baseline.value
        runs = self.stored["map_seeds"][self.stored["map_seeds"]["cell"] == cell]
        scores = {m: (runs[runs["method"] == m].sort_values("seed")["average"] * 100).tolist()
                  for m in METHODS_MAPPED}
        rows = versus(cell_verdicts(self.stored, cell, self.protocol), baseline)
        rows = rows[rows["method"].isin(METHODS_MAPPED)].reset_index(drop=True)
        return dict(cell=cell, baseline=baseline, scores=scores, verdicts=rows,
                    summary=verdict_text(self.names[cell], rows))

    def _draw(self, fig: Figure, s: dict) -> None:
        dots, bars = fig.subplots(1, 2, width_ratios=[1, 1.2])
        for k, m in enumerate(s["scores"]):
            colour, _ = plots.method_style(m)
            ys = s["scores"][m]
            xs = k + np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else [k]
            dots.scatter(xs, ys, color=colour, s=18, zorder=3)
            if ys:
                dots.hlines(np.mean(ys), k - 0.3, k + 0.3, color=colour, lw=2)
        dots.set_xticks(range(len(s["scores"])), [METHODS[m].short for m in s["scores"]],
                        rotation=30, ha="right", fontsize=8)
        dots.set_ylabel("test exact match (%)", fontsize=8)
        dots.set_title(f"{self.names[s['cell']]} · each run (dots), mean (bar)", fontsize=9)
        dots.grid(axis="y", alpha=0.3)
        plots.verdict_intervals(s["verdicts"], self.protocol.margin, ax=bars)
        bars.set_yticks(bars.get_yticks(), [METHODS[m].short for m in s["verdicts"]["method"][::-1]],
                        fontsize=8)
        bars.set_xlabel(f"minus {METHODS[s['baseline']].short} (points), 95 % interval",
                        fontsize=8)
        bars.get_legend().remove()   # the colours are said in the title instead
        bars.set_title("black: ahead, red: behind, purple: equivalent,\ngrey: inconclusive; "
                       f"band: ±{100 * self.protocol.margin:g} points", fontsize=8)
