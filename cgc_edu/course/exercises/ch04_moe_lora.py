"""Chapter 04's exercises: what MoE-LoRA's gate costs, its one-expert and uniform corners,
and its update written by hand.

Taught in: notebooks/04_moe_lora.ipynb.
"""
from __future__ import annotations

import torch

from ...adapters.config import AdapterConfig, adapter_parameter_count
from ...methods import method_of
from .checks import (ChapterChecks, exercise, run_theirs, same_text, shape_hint, tensor_close,
                     trained_looking_layer)


class Checks(ChapterChecks):
    """The self-checks of chapter 04: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/04_moe_lora.ipynb.
    """

    chapter = "04"

    @exercise
    def ex1(answer):
        """On a 128 x 128 layer, how many trainable numbers does moe_lora(rank=8, n_tasks=4,
        n_experts=4, budget="total") add beyond one LoRA of rank 8 (lora(rank=8))?"""

        moe = adapter_parameter_count(AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=4,
                                                             budget="total"), 128, 128)
        lora = adapter_parameter_count(AdapterConfig.lora(rank=8), 128, 128)
        want = moe["total"] - lora["total"]
        if answer == want:
            return True, (f"{want}: only the gate (task embeddings and W_g); with budget='total' the "
                          "experts share one LoRA's rank.")
        return False, (f"with budget='total' the experts cost exactly one LoRA of rank 8; the "
                       f"difference is the gate: {want}.")

    @exercise
    def ex2(answer):
        """What is AdapterConfig.moe_lora(n_experts=1)? Name the method."""

        config = AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=1)
        want = method_of(config)
        if same_text(answer, want):
            return True, (f"{want}: one expert, its gate weight is always 1 (has_learned_gate="
                          f"{config.has_learned_gate}, needs_task_ids={config.needs_task_ids}).")
        return False, (f"one expert shared by all tasks, gate weight always 1: that is {want} "
                       f"(you said {answer!r}).")

    @exercise
    def ex3(answer):
        """MoE-LoRA with gate="uniform": does the layer's output depend on the task id? (True/False)"""

        config = AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=4, gate="uniform")
        want = config.needs_task_ids
        if answer is want:
            return True, ("no: every task gets the same 1/4 on each expert, so the bank is one "
                          "shared LoRA and the conflict between tasks returns.")
        return False, ("a uniform gate gives every task the same weights over the same shared "
                       f"experts; needs_task_ids is {want}.")

    @exercise
    def ex4(answer):
        """Build MoE-LoRA's update: write moe_lora_update(layer, x, t) = scaling * sum_e g_t,e
        B_e A_e x for x (batch, d_in) (layer.lora_A (E, r_e, d_in), layer.lora_B (E, d_out, r_e),
        layer.gate_weights(torch.tensor([t])) (1, E)); the check compares with the layer's own."""

        layer = trained_looking_layer(AdapterConfig.moe_lora(rank=8, alpha=16, n_tasks=3,
                                                             n_experts=4))
        x = torch.randn(3, 6)
        with torch.no_grad():
            for t in range(3):
                want = layer(x, task_ids=torch.full((3,), t)) - layer.base_layer(x)
                got, why = run_theirs(answer, layer, x, t)
                if why:
                    return False, why
                if not tensor_close(got, want):
                    return False, (f"task {t}: not the layer's update ({shape_hint(got, want)}); "
                                   "weight each expert's B_e A_e x by the task's gate, then scale.")
        return True, "every task: one bank of experts, mixed by each task's own gate weights."
