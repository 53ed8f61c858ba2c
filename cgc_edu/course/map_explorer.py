"""MapExplorer: walk the stored map of which method wins where (ipywidgets).

Pick a suite, its prompts (tasks named or anonymous) and a total budget; the explorer
shows that suite's map along the budgets with the cell marked, every seed's score of each
method in the cell, and the cell's verdict in words: the winner, its margin over the
runner-up, whether the margin is beyond the seed spread, and CGC-LoRA against each other
method. Nothing is trained: it reads a map made by ``python -m cgc_edu.study.map``
(`cgc_edu.study.map_report.read_map`) and judges cells with `map_report.verdicts`.

Taught in: notebooks/11_which_method.ipynb.
"""
from __future__ import annotations

from typing import Optional

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..study.map_report import verdicts
from . import plots
from .knobs.base import Knobs


def _label(method: str) -> str:
    return plots.method_style(method)[1]


def verdict_text(cell: str, v: dict) -> str:
    """One cell's verdict (`map_report.verdicts`) as a sentence or three."""
    if not v["complete"]:
        return f"{cell}: incomplete ({v['runs']} of {v['expected']} runs), not judged."
    spread = ("beyond the seed spread (ahead on every seed)" if v["beyond_spread"] else
              "not beyond the seed spread: nothing separates it from "
              + ", ".join(_label(m) for m in v["level"]))
    text = (f"{cell}: {_label(v['winner'])} wins with {100 * v['mean']:.1f}, "
            f"{100 * v['margin']:+.1f} points over {_label(v['runner_up'])} (paired "
            f"{100 * v['diff_min']:+.1f}..{100 * v['diff_max']:+.1f}), {spread}.")
    if "versus" in v:
        words = {"ahead": "ahead of", "behind": "behind", "level": "level with"}
        parts = [f"{words[c['verdict']]} {_label(m)} ({100 * c['mean_diff']:+.1f})"
                 for m, c in v["versus"].items()]
        text += " CGC-LoRA is " + "; ".join(parts) + "."
    return text


class MapExplorer(Knobs):
    """Controls: ``suite`` (Dropdown), ``setting`` (ToggleButtons: named / anonymous
    prompts, those the suite has), ``budget`` (Dropdown of the ranks the map has there).
    ``state``: suite, setting, budget, cell (its name), verdict (`map_report.verdicts`),
    scores (method -> the per-seed scores, %), summary.

    Args:
        stored: a map as `cgc_edu.study.map_report.read_map` returns it.
        hidden_size: the central model's width, drawn on the budget axis (None: not drawn).

    Taught in: notebooks/11_which_method.ipynb.
    """

    dpi = 80

    def __init__(self, stored: dict, suite: Optional[str] = None, setting: str = "named",
                 budget: Optional[int] = None, hidden_size: Optional[int] = 128):
        seeds = stored["seeds"]
        if seeds.empty:
            raise ValueError("MapExplorer: the map has no runs; make it first: "
                             "python -m cgc_edu.study.map")
        self.stored, self.hidden_size = stored, hidden_size
        self._cells = {(s, p, int(r)): c for s, p, r, c in
                       seeds[["suite", "setting", "rank", "cell"]].drop_duplicates()
                       .itertuples(index=False)}
        suites = list(dict.fromkeys(s for s, _, _ in self._cells))
        suite = suites[0] if suite is None else suite
        if suite not in suites:
            raise ValueError(f"MapExplorer: suite={suite!r}; the map has {suites}.")
        if setting not in self._settings(suite):
            raise ValueError(f"MapExplorer: setting={setting!r}; {suite} has "
                             f"{self._settings(suite)} prompts in the map.")
        ranks = self._ranks(suite, setting)
        budget = ranks[0] if budget is None else budget
        if budget not in ranks:
            raise ValueError(f"MapExplorer: budget={budget!r}; {suite} with {setting} "
                             f"prompts has budgets {ranks}.")
        self.suite = widgets.Dropdown(options=suites, value=suite, description="suite")
        self.setting = widgets.ToggleButtons(options=self._settings(suite), value=setting,
                                             description="prompts")
        self.budget = widgets.Dropdown(options=ranks, value=budget, description="budget")
        # registered before _build's redraw, so the choices follow first, then one redraw
        self.suite.observe(self._follow, names="value")
        self.setting.observe(self._follow, names="value")
        self._build([[self.suite, self.budget], [self.setting]], (plots.BOOK_WIDTH, 3.0))

    def _settings(self, suite: str) -> list[str]:
        return list(dict.fromkeys(p for s, p, _ in self._cells if s == suite))

    def _ranks(self, suite: str, setting: str) -> list[int]:
        return sorted(r for s, p, r in self._cells if s == suite and p == setting)

    def _follow(self, _change) -> None:
        """Keep the prompt and budget choices to the cells the chosen suite has."""
        self._holding = True
        try:
            settings = self._settings(self.suite.value)
            if list(self.setting.options) != settings:
                keep = self.setting.value if self.setting.value in settings else settings[0]
                self.setting.options = settings
                self.setting.value = keep
            ranks = self._ranks(self.suite.value, self.setting.value)
            if list(self.budget.options) != ranks:
                keep = self.budget.value if self.budget.value in ranks else ranks[0]
                self.budget.options = ranks
                self.budget.value = keep
        finally:
            self._holding = False

    def _compute(self) -> dict:
        key = (self.suite.value, self.setting.value, self.budget.value)
        cell = self._cells[key]
        v = verdicts(self.stored, cell)
        runs = self.stored["seeds"][self.stored["seeds"]["cell"] == cell]
        scores = {m: (runs[runs["method"] == m].sort_values("seed")["average"] * 100).tolist()
                  for m in self.stored["config"]["methods"]}
        return dict(suite=key[0], setting=key[1], budget=key[2], cell=cell, verdict=v,
                    scores=scores, summary=verdict_text(cell, v))

    def _draw(self, fig: Figure, s: dict) -> None:
        line, dots = fig.subplots(1, 2, width_ratios=[1.25, 1])
        plots.method_map(self.stored["table"], s["suite"], s["setting"], ax=line,
                         budget=s["budget"], hidden_size=self.hidden_size)
        line.get_legend().remove()
        line.set_title(f"{s['suite']}, {s['setting']} prompts", fontsize=9)
        methods = list(s["scores"])
        for k, m in enumerate(methods):
            colour, _ = plots.method_style(m)
            ys = s["scores"][m]
            xs = k + np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else [k]
            dots.scatter(xs, ys, color=colour, s=18, zorder=3)
            if ys:
                dots.hlines(np.mean(ys), k - 0.3, k + 0.3, color=colour, lw=2)
        dots.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=30,
                        ha="right", fontsize=8)
        dots.set_ylabel("test exact match (%)")
        dots.set_title(f"budget {s['budget']}: each seed (dots), mean (bar)", fontsize=9)
        dots.grid(axis="y", alpha=0.3)
