"""Chapter 02's exercises: the Switch balance loss, top-k routing, its gradient, sparse
dispatch, and a load the balance loss does not see.

Taught in: notebooks/02_mixture_of_experts.ipynb.
"""
from __future__ import annotations

import torch

from ...moe import MoELayer, load_balancing_loss, top_k_gating
from .checks import ChapterChecks, close, exercise, run_theirs, shape_hint, tensor_close


class Checks(ChapterChecks):
    """The self-checks of chapter 02: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/02_mixture_of_experts.ipynb.
    """

    chapter = "02"

    @exercise
    def ex1(answer):
        """With E = 8 experts, half the tokens go to expert 0 and half to expert 1, and the mean
        router probabilities equal those fractions (P = f). What is the Switch load-balancing
        loss E sum_e f_e P_e?"""

        E, n = 8, 16
        probs = torch.zeros(n, E)
        probs[:, :2] = 0.5                                 # every token: 1/2 on experts 0 and 1
        choice = torch.arange(n).remainder(2)[:, None]     # half the tokens to each
        want = float(load_balancing_loss(probs, choice))
        if close(answer, want):
            return True, (f"{want:g}: E x (1/2 x 1/2 + 1/2 x 1/2) = {E} x 1/2. Between the even "
                          f"load's 1 and a collapse's E = {E}: the loss grows as the load "
                          "concentrates, E / (number of experts used) when P = f.")
        if close(answer, want / E):
            return False, f"{answer} is sum_e f_e P_e without the factor E = {E}."
        return False, (f"E sum_e f_e P_e with f = P = (1/2, 1/2, 0, ...): two experts, each "
                       f"f_e P_e = 1/4, times E = {E}; you said {answer!r}.")

    @exercise
    def ex2(answer):
        """Router probabilities [0.5, 0.3, 0.2] and top-2 with renormalisation: what weights do the
        three experts get?"""

        want = top_k_gating(torch.tensor([[0.5, 0.3, 0.2]]), k=2)[0][0].tolist()
        if close(answer, want, 1e-3):
            return True, f"{[round(w, 3) for w in want]}: the top two, divided by their sum 0.8."
        if close(answer, [0.5, 0.3, 0.0], 1e-3):
            return False, "those are the raw probabilities; renormalising divides them by their sum."
        return False, f"keep the two largest and divide by their sum: {[round(w, 3) for w in want]}."

    @exercise
    def ex3(answer):
        """With k = 2 and renormalize=True, measure the router's gradient: after
        torch.manual_seed(0), build MoELayer(4, n_experts=3, d_hidden=4, k=2, renormalize=True),
        run it on torch.randn(16, 4), call .pow(2).mean().backward() on its output, and give the
        largest absolute entry of layer.router.proj.weight.grad (a number)."""

        torch.manual_seed(0)
        layer = MoELayer(4, n_experts=3, d_hidden=4, k=2, renormalize=True)
        layer(torch.randn(16, 4)).pow(2).mean().backward()
        grad = float(layer.router.proj.weight.grad.abs().max())
        try:
            value = None if isinstance(answer, (bool, str)) else float(answer)
        except (TypeError, ValueError):
            value = None
        if value is None:
            return False, ("give the measured number: the largest entry of "
                           "layer.router.proj.weight.grad.abs().")
        if abs(value - grad) <= 0.01 * grad:
            return True, (f"{grad:.2g}: not zero. The two kept weights are p_i / (p_i + p_j), "
                          "a ratio the router moves; only k = 1 makes it p / p = 1.")
        if abs(value) < 1e-6:
            return False, ("zero is the k = 1 case, where the one kept weight is p / p = 1. "
                           "With two kept experts the weights are a ratio of their "
                           "probabilities, which the router changes: measure it.")
        return False, (f"{answer!r} is not the largest |entry| of the router's gradient; "
                       "check the seed, the layer's arguments and the loss .pow(2).mean().")

    @exercise
    def ex4(answer):
        """Build sparse dispatch: write sparse_moe(layer, x) for a MoELayer that runs each expert
        only on the tokens routed to it and returns what layer(x) returns (x (tokens, d_model);
        routing = layer.router(x) gives .indices and .weights)."""

        torch.manual_seed(0)
        layer = MoELayer(6, n_experts=4, d_hidden=8, k=2).eval()
        x = torch.randn(20, 6)
        with torch.no_grad():
            want = layer(x)
            routing = layer.router(x)
        routed = [int((routing.indices == e).any(-1).sum()) for e in range(4)]
        seen = [0] * 4
        hooks = [expert.register_forward_hook(
            lambda _m, args, _o, e=e: seen.__setitem__(e, seen[e] + args[0].reshape(-1, 6).shape[0]))
            for e, expert in enumerate(layer.experts)]
        try:
            with torch.no_grad():
                got, why = run_theirs(answer, layer, x)
        finally:
            for hook in hooks:
                hook.remove()
        if why:
            return False, why
        if not tensor_close(got, want):
            return False, (f"not layer(x) ({shape_hint(got, want)}): each token's output is the "
                           "sum over its k experts of weight x expert(token).")
        if seen != routed:
            return False, (f"right output, but the experts saw {seen} tokens and were routed "
                           f"{routed}: run expert e on x[tokens routed to e] only.")
        return True, ("equal to the dense layer, each expert run on its own tokens only: k / E of "
                      "the dense layer's expert compute.")

    @exercise
    def ex5(answer):
        """Fool the balance loss: give router probabilities probs (tokens x 4, rows summing to 1)
        whose top-1 choices send at least 3/4 of the tokens to one expert while the Switch loss
        E sum_e f_e P_e is below 1."""

        if not isinstance(answer, torch.Tensor) or answer.ndim != 2 or answer.shape[1] != 4:
            return False, "answer a tensor of probabilities shaped (tokens, 4)."
        probs = answer.detach().double()
        if (probs < -1e-9).any() or (probs.sum(-1) - 1).abs().max() > 1e-6:
            return False, "each row must be probabilities: non-negative and summing to 1."
        choice = probs.argmax(-1, keepdim=True)
        share = float(torch.bincount(choice[:, 0], minlength=4).max()) / len(probs)
        loss = float(load_balancing_loss(probs, choice))
        if share < 0.75:
            return False, (f"the busiest expert gets {share:.0%} of the tokens' top-1 choices; "
                           "send at least three quarters to one expert.")
        if loss >= 1:
            return False, (f"the loss is {loss:.3f}, not below 1: keep the busy expert's mean "
                           "probability P low (its tokens choose it by a hair, the other tokens "
                           "give it almost nothing).")
        return True, (f"{share:.0%} of the tokens on one expert at loss {loss:.3f} < 1: the loss "
                      "sees the load only through P, so its value does not certify a balance.")
