"""A token-level mixture-of-experts layer, small enough to read in one sitting.

Each token x is routed by a learned router to k of E feed-forward experts
(Shazeer et al. 2017, "Outrageously Large Neural Networks"; Fedus et al. 2022,
"Switch Transformers"):

    p(x)   = softmax(W_r x [+ noise])                  router probabilities, (tokens, E)
    T(x)   = indices of the k largest p_e(x)           top-k selection
    g_e(x) = p_e(x) / sum_{j in T(x)} p_j(x)  if e in T(x), else 0   (renormalised)
    y      = sum_e g_e(x) * FFN_e(x)

Teaching simplification: every expert runs on every token and the unselected ones are
multiplied by zero ("dense top-k"). That costs E/k times the compute of real sparse dispatch
but is exact, short, and fast enough at this scale. Production MoEs gather tokens per expert.

Taught in: notebooks/02_mixture_of_experts.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _check_counts(n_experts: int, k: int) -> None:
    if n_experts < 1:
        raise ValueError(f"n_experts={n_experts}: a mixture needs at least one expert; pass n_experts >= 1.")
    if not 1 <= k <= n_experts:
        raise ValueError(f"k={k} with n_experts={n_experts}: top-k must pick between 1 and n_experts "
                         f"experts; pass 1 <= k <= {n_experts}.")


def top_k_gating(probs: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row's k largest probabilities and (by default) renormalise them to sum to one.

    g_e = p_e / sum_{j in top-k} p_j for the k selected experts, 0 elsewhere. The same as a
    softmax over the k selected logits (the normalising constant cancels).
    With k = 1 renormalising makes every weight exactly 1, so the task loss sends the router
    no gradient; the Switch Transformer (k = 1) keeps the raw probability: renormalize=False.

    Args:
        probs: router probabilities, (tokens, E), rows summing to one.
        k: number of experts per token, 1 <= k <= E.
        renormalize: divide the kept probabilities by their sum.

    Returns:
        (weights, indices): weights (tokens, E) with exactly k non-zeros per row (summing to one
        when renormalised), indices (tokens, k) of the selected experts, most probable first.

    Taught in: notebooks/02_mixture_of_experts.ipynb
    """
    _check_counts(probs.shape[-1], k)
    top_p, indices = probs.topk(k, dim=-1)
    if renormalize:
        top_p = top_p / top_p.sum(-1, keepdim=True)
    weights = torch.zeros_like(probs).scatter(-1, indices, top_p)
    return weights, indices


@dataclass
class RouterOutput:
    """What a router decided for a batch of tokens (all tensors have tokens as first dim).

    probs: full softmax over experts (tokens, E); weights: renormalised top-k weights
    (tokens, E), zero for unselected experts; indices: selected experts (tokens, k).
    """

    probs: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor


class Router(nn.Module):
    """Linear router: softmax over experts, top-k with renormalisation, optional noise.

    logits = W_r x, plus Gaussian noise of std `noise_std` while training (a fixed-scale
    version of the noisy top-k gating of Shazeer et al. 2017, which helps unused experts get
    picked now and then); p = softmax(logits); then `top_k_gating(p, k, renormalize)`.

    Taught in: notebooks/02_mixture_of_experts.ipynb
    """

    def __init__(self, d_model: int, n_experts: int, k: int = 1, noise_std: float = 0.0,
                 renormalize: bool = True):
        super().__init__()
        _check_counts(n_experts, k)
        if noise_std < 0:
            raise ValueError(f"noise_std={noise_std}: the noise scale must be >= 0 (0 turns noise off).")
        self.n_experts, self.k, self.noise_std, self.renormalize = n_experts, k, noise_std, renormalize
        self.proj = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = self.proj(x)
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        probs = logits.softmax(dim=-1)
        weights, indices = top_k_gating(probs, self.k, self.renormalize)
        return RouterOutput(probs, weights, indices)


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer auxiliary loss: E * sum_e f_e * P_e.

    f_e = fraction of the token->expert assignments that went to expert e (counted over the
    top-k choices, so it sums to one; not differentiable), P_e = mean router probability of
    expert e over the tokens (differentiable, so the gradient pushes probability away from
    over-used experts). Fedus et al. 2022, eq. (4)-(6). Uniform routing (f_e = P_e = 1/E)
    gives 1; routing everything to one confident expert gives E. It is also 1 whenever P is
    uniform, whatever the load f, and an uneven load can even score below 1: the value does
    not certify a balanced load (measure ``router_stats(...)["fraction"]``).
    Multiply by a small coefficient (Switch uses 0.01) before adding it to the task loss.

    Args:
        probs: router probabilities (tokens, E). indices: selected experts (tokens, k).

    Taught in: notebooks/02_mixture_of_experts.ipynb
    """
    n_experts = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).to(probs.dtype)
    fraction = counts / counts.sum()
    return n_experts * torch.sum(fraction * probs.mean(dim=0))


def router_stats(routing: RouterOutput) -> dict:
    """Numbers to plot about a routing decision.

    Returns a dict with `tokens_per_expert` (E,) counts of top-k assignments,
    `fraction` (E,) the same normalised, `mean_probs` (E,) the mean router probability,
    `entropy` the mean per-token entropy of p (nats; low = confident router) and
    `load_entropy` the entropy of `fraction` (log E = perfectly balanced, 0 = collapsed).

    Taught in: notebooks/02_mixture_of_experts.ipynb
    """
    probs = routing.probs.detach()
    counts = torch.bincount(routing.indices.reshape(-1), minlength=probs.shape[-1])
    fraction = counts.float() / counts.sum()
    token_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    load_entropy = -(fraction * fraction.clamp_min(1e-12).log()).sum()
    return {"tokens_per_expert": counts, "fraction": fraction, "mean_probs": probs.mean(0),
            "entropy": float(token_entropy), "load_entropy": float(load_entropy)}


class MoELayer(nn.Module):
    """Top-k mixture of feed-forward experts applied to every token.

    y = sum_e g_e(x) * FFN_e(x), with FFN_e(x) = W2_e GELU(W1_e x + b1_e) + b2_e and g from
    `Router`. Input (..., d_model) -> output of the same shape; any leading dims are tokens.
    After each forward, `last_routing` holds the `RouterOutput` (tokens flattened) and
    `aux_loss` the `load_balancing_loss` of that batch, ready to add to the task loss.
    Computation is dense (all experts on all tokens, unselected ones weighted 0): see module doc.

    Taught in: notebooks/02_mixture_of_experts.ipynb
    """

    def __init__(self, d_model: int, n_experts: int, d_hidden: int, k: int = 1, noise_std: float = 0.0,
                 renormalize: bool = True):
        super().__init__()
        self.d_model = d_model
        self.router = Router(d_model, n_experts, k, noise_std, renormalize)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_model))
            for _ in range(n_experts))
        self.last_routing: RouterOutput | None = None
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoELayer expects last dimension d_model={self.d_model}, got input of shape "
                             f"{tuple(x.shape)}; reshape the input or build the layer with that d_model.")
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens)
        expert_out = torch.stack([expert(tokens) for expert in self.experts], dim=1)  # (tokens, E, d)
        y = torch.einsum("te,ted->td", routing.weights, expert_out)
        self.last_routing = routing
        self.aux_loss = load_balancing_loss(routing.probs, routing.indices)
        return y.reshape(x.shape)


__all__ = ["top_k_gating", "RouterOutput", "Router", "load_balancing_loss", "router_stats", "MoELayer"]
