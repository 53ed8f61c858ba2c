"""Chapter 2 library: router, top-k gating, load-balancing loss, MoE layer."""
import math

import pytest
import torch

from cgc_edu.moe import MoELayer, Router, RouterOutput, load_balancing_loss, router_stats, top_k_gating
from cgc_edu.utils import seed_everything


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_selects_k_and_renormalises(k):
    seed_everything(0)
    logits = torch.randn(32, 6)
    weights, indices = top_k_gating(logits.softmax(-1), k)
    assert indices.shape == (32, k)
    assert ((weights > 0).sum(-1) == k).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(32))
    # renormalised top-k probabilities == softmax over the selected logits only
    torch.testing.assert_close(weights.gather(-1, indices), logits.gather(-1, indices).softmax(-1))
    # the kept experts are the most probable ones
    assert (indices == logits.topk(k, dim=-1).indices).all()


def test_router_probabilities_and_noise_only_in_training():
    seed_everything(0)
    router = Router(8, n_experts=4, k=2, noise_std=1.0)
    x = torch.randn(16, 8)
    router.eval()
    out = router(x)
    assert out.probs.shape == out.weights.shape == (16, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(16))
    torch.testing.assert_close(router(x).weights, out.weights)  # deterministic in eval
    router.train()
    assert not torch.allclose(router(x).probs, out.probs)  # noisy logits while training


def test_moe_layer_matches_a_loop_over_selected_experts():
    seed_everything(0)
    layer = MoELayer(d_model=8, n_experts=4, d_hidden=16, k=2).eval()
    x = torch.randn(3, 5, 8)
    y = layer(x)
    assert y.shape == x.shape
    tokens = x.reshape(-1, 8)
    routing = layer.last_routing
    expected = torch.stack([
        sum(routing.weights[i, e] * layer.experts[e](tokens[i]) for e in routing.indices[i].tolist())
        for i in range(len(tokens))])
    torch.testing.assert_close(y.reshape(-1, 8), expected)
    assert layer.aux_loss is not None and layer.aux_loss.requires_grad


def test_load_balancing_loss_uniform_is_minimal_and_collapse_is_larger():
    n_tokens, n_experts = 64, 4
    uniform_probs = torch.full((n_tokens, n_experts), 1 / n_experts)
    balanced = torch.arange(n_tokens).remainder(n_experts).unsqueeze(-1)
    uniform = load_balancing_loss(uniform_probs, balanced)
    assert uniform.item() == pytest.approx(1.0)

    collapsed_probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(n_tokens, 1)
    collapsed = load_balancing_loss(collapsed_probs, torch.zeros(n_tokens, 1, dtype=torch.long))
    assert collapsed.item() == pytest.approx(0.97 * n_experts)
    assert collapsed > uniform

    seed_everything(0)  # any softmax routing sits between the two
    probs = torch.randn(n_tokens, n_experts).softmax(-1)
    mixed = load_balancing_loss(probs, top_k_gating(probs, 1)[1])
    assert uniform <= mixed < collapsed


def test_load_balancing_gradient_moves_probability_off_the_busy_expert():
    logits = torch.zeros(10, 3, requires_grad=True)
    probs = logits.softmax(-1)
    busy = torch.zeros(10, 1, dtype=torch.long)  # every token went to expert 0
    load_balancing_loss(probs, busy).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_router_stats_counts_and_entropies():
    seed_everything(0)
    router = Router(8, n_experts=4, k=2).eval()
    with torch.no_grad():
        router.proj.weight.zero_()  # uniform probabilities
    stats = router_stats(router(torch.randn(20, 8)))
    assert int(stats["tokens_per_expert"].sum()) == 20 * 2
    torch.testing.assert_close(stats["fraction"].sum(), torch.tensor(1.0))
    assert stats["entropy"] == pytest.approx(math.log(4))
    one_hot = torch.tensor([[1.0, 0, 0, 0]])
    collapsed = router_stats(RouterOutput(probs=one_hot, weights=one_hot, indices=torch.tensor([[0]])))
    assert collapsed["load_entropy"] == pytest.approx(0.0) and collapsed["entropy"] == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_experts=4, k=5), "k=5"),
    (dict(n_experts=4, k=0), "k=0"),
    (dict(n_experts=0, k=1), "n_experts=0"),
    (dict(n_experts=4, k=1, noise_std=-1.0), "noise_std"),
])
def test_bad_router_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoELayer(d_model=8, d_hidden=16, **kwargs)


def test_top_k_larger_than_experts_is_rejected():
    with pytest.raises(ValueError, match="k=3"):
        top_k_gating(torch.full((2, 2), 0.5), 3)


def test_wrong_feature_size():
    layer = MoELayer(d_model=8, n_experts=2, d_hidden=4)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(3, 7))
    assert layer.last_routing is None  # nothing recorded from the failed call


def test_top_1_without_renormalisation_keeps_the_router_gradient():
    logits = torch.randn(5, 4, requires_grad=True)
    renormalised, _ = top_k_gating(logits.softmax(-1), 1)
    torch.testing.assert_close(renormalised.sum(-1), torch.ones(5))  # always 1: nothing to learn from
    raw, indices = top_k_gating(logits.softmax(-1), 1, renormalize=False)
    torch.testing.assert_close(raw.gather(-1, indices), logits.softmax(-1).gather(-1, indices))
    raw.sum().backward()
    assert logits.grad.abs().sum() > 0
