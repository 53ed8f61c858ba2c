"""Each self-check says right for the right answer and wrong, with the reason, for a plausible
wrong one."""
import pytest

from cgc_edu.course.exercises import Checks
from cgc_edu.study.statistics import load_results, paired_comparison, summary
from fixtures.gate_data import synthetic_recording


def _stored():
    named = load_results()
    named = named[named.setting == "named"]
    stats = summary(named)
    pair = paired_comparison(named, "cgc_lora", "separate")
    wins = (pair["wins"], pair["losses"])
    cgc = stats[(stats.method == "cgc_lora") & (stats.task != "average")].set_index("task")["std"]
    average = stats[stats.task == "average"].set_index("method")["mean"]
    return (cgc.idxmax(), cgc.idxmin(), average.idxmax(), average.idxmin(), wins,
            (wins[0] + 1, wins[1] - 1))


RECORDING = synthetic_recording(tasks=["first", "last", "ends"])
SPREAD_MAX, SPREAD_MIN, BEST, WORST, WINS, NOT_WINS = _stored()

CASES = [  # chapter, exercise, right answer, wrong answer, a word the wrong answer's reason has
    ("00", 1, ["reverse", "shift", "rotate", "reverse_tail"], ["reverse", "last"], "4 tasks"),
    ("00", 2, "reverse:cab=", "cab=", "task's name"),
    ("01", 1, 4, 2, "cannot express"),
    ("01", 2, (8.0, 2.0), (16 / 2 ** 0.5, 16 / 8 ** 0.5), "rsLoRA"),
    ("01", 3, 8 * (4 * 8192 + 3 * 15104), 4 * 4096 ** 2 + 3 * 4096 * 11008, "whole block"),
    ("02", 1, (4, 1), (1, 4), "collapse"),
    ("02", 2, (0.625, 0.375, 0.0), (0.5, 0.3, 0.0), "raw probabilities"),
    ("02", 3, 0.0, 0.01, "does not depend"),
    ("03", 1, -0.46, -0.5, "np.corrcoef"),
    ("03", 2, 4, 6, "out of its reach"),
    ("03", 3, "MMoE", "PLE", "same"),
    ("04", 1, 64, 0, "the gate"),
    ("04", 2, "LoRA", "MoE-LoRA", "LoRA"),
    ("04", 3, False, True, "needs_task_ids"),
    ("05", 1, (3, [0, 1, 2]), (4, [0, 1, 2, 3]), "every S_t"),
    ("05", 2, 2 / 3, 0.5, "never changes"),
    ("05", 3, (10, 2560), (30, 7680), "multiple of 10"),
    ("06", 1, ("extract", 1), ("extract", 5), "renumbers"),
    ("06", 2, 6, 12, "|S_t|"),
    ("06", 3, (1, 8), (2, 8), "share one base"),
    ("07", 1, SPREAD_MAX, SPREAD_MIN, "largest std"),
    ("07", 2, BEST, WORST, "best average"),
    ("07", 3, WINS, NOT_WINS, "pairs the seeds"),
    ("08", 2, 1 / 3, 0.25, "|S_t| = 3"),
    ("08", 3, (0, 0.6, 0, 0.4, 0), (0, 0.3, 0, 0.2, 0), "divide the rest"),
]


@pytest.mark.parametrize("chapter, number, right, wrong, reason", CASES,
                         ids=[f"{c[0]}-ex{c[1]}" for c in CASES])
def test_check_says_right_and_wrong_with_why(capsys, chapter, number, right, wrong, reason):
    check = getattr(Checks(chapter), f"ex{number}")
    assert check(right) is True
    assert capsys.readouterr().out.startswith(f"Right (exercise {number}):")
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"Not yet (exercise {number}):") and reason in out


def test_a_check_reads_the_learners_own_recording(capsys):
    from cgc_edu.course.plots import common_share_table

    values, tasks, layers = common_share_table(RECORDING)
    row = list(values[tasks.index("last")])
    lowest, other = layers[row.index(min(row))], layers[row.index(max(row))]
    assert Checks("08").ex1(lowest, RECORDING) is True
    assert Checks("08").ex1(other, RECORDING) is False
    assert lowest in capsys.readouterr().out.splitlines()[-1]


def test_every_chapter_has_checks_and_questions(capsys):
    for chapter in ["00", "01", "02", "03", "04", "05", "06", "07", "08"]:
        questions = Checks(chapter).questions()
        assert len(questions) >= 2 and all(q.endswith(("?", ")", ".")) for q in questions.values())
    assert "1. Which tasks" in capsys.readouterr().out
    assert Checks(5).chapter == "05"
    with pytest.raises(ValueError, match="no exercises for chapter '09'"):
        Checks("09")
    with pytest.raises(AttributeError, match="exercises \\[1, 2, 3\\], not 7"):
        Checks("07").ex7
