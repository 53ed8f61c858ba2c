"""Small shared helpers: seeding for deterministic notebooks and tests, and the training-seed
switch that checks a trained claim on other seeds without touching the data.

Taught in: notebooks/00_tour.ipynb.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

#: The switch: ``CGC_EDU_TRAINING_SEED=k`` adds ``k`` to every training seed (adapter and
#: model initialisation, batch order, dropout) in the library, the notebooks and the tests,
#: while the generated data, the central model and every byte-compared output stay the same.
#: Unset or 0 runs the committed seeds (notebooks/README.md, "The portability rule").
TRAINING_SEED_VARIABLE = "CGC_EDU_TRAINING_SEED"


def training_seed_shift() -> int:
    """The value of the switch ``CGC_EDU_TRAINING_SEED`` (0 when unset)."""
    value = os.environ.get(TRAINING_SEED_VARIABLE, "").strip() or "0"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{TRAINING_SEED_VARIABLE}={value!r}: set it to an integer "
                         "(0 or unset runs the committed seeds)") from None


def training_seed(seed: int) -> int:
    """The seed a training run with nominal seed ``seed`` actually uses: ``seed`` plus the
    switch. Every random step of training (initialisation, batch order, dropout) draws from
    it; data generation never does, so the switch changes the run and not the problem."""
    return int(seed) + training_seed_shift()


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so runs repeat exactly, at the training seed
    ``training_seed(seed)`` (``seed`` itself unless ``CGC_EDU_TRAINING_SEED`` is set).

    Use it before anything a training run draws; build fixed inputs (a batch to compare two
    layers on, a regression problem) from their own ``torch.Generator``, so that they stay
    the same under the switch."""
    seed = training_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def with_knobs(settings, default, knobs: dict, caller: str):
    """``settings`` (or ``default``, a dataclass instance, when it is None) with the keyword
    ``knobs`` put in; a TypeError names any knob the dataclass lacks, and its fields. The
    one way a function that takes ``settings=`` plus keyword knobs merges them."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(default)]
    unknown = sorted(set(knobs) - set(fields))
    if unknown:
        kind = type(default).__name__
        article = "an" if kind[0] in "AEIOU" else "a"
        raise TypeError(f"{caller}() got unknown knob(s) {unknown}; {article} {kind} has {fields}")
    return dataclasses.replace(settings if settings is not None else default, **knobs)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``: how far two computations of the same
    quantity are apart, relative to its size. An exact equivalence (peft = cgc_edu, merged =
    unmerged, from scratch = library) is checked as ``relative_difference(a, b) < tol``: an
    absolute bound such as 1e-5 fails on another CPU's BLAS when the values are large, and
    passes vacuously when they are tiny.

    Taught in: notebooks/01_lora_from_scratch.ipynb
    """
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    if actual.shape != expected.shape:
        raise ValueError(f"relative_difference: shapes {tuple(actual.shape)} and "
                         f"{tuple(expected.shape)} differ; compare the same quantity")
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float((actual - expected).abs().max() / scale)


#: Keyword arguments for ``from_pretrained`` in cgc_edu: the model's own torch forwards, never
#: hub kernels (transformers >= 5.25 swaps some in by default when ``kernels`` is installed,
#: which would fetch code at run time and could run fused blocks around the adapters).
PLAIN_TORCH = {"use_kernels": False}


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off inside the block ("Loading weights" in notebooks and
    test logs), back as they were after it."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def read_manifest(file: Path, fmt: str, parse: Callable[[dict], Any], *, caller: str,
                  kind: str, writer: str, fix: str) -> Any:
    """``parse(meta)`` of the JSON manifest ``file`` whose "format" is ``fmt``: the one reader
    of the folders cgc_edu writes (an adapter config, a OnePlusN manifest). A missing file
    names ``writer``; a corrupt one, or one that ``parse`` finds incomplete, names ``kind``
    and ``fix``."""
    if not file.is_file():
        raise FileNotFoundError(f"{caller}: {file} not found; pass the folder that {writer} wrote.")
    try:
        meta = json.loads(file.read_text())
        if meta.get("format") != fmt:
            raise ValueError(f"format is {meta.get('format')!r}, not {fmt!r}")
        return parse(meta)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{caller}: {file} is not a valid {kind} ({err!r}); {fix}.") from err
