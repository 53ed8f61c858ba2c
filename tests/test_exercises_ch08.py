"""Chapter 08's first self-check reads the learner's own recording: the answers here are
written by hand from gates built for the purpose, never through the check's computation."""
import numpy as np

from cgc_edu.course.exercises import Checks
from cgc_edu.course.recording import GateRecording

TASKS = ["first", "last", "ends"]
MODULES = [f"model.layers.{layer}.self_attn.{p}" for layer in range(2)
           for p in ("q_proj", "v_proj")]
LABELS = ["common 0", "common 1", "task first / 0", "task last / 0", "task ends / 0"]


def _recording(first_common_share):
    """Four modules, steps 0, 10, 20, ...; `first` puts ``share`` of its gate on the two
    common experts (split evenly) at each step in every module, the rest on its own expert;
    the other tasks stay uniform."""
    steps = len(first_common_share)
    gates = np.zeros((steps, len(MODULES), len(TASKS), len(LABELS)))
    for t in range(len(TASKS)):
        gates[:, :, t, [0, 1, 2 + t]] = 1 / 3
    for s, share in enumerate(first_common_share):
        gates[s, :, 0, :2] = share / 2
        gates[s, :, 0, 2] = 1 - share
    return GateRecording(steps=np.arange(steps) * 10, gates=gates, module_names=MODULES,
                         task_names=TASKS, expert_labels=LABELS, n_common=2, n_specific=1)


def test_chapter_08_ex1_names_the_first_step_below_one_half(capsys):
    falls = _recording([2 / 3, 0.6, 0.45, 0.3])      # by hand: below 0.5 first at step 20
    check = Checks("08")
    assert check.ex1(20, falls) is True
    assert capsys.readouterr().out.startswith("Right (exercise 1): step 20")
    assert check.ex1(2, falls) is False              # the position in steps, not the step
    assert "position of that step" in capsys.readouterr().out
    assert check.ex1(30, falls) is False
    assert check.ex1(None, falls) is False
    assert "Not yet (exercise 1)" in capsys.readouterr().out


def test_chapter_08_ex1_accepts_none_when_the_share_never_falls(capsys):
    stays = _recording([2 / 3, 0.6, 0.55, 0.5])      # 0.5 is not below one half
    check = Checks("08")
    assert check.ex1(None, stays) is True
    assert check.ex1(30, stays) is False
    assert "answer None" in capsys.readouterr().out.splitlines()[-1]

