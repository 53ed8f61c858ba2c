"""Chapter 02's exercise 3: the measured size of the router's gradient at k = 2."""
import torch
from torch import nn

from cgc_edu.course.exercises import Checks
from cgc_edu.moe import MoELayer


def _largest_router_gradient():
    """Independently of the checker: the layer's router logits, top-2 renormalised by hand,
    the dense mixture of the experts, and the largest |entry| of the router's gradient."""
    torch.manual_seed(0)
    layer = MoELayer(4, n_experts=3, d_hidden=4, k=2, renormalize=True)
    x = torch.randn(16, 4)
    probs = layer.router.proj(x).softmax(-1)
    top_p, top_i = probs.topk(2, dim=-1)
    weights = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    out = sum(weights[:, e, None] * expert(x) for e, expert in enumerate(layer.experts))
    out.pow(2).mean().backward()
    return layer.router.proj.weight.grad.abs().max().item()


def test_chapter_02_ex3_wants_the_measured_gradient(capsys):
    want = _largest_router_gradient()
    assert want > 1e-3                       # k = 2: the router does get a gradient
    check = Checks("02")
    assert check.ex3(want)
    assert check.ex3(torch.tensor(want))
    assert not check.ex3(0.0)
    assert "k = 1" in capsys.readouterr().out
    assert not check.ex3(True)
    assert not check.ex3(2 * want)
    assert not check.ex3("0.02")
