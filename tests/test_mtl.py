"""Chapter 3 library: shared-bottom, MMoE, CGC, PLE."""
import pytest
import torch

from cgc_edu.mtl import CGC, MMoE, PLE, SharedBottom, task_losses, train_multitask
from cgc_edu.utils import seed_everything

D, T = 6, 3


def build(name, out_features=1):
    seed_everything(0)
    return {
        "shared_bottom": lambda: SharedBottom(D, T, hidden=8, tower_hidden=4, out_features=out_features),
        "mmoe": lambda: MMoE(D, T, n_experts=3, expert_hidden=8, tower_hidden=4, out_features=out_features),
        "cgc": lambda: CGC(D, T, n_shared=2, n_specific=1, expert_hidden=8, tower_hidden=4,
                           out_features=out_features),
        "ple": lambda: PLE(D, T, n_shared=2, n_specific=1, expert_hidden=8, tower_hidden=4, n_levels=3,
                           out_features=out_features),
    }[name]()


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "cgc", "ple"])
@pytest.mark.parametrize("out_features", [1, 3])
def test_forward_gives_one_output_per_task(name, out_features):
    outputs = build(name, out_features)(torch.randn(5, D))
    assert len(outputs) == T and all(o.shape == (5, out_features) for o in outputs)


def _flat_gates(model, x):
    gates = model.gate_weights(x)
    return [g for level in gates for g in level] if isinstance(model, PLE) else gates


@pytest.mark.parametrize("name", ["mmoe", "cgc", "ple"])
def test_gates_are_distributions_that_depend_on_the_input(name):
    model = build(name)
    seed_everything(1)
    x = torch.randn(7, D)
    for g in _flat_gates(model, x):
        assert (g >= 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(7))
        assert not torch.allclose(g[0], g[1])  # input-dependent, unlike a task-id gate


def test_gate_widths_and_labels():
    cgc, ple = build("cgc"), build("ple")
    x = torch.randn(2, D)
    assert [g.shape[-1] for g in cgc.gate_weights(x)] == [3] * T  # 2 shared + 1 own
    assert cgc.gate_labels(1) == ["shared 0", "shared 1", "task 1 / 0"]
    levels = ple.gate_weights(x)
    assert [len(level) for level in levels] == [T + 1, T + 1, T]  # shared gate at inner levels only
    assert levels[0][-1].shape[-1] == 2 + T * 1  # the shared gate mixes every expert
    assert ple.levels[0].gate_labels() == ["shared 0", "shared 1", "task 0 / 0", "task 1 / 0", "task 2 / 0"]


def test_cgc_without_specific_experts_equals_mmoe():
    seed_everything(0)
    mmoe = MMoE(D, T, n_experts=4, expert_hidden=8, tower_hidden=4)
    cgc = CGC(D, T, n_shared=4, n_specific=0, expert_hidden=8, tower_hidden=4)
    cgc.extraction.shared_experts.load_state_dict(mmoe.experts.state_dict())
    cgc.extraction.task_gates.load_state_dict(mmoe.gates.state_dict())
    cgc.towers.load_state_dict(mmoe.towers.state_dict())
    x = torch.randn(10, D)
    for a, b in zip(cgc(x), mmoe(x)):
        torch.testing.assert_close(a, b)
    for a, b in zip(cgc.gate_weights(x), mmoe.gate_weights(x)):
        torch.testing.assert_close(a, b)


def test_ple_with_one_level_equals_cgc():
    seed_everything(0)
    cgc = CGC(D, T, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=4)
    ple = PLE(D, T, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=4, n_levels=1)
    state = {k.replace("extraction.", "levels.0.", 1): v for k, v in cgc.state_dict().items()}
    ple.load_state_dict(state)  # strict: same parameters, nothing left over
    x = torch.randn(10, D)
    for a, b in zip(ple(x), cgc(x)):
        torch.testing.assert_close(a, b)


def test_cgc_specific_experts_are_private_to_their_task():
    model = build("cgc")
    model(torch.randn(4, D))[0].sum().backward()
    own, other = model.extraction.specific_experts[0], model.extraction.specific_experts[1]
    assert any(p.grad.abs().sum() > 0 for p in own.parameters())
    assert all(p.grad is None for p in other.parameters())


@pytest.mark.slow
def test_training_reduces_loss_and_is_reproducible():
    seed_everything(0)
    x = torch.randn(256, D)
    y = torch.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3], x[:, 4]], dim=1)
    runs = []
    for _ in range(2):
        model = build("mmoe")
        before = sum(task_losses(model, x, y))
        curve = train_multitask(model, x, y, steps=150, batch_size=64, lr=1e-2, seed=3)
        runs.append(curve)
        assert sum(task_losses(model, x, y)) < 0.3 * before
    assert runs[0] == pytest.approx(runs[1])


def test_task_weights_scale_each_tasks_loss():
    """weights=(w_1, ..., w_T) trains on sum_t w_t L_t: a task weighted 0 sends no gradient
    to its tower (its loss leaves the sum), and unit weights are the plain sum."""
    seed_everything(0)
    x = torch.randn(64, D)
    y = torch.stack([x[:, 0], x[:, 1], x[:, 2]], dim=1)
    plain, unit = build("shared_bottom"), build("shared_bottom")
    unit.load_state_dict(plain.state_dict())
    assert train_multitask(plain, x, y, steps=5, batch_size=16) == \
        train_multitask(unit, x, y, steps=5, batch_size=16, weights=(1.0, 1.0, 1.0))
    model = build("shared_bottom")
    tower = [p.detach().clone() for p in model.towers[2].parameters()]
    train_multitask(model, x, y, steps=5, batch_size=16, weights=(0.5, 0.5, 0.0))
    assert all(torch.equal(a, b) for a, b in zip(tower, model.towers[2].parameters()))
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        train_multitask(model, x, y, steps=1, weights=(0.5, 0.5))


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "cgc", "ple"])
def test_wrong_feature_size_is_rejected(name):
    model = build(name)
    with pytest.raises(ValueError, match=rf"\(batch, {D}\)"):
        model(torch.randn(4, D + 1))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0] * D])


@pytest.mark.parametrize("make, match", [
    (lambda: MMoE(D, T, n_experts=0, expert_hidden=8, tower_hidden=4), "n_experts=0"),
    (lambda: CGC(D, T, n_shared=0, n_specific=0, expert_hidden=8, tower_hidden=4), "n_shared=0, n_specific=0"),
    (lambda: PLE(D, T, n_shared=0, n_specific=0, expert_hidden=8, tower_hidden=4, n_levels=2), "n_shared=0"),
    (lambda: CGC(D, T, n_shared=-1, n_specific=2, expert_hidden=8, tower_hidden=4), "n_shared=-1"),
    (lambda: PLE(D, T, n_shared=1, n_specific=1, expert_hidden=8, tower_hidden=4, n_levels=0), "n_levels=0"),
    (lambda: SharedBottom(D, 0, hidden=8, tower_hidden=4), "n_tasks=0"),
])
def test_bad_sizes_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()
