"""Knobs: small widgets where turning a control beats reading a paragraph (ipywidgets),
one module per widget.

Each widget computes something real and small (a few training steps on a tiny fixed problem,
or a closed-form count) when a control moves, redraws one matplotlib figure and shows it as
PNG bytes (so the static book keeps the last picture). Code and tests drive a widget by
setting its controls' ``.value`` and read what it shows from ``.state`` (a dict).

    LoRAKnobs          01  lora                 rank, alpha, rsLoRA -> size of the update and loss
    RouterKnobs        02  router               temperature, top-k, aux-loss coefficient -> tokens per expert
    SeesawKnobs        03  seesaw               loss weight between two tasks -> both losses on the front
    CGCConfigBuilder   05  config_builder       common / specific counts, rank, budget -> mask, ranks, parameters
    ClusterKnobs       06  clusters             number of clusters, linkage -> the tree's cut and 1+N's sets
    CounterfactualGate 08  counterfactual_gate  override one task's gate at inference -> answers, exact match

`base` holds what they share (`Knobs`, `adam_steps`); `override_gate` (behind the last one)
lives in `cgc_edu.course.counterfactual`.

Taught in: notebooks/01_lora_from_scratch.ipynb.
"""
from __future__ import annotations

from .base import Knobs, adam_steps, one_thread, render_png
from .clusters import ClusterKnobs
from .config_builder import CGCConfigBuilder
from .counterfactual_gate import CounterfactualGate
from .lora import LoRAKnobs, lora_regression, lora_scaling, train_lora_layer
from .router import RouterKnobs, clustered_tokens, train_router
from .seesaw import SeesawKnobs, seesaw_front

__all__ = ["LoRAKnobs", "RouterKnobs", "SeesawKnobs", "CGCConfigBuilder", "ClusterKnobs",
           "CounterfactualGate", "Knobs", "lora_scaling", "lora_regression", "train_lora_layer",
           "clustered_tokens", "train_router", "seesaw_front", "render_png", "one_thread",
           "adam_steps"]
