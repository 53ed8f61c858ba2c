"""Chapter 01's exercises: LoRA's rank, how its scaling grows the update, its size, and its
forward pass.

Taught in: notebooks/01_lora_from_scratch.ipynb.
"""
from __future__ import annotations

import torch
from torch import nn

from ...adapters.config import AdapterConfig, adapter_parameter_count
from ...adapters.layer import CGCLoRALinear
from .checks import (ChapterChecks, exercise, run_theirs, same_text, shape_hint,
                     tensor_close, trained_looking)


class Checks(ChapterChecks):
    """The self-checks of chapter 01: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """

    chapter = "01"

    @exercise
    def ex1(answer):
        """Plant a rank-4 change (torch.randn(d_out, 4) @ torch.randn(4, d_in) / d_in**0.5) and train
        ranks 2 to 5 with fit(r, target=...). What is the smallest LoRA rank that reaches the noise
        floor?"""
        g = torch.Generator().manual_seed(0)
        want = int(torch.linalg.matrix_rank(torch.randn(24, 4, generator=g)
                                            @ torch.randn(4, 32, generator=g)))
        if answer == want:
            return True, f"B A has rank at most r, and the change has rank {want}: r = {want} is the least."
        if isinstance(answer, int) and answer < want:
            return False, (f"rank {answer} cannot express a rank-{want} change: B A has rank at most "
                           f"r, so the loss stays above the noise floor.")
        return False, (f"rank {answer} reaches the floor too, but it is not the smallest: the change "
                       f"has rank {want}.")

    @exercise
    def ex2(answer, early_norm=None):
        """Extend the growth measurement to rank 32: predict, then measure with early_norm(32,
        rslora) beside early_norm(16, rslora), which rule's update grows by more than 5 % from rank
        16 to rank 32 in its first 5 steps. Answer "alpha/r", "alpha/sqrt(r)", "both" or "neither",
        and pass your measuring function: check.ex2(answer, early_norm)."""

        if not callable(early_norm):
            return False, ("pass the chapter's measuring function too, check.ex2(answer, early_norm): "
                           "the check reads the growth from it.")
        growth = {}
        for rule, rs in (("alpha/r", False), ("alpha/sqrt(r)", True)):
            (high, why_high), (low, why_low) = (run_theirs(early_norm, r, rs) for r in (32, 16))
            if why_high or why_low:
                return False, why_high or why_low
            growth[rule] = float(high) / float(low)
        grows = [rule for rule, g in growth.items() if g > 1.05]
        want = {0: "neither", 2: "both"}.get(len(grows)) or grows[0]
        shown = " and ".join(f"{rule} x {g:.2f}" for rule, g in growth.items())
        why = {"alpha/sqrt(r)": (" alpha/r halves the scaling as the rank doubles, which offsets "
                                 "the twice as many rank-one terms; alpha/sqrt(r) divides it only "
                                 "by sqrt(2).")}.get(want, "")
        if same_text(answer, want):
            return True, f"{want}: from rank 16 to rank 32 the update grew {shown}.{why}"
        return False, (f"measured from rank 16 to rank 32: {shown}, so the answer is {want!r} "
                       f"(growing means by more than 5 %); you said {answer!r}.")

    @exercise
    def ex3(answer):
        """Trainable numbers of LoRA at rank 8 on the seven projections of one Llama-7B block
        (q, k, v, o: 4096 x 4096; gate, up: 4096 -> 11008; down: 11008 -> 4096)?"""

        shapes = [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
        want = sum(adapter_parameter_count(AdapterConfig.lora(rank=8), i, o)["total"]
                   for i, o in shapes)
        full = sum(i * o for i, o in shapes)
        if answer == want:
            return True, f"{want:,}: r (d_in + d_out) per projection, {100 * want / full:.2f}% of the block."
        if answer == full:
            return False, f"{full:,} is the whole block (d_in d_out each); LoRA trains r (d_in + d_out)."
        return False, f"sum r (d_in + d_out) over the seven projections; you are {answer - want:+,} off."

    @exercise
    def ex4(answer):
        """Build LoRA: write lora_forward(x, W0, A, B, scaling) -> x W0^T + scaling * x A^T B^T
        (x (batch, d_in), W0 (d_out, d_in), A (r, d_in), B (d_out, r)); the check compares it with
        cgc_edu's layer holding the same weights."""

        torch.manual_seed(0)
        config = AdapterConfig.lora(rank=3, alpha=12)
        layer = trained_looking(CGCLoRALinear(nn.Linear(7, 5, bias=False), config))
        x = torch.randn(4, 7)
        W0, A, B = layer.base_layer.weight, layer.lora_A[0], layer.lora_B[0]
        want = layer(x).detach()
        got, why = run_theirs(answer, x, W0.detach(), A.detach(), B.detach(), layer.scaling)
        if why:
            return False, why
        if tensor_close(got, want):
            return True, ("your output equals CGCLoRALinear's with one expert: LoRA is the base "
                          "plus a scaled rank-r path.")
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            base = x @ W0.detach().T
            if tensor_close(got, base + (x @ A.detach().T @ B.detach().T)):
                return False, f"the low-rank path is missing its scaling alpha / r = {layer.scaling:g}."
            if tensor_close(got, base):
                return False, "that is the frozen layer alone: add the low-rank path x A^T B^T."
        return False, f"not the layer's output ({shape_hint(got, want)}); A maps d_in to r first."
