"""What every chapter's self-checks share: the `ChapterChecks` base class, the `exercise`
decorator that turns a check into a method, and the small comparisons the checks use.

A check is a function ``exN(answer, *context) -> (right, why)``: it computes the right
answer from the library (never a number typed in), compares the learner's answer with it
and says why. `exercise` makes it a method of the chapter's ``Checks`` that runs it with
its own random seeds, prints right or not yet and why, and returns a bool. (The machinery
is taught through each chapter's ``Checks``, e.g. ``ChapterChecks.questions``.)
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...adapters.config import AdapterConfig
from ...adapters.layer import CGCLoRALinear


def exercise(check: Callable) -> Callable:
    """``exN(answer, *context) -> (right, why)`` as exercise N of a chapter: the method
    runs the check (its seeds leave the notebook's random state alone), prints
    ``Right (exercise N): why`` or ``Not yet (exercise N): why`` and returns a bool. The
    check's docstring is the exercise's question."""
    number = int(check.__name__.removeprefix("ex"))

    @functools.wraps(check)
    def run(self, answer, *context, **options) -> bool:
        with torch.random.fork_rng(devices=[]):
            right, why = check(answer, *context, **options)
        print(f"{'Right' if right else 'Not yet'} (exercise {number}): {why}")
        return bool(right)

    run.number = number
    return run


class ChapterChecks:
    """One chapter's self-checks: a subclass per chapter sets ``chapter`` and defines its
    exercises as ``@exercise``-decorated ``ex1``, ``ex2``, ... (each a question in its
    docstring and a check in its body)."""

    chapter: str = ""

    @classmethod
    def exercises(cls) -> dict[int, Callable]:
        """{number: the exercise's method}, in order."""
        found = [getattr(cls, name) for name in dir(cls) if name.startswith("ex")]
        return dict(sorted((fn.number, fn) for fn in found if hasattr(fn, "number")))

    def questions(self) -> dict[int, str]:
        """{exercise number: question}, also printed (as plain text: a question's
        ``literal`` is marked for the book only).

        Taught in: notebooks/00_tour.ipynb.
        """
        qs = {n: " ".join(fn.__doc__.replace("``", "").split())
              for n, fn in self.exercises().items()}
        for n, q in qs.items():
            print(f"{n}. {q}")
        return qs

    def __getattr__(self, name: str):
        # reached only for a name the class lacks: say which exercises the chapter has
        if name.startswith("ex") and name[2:].isdigit():
            raise AttributeError(f"chapter {self.chapter} has exercises "
                                 f"{sorted(self.exercises())}, not {int(name[2:])}.")
        raise AttributeError(name)


# ------------------------------------------------------------------ comparing answers
def close(answer, want, tol=1e-6) -> bool:
    """``answer`` has ``want``'s shape and is within ``tol`` of it (False if not numbers)."""
    try:
        a = np.asarray(answer, dtype=float)
        w = np.asarray(want, dtype=float)
    except (TypeError, ValueError):
        return False
    return a.shape == w.shape and bool(np.allclose(a, w, atol=tol, rtol=0))


def same_text(answer, want) -> bool:
    """``answer`` is a string equal to ``want`` but for case and surrounding spaces."""
    return isinstance(answer, str) and answer.strip().lower() == str(want).strip().lower()


def stored_results_folder(start=None) -> Path:
    """The study's ``results/`` folder the exercises read: the first of ``start`` (or the
    working directory) and its parents that holds ``results/results.csv``. A notebook runs in
    ``notebooks/``, so the repository's ``results/`` is found whether cgc_edu is installed
    editable or as a wheel (which ships no results)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "results" / "results.csv").is_file():
            return folder / "results"
    raise FileNotFoundError(
        f"no results/results.csv in {here} or above it: run the notebook from the repository "
        "(its notebooks/ folder), or pass the study's table yourself: "
        "check.exN(answer, results=load_results(path))")


# ------------------------------------------------------------------ exercises that build
# Each takes the learner's function, runs it beside the library's version on inputs made
# here (fixed seeds), and says where it first differs: a hint, never the solution's code.
def run_theirs(fn, *args):
    """(value, None), or (None, why) when the learner's function raises."""
    if not callable(fn):
        return None, f"pass your function itself (got {type(fn).__name__})."
    try:
        return fn(*args), None
    except Exception as error:  # the learner's code: report, never crash the check
        return None, f"your function raised {type(error).__name__}: {error}"


def tensor_close(got, want, rtol=1e-4, atol=1e-5) -> bool:
    """``got`` is a tensor of ``want``'s shape and close to it."""
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and bool(torch.allclose(got.detach().double(), want.detach().double(),
                                    rtol=rtol, atol=atol)))


def trained_looking(*layers):
    """A non-zero B and a non-uniform gate on each layer, so that every expert, every gate
    weight and the scaling show in its output (fresh layers are the base layer)."""
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_()
            if layer.gate.learned:
                layer.gate.weight.normal_()
    return layers[0]


def trained_looking_layer(config: AdapterConfig, seed: int = 0) -> CGCLoRALinear:
    """A standalone 6 -> 5 adapter layer of ``config``, `trained_looking`."""
    torch.manual_seed(seed)
    return trained_looking(CGCLoRALinear(nn.Linear(6, 5), config))


def shape_hint(got, want) -> str:
    """What the learner's function returned, beside the library's shape."""
    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    return f"it returned {shape}, the library {tuple(want.shape)}"
