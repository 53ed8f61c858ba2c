"""Chapter 08's exercises: where a task relies on its own expert in the learner's own
recording, the uniform gate, a zeroed expert, and a gate recorder written by hand.

Taught in: notebooks/08_gate_lab.ipynb.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...adapters.config import AdapterConfig
from ...adapters.injection import adapter_layers, add_adapters
from ...adapters.layer import CGCLoRALinear
from ...models.central import load_central_model
from ..counterfactual import override_weights
from ..plots import common_share_table
from .checks import (ChapterChecks, close, exercise, run_theirs, same_text, tensor_close,
                     trained_looking)


class Checks(ChapterChecks):
    """The self-checks of chapter 08: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    chapter = "08"

    @exercise
    def ex1(answer, recording):
        """In which transformer layer does `last` rely most on its own expert (lowest common
        share)? Pass your recording: check.ex1(answer, recording)."""

        values, tasks, layers = common_share_table(recording, step=-1)
        want = layers[int(np.argmin(values[tasks.index("last")]))]
        if same_text(answer, want):
            return True, f"{want}: the lowest common share of `last` in your recording."
        return False, (f"plots.common_share_table(recording) row 'last': its lowest value is in "
                       f"{want}.")

    @exercise
    def ex2(answer):
        """The ablation without a gate, cgc_lora(rank=6, n_tasks=4, gate="uniform"): what weight does
        the inspector show on each allowed expert, at any step?"""

        layer = CGCLoRALinear(nn.Linear(8, 8),
                              AdapterConfig.cgc_lora(rank=6, n_tasks=4, gate="uniform"))
        g = layer.gate_weights(torch.tensor([0]))[0]
        want = float(g[g > 0][0])
        if close(answer, want, 1e-3):
            return True, f"{want:.3f} on each of the 3 allowed experts, fixed: one snapshot says it all."
        return False, f"a uniform gate spreads 1 over |S_t| = 3 experts: {want:.3f} each, at every step."

    @exercise
    def ex3(answer):
        """A task's learned gate is [0.5, 0.3, 0, 0.2, 0] over 5 experts. What are its weights after
        override_gate(..., "zero:0")?"""

        learned = torch.tensor([[0.5, 0.3, 0.0, 0.2, 0.0]])
        fake_gate = lambda ids: learned.expand(len(ids), -1)          # noqa: E731 - a fixed gate
        want = override_weights(fake_gate, AdapterConfig.cgc_lora(rank=6, n_tasks=3), 1,
                                "zero:0").tolist()
        if close(answer, want, 1e-3):
            return True, f"{[round(w, 3) for w in want]}: expert 0 out, the rest divided by 0.5."
        return False, (f"set expert 0 to 0 and divide the rest by their sum (0.5): "
                       f"{[round(w, 3) for w in want]}.")

    @exercise
    def ex4(answer):
        """Build a gate recorder: write record_gates(model, batch) that runs ``model(**batch)`` once
        and returns {module name: the (batch, E) weights its gate returned}, using forward hooks
        on each adapter layer's .gate (adapter_layers(model) names them); remove your hooks."""

        torch.manual_seed(0)
        model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, n_tasks=3))
        layers = adapter_layers(model)
        trained_looking(*layers.values())
        batch = {"input_ids": torch.randint(4, model.config.vocab_size, (3, 5)),
                 "task_ids": torch.tensor([2, 0, 1])}
        with torch.no_grad():
            got, why = run_theirs(answer, model, batch)
        if why:
            return False, why
        left = sum(len(layer.gate._forward_hooks) for layer in layers.values())
        if not isinstance(got, dict) or set(got) != set(layers):
            names = sorted(got)[:3] if isinstance(got, dict) else type(got).__name__
            return False, (f"answer one entry per adapter layer (the check's model adapts every "
                           f"projection: {len(layers)}, e.g. {next(iter(layers))!r}); yours: "
                           f"{names}.")
        for name, layer in layers.items():
            if not tensor_close(got[name], layer.gate_weights(batch["task_ids"])):
                return False, f"{name}: not the weights the gate gives tasks [2, 0, 1]."
        if left:
            return False, f"right weights, but {left} hooks are still on the gates: remove them."
        return True, (f"the gates of all {len(layers)} adapted modules of the check's model (it "
                      "adapts every projection) recorded in one forward, hooks removed.")
