"""Chapter 05's build exercise (merging a task): what its check says about a wrong answer."""
import torch

from cgc_edu.adapters import AdapterConfig
from cgc_edu.course.exercises import Checks
from cgc_edu.course.exercises.checks import trained_looking_layer


def _without_gate(layer, t):            # forgets the gate and the scaling
    return layer.lora_B[0] @ layer.lora_A[0]


def test_ex4_reports_how_far_a_same_shape_answer_is(capsys):
    assert Checks("05").ex4(_without_gate) is False
    out = capsys.readouterr().out
    # dW_0 by hand (scaling x sum of g_e B_e A_e) on the check's own layer, then
    # max |got - want| / max |want|
    layer = trained_looking_layer(AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3))
    with torch.no_grad():
        g = layer.gate_weights(torch.tensor([0]))[0]
        want = layer.scaling * sum(g[e] * layer.lora_B[e] @ layer.lora_A[e]
                                   for e in range(layer.n_experts))
        by_hand = float((_without_gate(layer, 0) - want).abs().max() / want.abs().max())
    assert out.startswith("Not yet (exercise 4): task 0: not dW_t")
    assert f"relative difference {by_hand:.2g} to the library's dW_t" in out, out
    assert "it returned" not in out


def test_ex4_names_the_shapes_of_a_wrong_shape_answer(capsys):
    assert Checks("05").ex4(lambda layer, t: layer.lora_A[0]) is False
    out = capsys.readouterr().out
    assert "it returned (2, 6), the library (5, 6)" in out, out
