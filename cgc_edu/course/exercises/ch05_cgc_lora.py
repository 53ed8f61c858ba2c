"""Chapter 05's exercises: CGC-LoRA's experts and allowed sets, the ablation without a
gate, the total budget, and a task's merged update.

Taught in: notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import torch
from torch import nn

from ...adapters.config import AdapterConfig, adapter_parameter_count
from ...adapters.layer import CGCLoRALinear
from ...utils import relative_difference
from .checks import (ChapterChecks, close, exercise, run_theirs, shape_hint, tensor_close,
                     trained_looking_layer)


class Checks(ChapterChecks):
    """The self-checks of chapter 05: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """

    chapter = "05"

    @exercise
    def ex1(answer):
        """AdapterConfig.moe_lora(rank=12, alpha=24, n_tasks=8, n_experts=3): how many experts does a
        module have, and what is task 5's allowed set? Answer (E, S_5)."""

        config = AdapterConfig.moe_lora(rank=12, alpha=24, n_tasks=8, n_experts=3)
        want = (config.n_experts, config.allowed_experts(5))
        try:
            right = int(answer[0]) == want[0] and list(answer[1]) == want[1]
        except (TypeError, ValueError, IndexError):
            right = False
        if right:
            return True, f"E = {want[0]}, S_5 = {want[1]}: every expert is common, nothing is task 5's own."
        return False, f"with no specific experts E = n_common = {want[0]} and every S_t = {want[1]}."

    @exercise
    def ex2(answer):
        """The ablation without a gate: cgc_lora(rank=6, n_tasks=8, gate="uniform"). What is a
        task's common share (gate mass on the common experts), before and after training?"""

        layer = CGCLoRALinear(nn.Linear(8, 8),
                              AdapterConfig.cgc_lora(rank=6, n_tasks=8, gate="uniform"))
        want = float(layer.gate_weights(torch.tensor([5]))[0, :layer.config.n_common].sum())
        if close(answer, want, 1e-3):
            return True, (f"{want:.3f} always: a uniform gate has no parameters, so training cannot "
                          "move it.")
        return False, (f"2 common of 3 allowed experts at 1/3 each: {want:.3f}, and it never changes "
                       "(the uniform gate has no parameters).")

    @exercise
    def ex3(answer):
        """budget="total", 8 tasks, 2 common + 1 specific expert: the smallest rank that divides,
        and the trainable numbers of one 128 x 128 projection (gate aside)? Answer (rank, count)."""

        rank = next(r for r in range(1, 1000)
                    if r % AdapterConfig.cgc_lora(rank=10, n_tasks=8, budget="total").n_experts == 0)
        count = adapter_parameter_count(AdapterConfig.cgc_lora(rank=rank, n_tasks=8,
                                                               budget="total"),
                                        128, 128)["experts"]
        try:
            right = int(answer[0]) == rank and int(answer[1]) == count
        except (TypeError, ValueError, IndexError):
            right = False
        if right:
            return True, f"rank {rank} (E = {rank} experts of rank 1): {count:,} numbers, one LoRA of rank {rank}."
        return False, (f"E = 2 + 8 x 1 = 10 experts, so the rank must be a multiple of 10: rank "
                       f"{rank} gives r_e = 1 and E r_e (128 + 128) = {count:,}.")

    @exercise
    def ex4(answer):
        """Build merging: write task_delta(layer, t) giving dW_t (d_out, d_in) = scaling * sum over
        S_t of g_t,e B_e A_e for a CGC-LoRA layer; the check compares with layer.delta_weight(t)
        and with merging it into W0."""

        layer = trained_looking_layer(AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3))
        x = torch.randn(3, 6)
        with torch.no_grad():
            for t in range(3):
                want = layer.delta_weight(t)
                got, why = run_theirs(answer, layer, t)
                if why:
                    return False, why
                if not tensor_close(got, want):
                    if isinstance(got, torch.Tensor) and got.shape == want.shape:
                        seen = (f"relative difference {relative_difference(got, want):.2g} "
                                "to the library's dW_t")
                    else:
                        seen = shape_hint(got, want)
                    return False, (f"task {t}: not dW_t ({seen}); B_e A_e is "
                                   "(d_out, d_in), the gate is zero outside S_t, then scale.")
                merged = layer.base_layer(x) + x @ got.T
                if not tensor_close(merged, layer(x, task_ids=torch.full((3,), t))):
                    return False, f"task {t}: W0 + your dW_t does not give the routed output."
        return True, ("W0 + dW_t answers as the routed layer does: merging a task costs no "
                      "adapter at inference.")
