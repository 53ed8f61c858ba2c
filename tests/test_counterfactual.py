"""override_gate changes one task's gate in every layer, and restores the model exactly."""
import matplotlib

matplotlib.use("Agg")
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, adapter_layers, add_adapters, merge_task
from cgc_edu.course.counterfactual import override_choices, override_gate
from fixtures.gate_data import tiny_model
from tiny_models import randomize  # tests/tiny_models.py

TASK = 1


@pytest.fixture
def model():
    return randomize(tiny_model(), 0, scale=1.0)


def _forward(model, x, ids):
    from cgc_edu import task_context
    with task_context(model, ids):
        return model(x)


def test_uniform_override_changes_only_that_task_and_restores_exactly(model):
    x, ids = torch.randn(6, 8), torch.tensor([0, 1, 2, 1, 0, 2])
    before = _forward(model, x, ids)
    with override_gate(model, TASK, "uniform"):
        during = _forward(model, x, ids)
        for layer in adapter_layers(model).values():
            torch.testing.assert_close(layer.gate_weights(torch.tensor([TASK]))[0],
                                       torch.tensor([1 / 3, 1 / 3, 0, 1 / 3, 0]))
    after = _forward(model, x, ids)
    assert torch.equal(before, after)
    others = ids != TASK
    assert torch.equal(during[others], before[others])
    assert not torch.allclose(during[~others], before[~others])


def test_the_override_is_what_the_layer_computes_with_those_weights():
    config = AdapterConfig.cgc_lora(rank=6, alpha=6, n_tasks=3)
    model = add_adapters(nn.Sequential(nn.Linear(8, 6)), config)
    randomize(model, 0, scale=1.0)
    layer = adapter_layers(model)["0"]
    learned = layer.gate_weights(torch.tensor([TASK]))[0].detach()
    x = torch.randn(4, 8)
    for weights, want in [
            ("zero:0", torch.tensor([0, 1, 0, 1, 0]) * learned / (learned[1] + learned[3])),
            ("swap:2", layer.gate_weights(torch.tensor([2]))[0].detach()[[0, 1, 2, 4]]),
            ([0.5, 0.0, 0.0, 0.5, 0.0], torch.tensor([0.5, 0.0, 0.0, 0.5, 0.0]))]:
        if weights == "swap:2":       # task 2's common weights and its own expert's, on S_1
            want = torch.stack([want[0], want[1], torch.tensor(0.0), want[3], torch.tensor(0.0)])
        with override_gate(model, TASK, weights):
            got = _forward(model, x, torch.full((4,), TASK))
        delta = sum(want[e] * layer.lora_B[e] @ layer.lora_A[e] for e in range(5))
        by_hand = layer.base_layer(x) + layer.scaling * x @ delta.T
        torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)


def test_a_shared_gate_is_overridden_once_and_errors_leave_no_hook():
    config = AdapterConfig.cgc_lora(rank=6, alpha=6, n_tasks=3, shared_gate=True)
    model = randomize(tiny_model(config), 0, scale=1.0)
    gates = {id(layer.gate): layer.gate for layer in adapter_layers(model).values()}
    assert len(gates) == 1
    gate = next(iter(gates.values()))
    with override_gate(model, TASK, "uniform"):
        assert len(gate._forward_hooks) == 1
    assert not gate._forward_hooks
    with pytest.raises(RuntimeError):
        with override_gate(model, TASK, "uniform"):
            raise RuntimeError("inside the block")
    assert not gate._forward_hooks
    for bad, message in [(("zero", 2), r"cannot zero expert 2.*S_t = \[0, 1, 3\]"),
                         ("swap:7", r"swap:7"), ("sideways", "pass 'uniform'"),
                         ([0.5, 0, 0.5, 0, 0], "outside S_t"), ([1.0, 0.0], "2 weights for 5")]:
        with pytest.raises(ValueError, match=message):
            with override_gate(model, TASK, bad):
                pass
        assert not gate._forward_hooks
    with pytest.raises(ValueError, match=r"task_id=3"):
        with override_gate(model, 3, "uniform"):
            pass


def test_a_merged_model_is_refused(model):
    merge_task(model, 0)
    with pytest.raises(ValueError, match="unmerge"):
        with override_gate(model, TASK, "uniform"):
            pass


def test_choices_list_the_overrides_that_make_sense():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3)
    keys = [key for _, key in override_choices(config, 1, ["a", "b", "c"])]
    assert keys == ["learned", "uniform", "zero:0", "zero:1", "zero:3", "swap:0", "swap:2"]
    assert [k for _, k in override_choices(AdapterConfig.independent(n_tasks=3), 0)] == ["learned"]


def test_counterfactual_widget_decodes_with_and_without_the_override():
    from cgc_edu.data import build_tokenizer, make_tiny_tasks
    from cgc_edu.course.knobs import CounterfactualGate
    from cgc_edu.models import load_central_model
    from cgc_edu.train import greedy_decode

    tasks = ["reverse", "first"]
    data = make_tiny_tasks(seed=0, tasks=tasks, n_train=4, n_low=4, n_validation=0, n_test=4)
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = add_adapters(load_central_model(),
                         AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=2))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(std=0.05)
            layer.gate.weight.normal_()
    widget = CounterfactualGate(model, data["test"], tok, tasks, n_examples=4)
    state = widget.state
    rows = [r for r in data["test"] if r["task_id"] == 0]
    prompts = [r["prompt"] for r in rows]
    longest = max(len(r["target"]) for r in rows) + 1
    learned = greedy_decode(model, tok, prompts, task_ids=[0] * 4, max_new_tokens=longest)
    assert state["override"] == "learned" and state["answers_learned"] == learned
    assert state["answers_override"] == learned
    widget.override.value = "zero:0"
    state = widget.state
    with override_gate(model, 0, "zero:0"):
        overridden = greedy_decode(model, tok, prompts, task_ids=[0] * 4, max_new_tokens=longest)
    assert state["answers_override"] == overridden
    assert state["exact_match_override"] == pytest.approx(
        sum(a == r["target"] for a, r in zip(overridden, rows)) / 4)
    assert state["weights_override"][0] == 0.0
    assert sum(state["weights_override"]) == pytest.approx(1.0)
    assert greedy_decode(model, tok, prompts, task_ids=[0] * 4, max_new_tokens=longest) == learned
    widget.task.value = 1
    assert widget.state["task"] == "first" and widget.state["override"] == "learned"
    assert "<table>" in widget.message.value and widget.image.value[:8] == b"\x89PNG\r\n\x1a\n"
