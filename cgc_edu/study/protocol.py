"""The fair protocol: the one recipe and the one statistics every stored comparison uses.

A verdict about methods is a fact of the methods only if the recipe is fair to each of them.
The protocol (`Protocol`) fixes, for every method alike:

* **a scaling that does not grow the update with rank:** rsLoRA's alpha / sqrt(r) with one
  fixed alpha (8: scaling 2 at rank 16). With alpha = 2r (the study's first recipe) the
  scaling stays 2 while the rank grows, and Adam's steps on r directions add up: the update
  grows with the budget, and large budgets "collapse" at a rate tuned for small ones;
* **linear warm-up** (6 % of the steps) then linear decay to zero, and **gradient-norm
  clipping** at 1;
* **a learning-rate grid per method and per cell**: 3 rates a factor 2 apart around the
  method's usual rate (`cgc_edu.methods.Method.lr`), extended by one more rate while the
  best is at an edge of the grid (at most 6), chosen on the validation split of a
  **tuning seed that is never reported** (100);
* **the best validation checkpoint** (early stopping), with the curve kept so a reader sees
  whether it was flat over its last third;
* **the same test items for every method** (a seed draws the data, so two methods of one
  seed answer the same items), the score of every item stored.

Statistics (`compare`, `verdict`, `holm`): the difference of two methods is paired by seed and
by item (per seed, the mean over the same items of one method's score minus the other's), its
95 % interval is Student's t over the seeds (`scipy.stats.ttest_1samp`; seeds are the
replicates: each draws data, initialisation and batch order, so the interval covers all
three), and Holm's correction runs over all the comparisons of a map. Four verdicts:

* **ahead** / **behind**: the Holm-adjusted p is below 0.05, and the interval is above / below 0;
* **equivalent**: the interval lies inside +-`Protocol.margin` (2 points of exact match);
* **inconclusive**: anything else (too few seeds or too much spread to tell).

Unlike "ahead on every seed", more seeds narrow the interval: they can sharpen a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .methods import Settings

VERDICTS = ("ahead", "behind", "equivalent", "inconclusive")


@dataclass(frozen=True)
class Protocol:
    """The fair recipe (see the module's docstring); `settings` puts it into a study's Settings."""

    alpha: float = 8.0           # rsLoRA: scaling alpha / sqrt(r)
    warmup: float = 0.06         # share of the steps of linear warm-up
    clip: float = 1.0            # gradient-norm clipping
    grid_size: int = 3           # rates per method and cell, at least
    grid_factor: float = 2.0     # between neighbouring rates
    grid_max: int = 6            # rates at most, extending past an edge
    tuning_seed: int = 100       # chooses the rate; never reported
    seeds: tuple = (0, 1, 2, 3, 4)
    margin: float = 0.02         # equivalence: the interval inside +- this (exact match)
    level: float = 0.95          # of the intervals, and 1 - level the familywise error
    flat: float = 0.02           # a curve is flat when its last third moved at most this

    def __post_init__(self):
        if self.grid_size < 3 or self.grid_max < self.grid_size:
            raise ValueError(f"Protocol: grid_size={self.grid_size}, grid_max={self.grid_max}: "
                             "the grid needs at least 3 rates and grid_max >= grid_size.")
        if self.tuning_seed in self.seeds:
            raise ValueError(f"Protocol: tuning_seed={self.tuning_seed} is among the reported "
                             f"seeds {self.seeds}; pick a seed that is not reported.")

    def settings(self, base: Settings) -> Settings:
        """``base`` under the protocol: rsLoRA scaling, warm-up, clipping, best checkpoint,
        every test item's score stored."""
        return replace(base, alpha=self.alpha, rslora=True, warmup=self.warmup, clip=self.clip,
                       best_checkpoint=True, items=True)

    def grid(self, center: float) -> list[float]:
        """The first rates tried: ``grid_size`` rates ``grid_factor`` apart around ``center``."""
        low = -(self.grid_size // 2)
        return [self.rate(center, k) for k in range(low, low + self.grid_size)]

    def rate(self, center: float, k: int) -> float:
        """The k-th rate of the lattice around ``center`` (rounded: a stable run key)."""
        return float(f"{center * self.grid_factor ** k:.6g}")

    def next_rate(self, center: float, scores: Mapping[float, float]) -> Optional[float]:
        """One more rate to try while the best of ``scores`` (rate -> validation) is at an
        edge of the rates tried, up to ``grid_max`` rates; None when the choice is inside."""
        if len(scores) >= self.grid_max:
            return None
        best = choose(scores)
        ks = sorted(round(math.log(r / center, self.grid_factor)) for r in scores)
        k = round(math.log(best / center, self.grid_factor))
        if k == ks[-1]:
            return self.rate(center, k + 1)
        if k == ks[0]:
            return self.rate(center, k - 1)
        return None


def choose(scores: Mapping[float, float]) -> float:
    """The rate with the best validation score (ties: the smaller rate)."""
    if not scores:
        raise ValueError("choose: no rate was tried; run the grid first.")
    return max(scores, key=lambda r: (scores[r], -r))


# --------------------------------------------------------------- the commands
def parse_methods(text: str, known: Sequence[str], where: str) -> list[str]:
    """A command's ``--methods`` (comma-separated), each among ``known`` (what ``where`` runs)."""
    methods = [m for m in text.split(",") if m]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ValueError(f"--methods {text!r}: {unknown or 'none'} not in {where}; choose among "
                         f"{list(known)}.")
    return methods


def parse_seeds(text: str) -> tuple[int, ...]:
    """A command's ``--seeds`` (comma-separated integers)."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        seeds = ()
    if not seeds:
        raise ValueError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2,3,4.")
    return seeds


# -------------------------------------------------------------------- curves
def flat_last_third(curve: Sequence, tolerance: float) -> bool:
    """Whether a run's validation average moved at most ``tolerance`` over the last third
    of its training (from the point nearest two thirds of the run to its end)."""
    points = [(share, np.mean([v for t, v in s.items() if not t.startswith("_")]))
              for share, s in curve]
    if len(points) < 2:
        return True
    mark = min(points, key=lambda p: abs(p[0] - 2 / 3))
    return abs(points[-1][1] - mark[1]) <= tolerance


def collapsed(test: float, curve: Sequence) -> bool:
    """A collapse: the run's test score is below half of the best validation average in
    its own curve."""
    best = max((np.mean([v for t, v in s.items() if not t.startswith("_")]) for _, s in curve),
               default=0.0)
    return test < best / 2


# ---------------------------------------------------------------- statistics
def compare(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]],
            level: float = 0.95) -> dict:
    """Method a minus method b, paired by seed and item: ``a`` and ``b`` map each seed to its
    items' scores (the same items, in the same order). Returns the mean difference, its
    interval (Student's t over the seeds), the two-sided p and the seeds used."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"compare: {len(seeds)} seed(s) in common; a paired interval needs "
                         "at least 2 (run more seeds).")
    per_seed = []
    for s in seeds:
        x, y = np.asarray(a[s], float), np.asarray(b[s], float)
        if x.shape != y.shape:
            raise ValueError(f"compare: seed {s} has {x.size} items for one method and {y.size} "
                             "for the other; score both on the same test items.")
        per_seed.append(float(np.mean(x - y)))
    d = np.array(per_seed)
    mean = float(d.mean())
    if np.ptp(d) == 0:   # every seed the same difference: no spread to test against
        low = high = mean
        p = 0.0 if mean != 0 else 1.0
    else:
        test = stats.ttest_1samp(d, 0.0)
        interval = test.confidence_interval(confidence_level=level)
        low, high, p = float(interval.low), float(interval.high), float(test.pvalue)
    return {"difference": mean, "ci_low": low, "ci_high": high, "p": p, "n_seeds": len(seeds),
            "seed_differences": per_seed}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of ``pvalues`` (familywise error across them)."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, (len(p) - i) * p[j])
        adjusted[j] = min(1.0, running)
    return adjusted


def verdict(difference: float, ci_low: float, ci_high: float, p_holm: float,
            margin: float, alpha: float = 0.05) -> str:
    """One of `VERDICTS` from an interval, its Holm-adjusted p and the equivalence margin."""
    if p_holm < alpha and ci_low > 0:
        return "ahead"
    if p_holm < alpha and ci_high < 0:
        return "behind"
    if -margin < ci_low and ci_high < margin:
        return "equivalent"
    return "inconclusive"


def judge(comparisons: pd.DataFrame, protocol: Protocol = Protocol()) -> pd.DataFrame:
    """Holm's correction over every row of ``comparisons`` (columns difference, ci_low,
    ci_high, p), then each row's verdict; returns a copy with ``p_holm`` and ``verdict``."""
    out = comparisons.copy()
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["verdict"] = [verdict(r.difference, r.ci_low, r.ci_high, r.p_holm, protocol.margin,
                              1 - protocol.level) for r in out.itertuples()]
    return out
