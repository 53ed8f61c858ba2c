"""Two regression tasks with a chosen correlation: the synthetic experiment of the MMoE paper.

Ma et al., KDD 2018, section 3.2: pick orthogonal unit vectors u1, u2 in R^d, a scale c and
a correlation p in [-1, 1], and set

    w1 = c u1,    w2 = c (p u1 + sqrt(1 - p^2) u2)        so cos(w1, w2) = p
    x  ~ N(0, I_d)
    y_t = w_t . x + sum_{i=1}^{m} sin(alpha_i w_t . x + beta_i) + eps_t,   eps_t ~ N(0, noise_std^2)

alpha_i, beta_i are "given parameters" in the paper, shared by both tasks and by every data
seed: here they are drawn from N(0, 1) with their own `shape_seed`, so changing `seed` redraws
the directions, inputs and noise but keeps the shape of the non-linearity.

How well the label correlation follows p depends on that shape. The sine sum is not an odd
function, and its even part makes corr(y1, y2) differ from p (by Hermite expansion,
corr = sum_n a_n^2 n! p^n / sum_n a_n^2 n!, with a_n the Hermite coefficients of
s -> s + sum_i sin(alpha_i s + beta_i)). For the default `shape_seed=0` it stays within 0.1 of
p on [-1, 1], with about 8% of the label variance non-linear; other shape seeds can be far
more non-linear and then decorrelate the labels much more (the paper's figure 3 shows the
same effect).

Taught in: notebooks/03_multitask_learning.ipynb
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def make_correlated_tasks(n_samples: int, correlation: float, in_features: int = 100, n_sin: int = 10,
                          noise_std: float = 0.1, scale: float = 1.0,
                          seed: int = 0, shape_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (x, y): x (n_samples, in_features) float32, y (n_samples, 2), column t = task t.

    `correlation` is the cosine between the two tasks' weight vectors (see module doc).
    Deterministic: `seed` fixes the task directions w, the inputs and the noise, `shape_seed`
    the sine parameters alpha, beta. Draw train and test from one call and split it, so both
    come from the same tasks.

    Taught in: notebooks/03_multitask_learning.ipynb
    """
    if not (isinstance(correlation, numbers.Real) and math.isfinite(correlation) and -1 <= correlation <= 1):
        raise ValueError(f"correlation={correlation!r} is not a cosine; pass a number in [-1, 1].")
    if in_features < 2:
        raise ValueError(f"in_features={in_features}: two orthogonal task directions need in_features >= 2.")
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: pass n_samples >= 1.")
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((in_features, 2)))  # two orthonormal columns
    w = scale * np.stack([u[:, 0], correlation * u[:, 0] + math.sqrt(1 - correlation**2) * u[:, 1]], axis=1)
    shape_rng = np.random.default_rng(shape_seed)
    alpha, beta = shape_rng.standard_normal(n_sin), shape_rng.standard_normal(n_sin)
    x = rng.standard_normal((n_samples, in_features))
    s = x @ w  # (n, 2): w_t . x
    y = s + np.sin(s[:, :, None] * alpha + beta).sum(-1) + noise_std * rng.standard_normal(s.shape)
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


__all__ = ["make_correlated_tasks"]
