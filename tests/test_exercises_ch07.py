"""Chapter 07's self-checks, against answers computed here another way: the interval by hand
from the stored items with pandas and scipy's t quantile (not `protocol.compare`), the
verdict and Holm's adjustment written out independently of `cgc_edu.study.protocol`."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cgc_edu.course.exercises import Checks

ROOT = Path(__file__).resolve().parent.parent
CELL = "tinytasks_named_r24"


def _rotate_interval_by_hand():
    items = pd.read_csv(ROOT / "results" / "fair_map" / "items.csv.gz")
    rows = items[(items["cell"] == CELL) & (items["task"] == "rotate")]
    table = rows.pivot_table(index=["seed", "item"], columns="method", values="exact_match")
    per_seed = (table["moe_lora"] - table["cgc_lora"]).groupby(level="seed").mean()
    n = len(per_seed)
    half = stats.t.ppf(0.975, n - 1) * per_seed.std(ddof=1) / np.sqrt(n)
    return 100 * (per_seed.mean() - half), 100 * (per_seed.mean() + half)


def _verdict(ci_low, ci_high, p_holm, margin):
    significant = p_holm < 0.05
    if significant and ci_low > 0:
        return "ahead"
    if significant and ci_high < 0:
        return "behind"
    return "equivalent" if abs(ci_low) < margin and abs(ci_high) < margin else "inconclusive"


def _holm(pvalues):
    p = np.asarray(pvalues, float)
    m, ranked = len(p), np.sort(p)
    steps = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * ranked))
    return np.array([steps[np.searchsorted(ranked, x, side="right") - 1] for x in p])


def test_exercise_1_accepts_the_interval_by_hand_and_rejects_another(capsys):
    low, high = _rotate_interval_by_hand()
    check = Checks("07")
    assert check.ex1((low, high)) is True
    assert f"{low:+.1f}" in capsys.readouterr().out
    assert check.ex1((low, high + 1.0)) is False
    assert "ttest_1samp" in capsys.readouterr().out


def test_exercise_2_accepts_a_right_verdict_and_names_the_first_disagreement(capsys):
    check = Checks("07")
    assert check.ex2(_verdict) is True
    never_equivalent = lambda lo, hi, p, m: "inconclusive" if _verdict(lo, hi, p, m) == "equivalent" \
        else _verdict(lo, hi, p, m)                                   # noqa: E731
    assert check.ex2(never_equivalent) is False
    out = capsys.readouterr().out.splitlines()[-1]
    assert "'inconclusive', the protocol 'equivalent'" in out
    assert check.ex2(lambda *a: "better") is False
    assert "not one of" in capsys.readouterr().out
    assert check.ex2(lambda *a: 1 / 0) is False
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_exercise_3_accepts_holm_and_rejects_bonferroni(capsys):
    check = Checks("07")
    assert check.ex3(_holm) is True
    bonferroni = lambda p: np.minimum(1, len(p) * np.asarray(p))      # noqa: E731
    assert check.ex3(bonferroni) is False
    assert "Holm's" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("pvalues", [[0.01, 0.04, 0.03], [0.3, 0.2, 0.9, 0.001]])
def test_the_independent_holm_is_holms(pvalues):
    """The step-down rule by its definition: each p's adjusted value is the largest of
    (m - i) p_(i) over the sorted p-values up to its own, capped at 1."""
    got = _holm(pvalues)
    ranked = sorted(pvalues)
    for p, adjusted in zip(pvalues, got):
        k = ranked.index(p)
        want = min(1.0, max((len(ranked) - i) * ranked[i] for i in range(k + 1)))
        assert adjusted == pytest.approx(want, rel=1e-12)
