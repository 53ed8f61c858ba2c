"""Chapter 01's exercises: LoRA's rank, its scaling, its size, and its forward pass.

Taught in: notebooks/01_lora_from_scratch.ipynb.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...adapters.config import AdapterConfig, adapter_parameter_count
from ...adapters.layer import CGCLoRALinear
from .checks import (ChapterChecks, close, exercise, run_theirs, shape_hint, tensor_close,
                     trained_looking)


class Checks(ChapterChecks):
    """The self-checks of chapter 01: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/01_lora_from_scratch.ipynb.
    """

    chapter = "01"

    @exercise
    def ex1(answer):
        """Plant a rank-4 change (torch.randn(d_out, 4) @ torch.randn(4, d_in)). What is the smallest
        LoRA rank that can reach the noise floor?"""
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
    def ex2(answer):
        """With alpha = 16 for every rank, what are the scalings at rank 1 and rank 32? Answer a
        pair (s_1, s_32)."""

        want = [CGCLoRALinear(nn.Linear(4, 4), AdapterConfig.lora(rank=r, alpha=16)).scaling
                for r in (1, 32)]
        if close(answer, want):
            return True, (f"alpha/r = {want[0]:g} and {want[1]:g}: the higher rank gets the smaller "
                          "factor, which offsets its update's r rank-one terms, so with Adam the "
                          "updates grow at comparable speeds, not equal ones (rsLoRA's "
                          "alpha/sqrt(r) shrinks it less; measure it with LoRAKnobs).")
        if close(answer, [16 / math.sqrt(1), 16 / math.sqrt(32)]):
            return False, "that is rsLoRA's alpha/sqrt(r); the library's LoRA scales by alpha/r."
        return False, (f"the scaling is alpha / r: for alpha = 16, {want[0]:g} at r=1 and "
                       f"{want[1]:g} at r=32.")

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
