"""Chapter 08's exercises: when a task turns to its own expert in the learner's own
recording, the common share of a uniform gate, a zeroed expert, and a gate recorder written
by hand.

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
from .checks import (ChapterChecks, close, exercise, run_theirs, tensor_close,
                     trained_looking)


class Checks(ChapterChecks):
    """The self-checks of chapter 08: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/08_gate_lab.ipynb.
    """

    chapter = "08"

    @exercise
    def ex1(answer, recording):
        """At which recorded training step does `first`'s common share, averaged over all
        adapted modules, first fall below 0.5? Use recording.common_share() and
        recording.steps (answer None if it never does), and pass your recording:
        check.ex1(answer, recording)."""

        first = recording.task_names.index("first")
        share = recording.common_share()[:, :, first].mean(axis=1)        # (steps,)
        below = np.flatnonzero(share < 0.5)
        want = int(recording.steps[below[0]]) if below.size else None
        if want is None:
            if answer is None:
                return True, ("in your recording `first` never puts less than half on the "
                              "common experts.")
            return False, ("the mean over modules of recording.common_share()[:, :, first] never "
                           "falls below 0.5 in your recording: answer None.")
        if isinstance(answer, (int, np.integer)) and int(answer) == want:
            return True, (f"step {want}: the first recorded step where `first`'s mean common "
                          f"share ({share[below[0]]:.2f}) is below one half.")
        if isinstance(answer, (int, np.integer)) and int(answer) == int(below[0]) != want:
            return False, (f"{answer} is the position of that step in recording.steps; answer "
                           "the step itself, recording.steps[position].")
        return False, ("average recording.common_share()[:, :, first] over the modules "
                       "(axis 1), then take the first recorded step where it is below 0.5 "
                       f"(not {answer!r}).")

    @exercise
    def ex2(answer):
        """The ablation without a learned gate with 3 common and 2 specific experts per task,
        AdapterConfig.cgc_lora(rank=10, n_tasks=4, n_common=3, n_specific=2, gate="uniform"):
        what share of a task's gate mass is on the common experts, at any step?"""

        config = AdapterConfig.cgc_lora(rank=10, n_tasks=4, n_common=3, n_specific=2,
                                        gate="uniform")
        layer = CGCLoRALinear(nn.Linear(8, 8), config)
        g = layer.gate_weights(torch.tensor([0]))[0]
        want = float(g[:config.n_common].sum())
        allowed = int((g > 0).sum())
        if close(answer, want, 1e-3):
            return True, (f"{want:.2f}: 1/{allowed} on each of the {allowed} allowed experts, "
                          f"{config.n_common} of them common, at every step.")
        return False, (f"a uniform gate puts 1/|S_t| on each allowed expert (|S_t| = {allowed}); "
                       f"add the common ones: {want:.2f}, not {answer!r}.")

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
