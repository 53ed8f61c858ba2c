"""Chapter 03's exercises: correlated tasks, CGC's gates, the arrangement that shares
nothing, and a CGC gate built by hand.

Taught in: notebooks/03_multitask_learning.ipynb.
"""
from __future__ import annotations

import numpy as np
import torch

from ...data.synthetic import make_correlated_tasks
from ...mtl import CGC, ExtractionLayer
from .checks import ChapterChecks, close, exercise, run_theirs, shape_hint, tensor_close


class Checks(ChapterChecks):
    """The self-checks of chapter 03: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/03_multitask_learning.ipynb.
    """

    chapter = "03"

    @exercise
    def ex1(answer):
        """The tasks of make_correlated_tasks(20_000, -0.7, in_features=20): what is their label
        correlation (to two decimals)?"""

        y = make_correlated_tasks(20_000, -0.7, in_features=20)[1].numpy()
        want = float(np.corrcoef(y.T)[0, 1])
        if close(answer, want, 0.02):
            return True, (f"{want:+.3f}: close to the cosine -0.7; the sine terms make it differ a "
                          "little (see the module doc of cgc_edu.data.synthetic).")
        return False, f"measure it with np.corrcoef(y.T)[0, 1]: it is {want:+.3f}."

    @exercise
    def ex2(answer):
        """CGC(20, 2, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=8): over how many
        experts does each task's gate mix?"""

        model = CGC(20, 2, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=8)
        want = model.gate_weights(torch.randn(3, 20))[0].shape[1]
        if answer == want:
            return True, f"{want}: the 2 shared experts and the task's own 2, never the other task's."
        return False, (f"task t's gate mixes the shared experts and task t's own: {want} (you said "
                       f"{answer}); the other task's experts are out of its reach.")

    @exercise
    def ex3(answer):
        """CGC(20, 2, n_shared=0, n_specific=1, expert_hidden=8, tower_hidden=8) shares no expert.
        Which arrangement of this chapter is it? (Read its gate weights, and find which
        parameters task 0's loss sends a gradient to.)"""

        torch.manual_seed(0)
        model = CGC(20, 2, n_shared=0, n_specific=1, expert_hidden=8, tower_hidden=8)
        x = torch.randn(8, 20)
        ones = all(torch.allclose(w, torch.ones_like(w)) for w in model.gate_weights(x))
        model(x)[0].pow(2).sum().backward()
        task_1 = [*model.extraction.specific_experts[1].parameters(),
                  *model.towers[1].parameters()]
        reached = any(p.grad is not None and bool(p.grad.abs().max() > 0) for p in task_1)
        alone = ones and not reached
        said = str(answer).lower()
        if alone and any(word in said for word in ("alone", "separate", "independent")):
            return True, ("each task alone: a gate over one expert always gives it weight 1, and "
                          "task 0's loss reaches neither task 1's expert nor its tower: two "
                          "separate networks in one module.")
        return False, ("train it on task 0 only and look: every gate weight is 1 (one expert to "
                       "mix) and task 1's expert and tower get no gradient from task 0's loss, "
                       f"so nothing is shared (you said {answer!r}).")

    @exercise
    def ex4(answer):
        """Build a CGC gate: write cgc_mix(level, x, t) giving task t's mixed output of an
        ExtractionLayer: softmax(level.task_gates[t](x)) over [shared experts, task t's specific
        experts], in that order."""

        torch.manual_seed(0)
        level = ExtractionLayer(5, n_tasks=3, n_shared=2, n_specific=2, expert_hidden=4)
        x = torch.randn(6, 5)
        with torch.no_grad():
            outputs, _ = level([x] * 4)
            for t in range(3):
                got, why = run_theirs(answer, level, x, t)
                if why:
                    return False, why
                if not tensor_close(got, outputs[t]):
                    return False, (f"task {t}: not the level's output ({shape_hint(got, outputs[t])}"
                                   f"); its gate sees only the 2 shared experts and its own 2, the "
                                   "other tasks' experts are out of its reach.")
        return True, ("every task of the check's level (it has three): each gate mixes the "
                      "shared experts and its task's own, never another task's.")
