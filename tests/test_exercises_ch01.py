"""Chapter 01's exercise 2 reads the growth of the update from the learner's own measuring
function (the chapter's ``early_norm(rank, rslora)``). The right answers here come from
stand-in functions whose growth from rank 16 to rank 32 is known by hand."""
from cgc_edu.course.exercises import Checks


def sqrt_growth(rank, rslora):
    """Flat under alpha/r, like sqrt(rank) under alpha/sqrt(r): x 1.41 from 16 to 32."""
    return rank ** 0.5 if rslora else 1.0


def test_ex2_names_the_rule_whose_update_grows(capsys):
    check = Checks("01")
    assert check.ex2("alpha/sqrt(r)", sqrt_growth) is True
    out = capsys.readouterr().out
    assert out.startswith("Right (exercise 2):") and "x 1.41" in out and "x 1.00" in out
    assert check.ex2("alpha/r", sqrt_growth) is False
    assert "'alpha/sqrt(r)'" in capsys.readouterr().out
    assert check.ex2("both", lambda rank, rslora: float(rank)) is True         # x 2 each
    assert check.ex2("neither", lambda rank, rslora: 1.0) is True
    assert check.ex2("both", lambda rank, rslora: 1.0) is False


def test_ex2_asks_for_the_measuring_function(capsys):
    check = Checks("01")
    assert check.ex2("alpha/sqrt(r)") is False
    assert "early_norm" in capsys.readouterr().out
    assert check.ex2("alpha/sqrt(r)", lambda rank: 1.0) is False                # wrong signature
    assert "raised TypeError" in capsys.readouterr().out
