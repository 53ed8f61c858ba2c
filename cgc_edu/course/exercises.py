"""Exercises that check themselves: ``check = Checks("05")``, then ``check.ex1(answer)``.

Each check computes the right answer from the library (never a number typed in here), compares
the learner's answer with it, prints right or wrong and why, and returns a bool. Some checks
read the learner's own objects (``check.ex1(answer, recording)``): the answer is then judged
on their run, not ours. ``check.questions()`` prints the chapter's questions.

Taught in: notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from ..adapters.config import AdapterConfig, adapter_parameter_count
from ..adapters.injection import adapter_layers, add_adapters
from ..adapters.layer import CGCLoRALinear
from ..data.synthetic import make_correlated_tasks
from ..data.tinytasks import TASKS, make_tiny_tasks
from ..framework.affinity import adjusted_rand_index, cluster_tasks, prior_clusters
from ..methods import method_of
from ..moe import MoELayer, load_balancing_loss, top_k_gating
from ..models.central import load_central_model
from ..mtl import CGC, MMoE, ExtractionLayer
from ..study.map_report import compare, read_map, verdicts
from ..study.statistics import load_results, paired_comparison, summary
from ..train.finetune import chat_format, method_config
from .counterfactual import override_weights
from .plots import common_share_table

#: chapter -> exercise number -> check(answer, *context) -> (right, why)
_CHECKS: dict[str, dict[int, Callable]] = {}


def _check(chapter: str, number: int):
    def register(fn):
        _CHECKS.setdefault(chapter, {})[number] = fn
        return fn
    return register


def _close(answer, want, tol=1e-6) -> bool:
    try:
        a = np.asarray(answer, dtype=float)
        w = np.asarray(want, dtype=float)
    except (TypeError, ValueError):
        return False
    return a.shape == w.shape and bool(np.allclose(a, w, atol=tol, rtol=0))


def _same_text(answer, want) -> bool:
    return isinstance(answer, str) and answer.strip().lower() == str(want).strip().lower()


class Checks:
    """The self-checks of one chapter: ``Checks("01").ex2(answer)`` prints right / wrong and
    why, and returns True or False. ``questions()`` prints what each exercise asks.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """

    def __init__(self, chapter: str):
        chapter = f"{int(chapter):02d}" if str(chapter).isdigit() else str(chapter)
        if chapter not in _CHECKS:
            raise ValueError(f"Checks: no exercises for chapter {chapter!r}; choose one of "
                             f"{sorted(_CHECKS)}.")
        self.chapter = chapter

    def questions(self) -> dict[int, str]:
        """{exercise number: question}, also printed."""
        qs = {n: " ".join(fn.__doc__.split()) for n, fn in sorted(_CHECKS[self.chapter].items())}
        for n, q in qs.items():
            print(f"{n}. {q}")
        return qs

    def __getattr__(self, name: str):
        if name.startswith("ex") and name[2:].isdigit():
            checks = _CHECKS[self.chapter]
            number = int(name[2:])
            if number not in checks:
                raise AttributeError(f"chapter {self.chapter} has exercises {sorted(checks)}, "
                                     f"not {number}.")
            return lambda answer, *context: self._run(checks[number], number, answer, *context)
        raise AttributeError(name)

    def _run(self, fn, number, answer, *context) -> bool:
        with torch.random.fork_rng(devices=[]):  # a check's seeds leave the notebook's RNG alone
            right, why = fn(answer, *context)
        print(f"{'Right' if right else 'Not yet'} (exercise {number}): {why}")
        return bool(right)


# ------------------------------------------------------------------ 00 tour
@_check("00", 1)
def _tour_rows(answer):
    """make_tiny_tasks(seed=0, n_train=100, n_low=10): how many training rows does the suite
    hold in all?"""

    rows = make_tiny_tasks(seed=0, n_train=100, n_low=10, n_validation=0, n_test=0)["train"]
    want = len(rows)
    counts = pd.Series(rows["task"]).value_counts()
    low = sorted(counts.index[counts == 10])
    if answer == want:
        return True, (f"{want}: {len(TASKS) - len(low)} tasks with n_train = 100 rows and the "
                      f"{len(low)} low-data tasks {low} with n_low = 10.")
    return False, (f"not every task gets n_train rows: the low-data tasks {low} get n_low; "
                   f"you said {answer!r}.")


@_check("00", 2)
def _tour_prompt(answer):
    """With make_tiny_tasks(..., name_in_prompt=True), what is the prompt of task `reverse` on
    the word `cab`?"""

    row = make_tiny_tasks(seed=0, tasks=["reverse"], n_train=1, n_low=1, n_validation=0,
                          n_test=0, name_in_prompt=True)["train"][0]
    word = row["target"][::-1]
    want = row["prompt"].replace(word, "cab")
    if answer == want:
        return True, f"{want!r}: the task's name, a colon, the word and '='."
    return False, (f"the prompt carries the task's name before the word: it is {want!r} "
                   f"(you gave {answer!r}).")


# ------------------------------------------------------------------ 01 LoRA
@_check("01", 1)
def _lora_rank(answer):
    """Plant a rank-4 change (torch.randn(d_out, 4) @ torch.randn(4, d_in)). What is the smallest
    LoRA rank that can reach the noise floor?"""
    g = torch.Generator().manual_seed(0)
    want = int(torch.linalg.matrix_rank(torch.randn(24, 4, generator=g) @ torch.randn(4, 32, generator=g)))
    if answer == want:
        return True, f"B A has rank at most r, and the change has rank {want}: r = {want} is the least."
    if isinstance(answer, int) and answer < want:
        return False, (f"rank {answer} cannot express a rank-{want} change: B A has rank at most "
                       f"r, so the loss stays above the noise floor.")
    return False, (f"rank {answer} reaches the floor too, but it is not the smallest: the change "
                   f"has rank {want}.")


@_check("01", 2)
def _lora_scaling(answer):
    """With alpha = 16 for every rank, what are the scalings at rank 1 and rank 32? Answer a
    pair (s_1, s_32)."""

    want = [CGCLoRALinear(nn.Linear(4, 4), AdapterConfig.lora(rank=r, alpha=16)).scaling
            for r in (1, 32)]
    if _close(answer, want):
        return True, (f"alpha/r = {want[0]:g} and {want[1]:g}: the higher rank gets the smaller "
                      "factor, which offsets its update's r rank-one terms, so with Adam the "
                      "updates grow at comparable speeds, not equal ones (rsLoRA's "
                      "alpha/sqrt(r) shrinks it less; measure it with LoRAKnobs).")
    if _close(answer, [16 / math.sqrt(1), 16 / math.sqrt(32)]):
        return False, "that is rsLoRA's alpha/sqrt(r); the library's LoRA scales by alpha/r."
    return False, (f"the scaling is alpha / r: for alpha = 16, {want[0]:g} at r=1 and "
                   f"{want[1]:g} at r=32.")


@_check("01", 3)
def _lora_count(answer):
    """Trainable numbers of LoRA at rank 8 on the seven projections of one Llama-7B block
    (q, k, v, o: 4096 x 4096; gate, up: 4096 -> 11008; down: 11008 -> 4096)?"""

    shapes = [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
    want = sum(adapter_parameter_count(AdapterConfig.lora(rank=8), i, o)["total"] for i, o in shapes)
    full = sum(i * o for i, o in shapes)
    if answer == want:
        return True, f"{want:,}: r (d_in + d_out) per projection, {100 * want / full:.2f}% of the block."
    if answer == full:
        return False, f"{full:,} is the whole block (d_in d_out each); LoRA trains r (d_in + d_out)."
    return False, f"sum r (d_in + d_out) over the seven projections; you are {answer - want:+,} off."


# ------------------------------------------------------------------ 02 mixture of experts
@_check("02", 1)
def _moe_collapse(answer):
    """With E = 8 experts, what is the Switch load-balancing loss when every token goes to
    expert 0 with probability 1, and when routing is perfectly uniform? Answer (collapsed, uniform)."""

    E, n = 8, 16
    collapsed = load_balancing_loss(torch.eye(E)[[0] * n], torch.zeros(n, 1, dtype=torch.long))
    uniform = load_balancing_loss(torch.full((n, E), 1 / E), torch.arange(n).remainder(E)[:, None])
    want = [float(collapsed), float(uniform)]
    if _close(answer, want):
        return True, f"E = {want[0]:g} when collapsed, 1 when balanced: E sum_e f_e P_e."
    return False, (f"E sum_e f_e P_e: collapse puts f_0 = P_0 = 1, giving E = {want[0]:g}; "
                   f"uniform routing has f_e = P_e = 1/E, giving {want[1]:g}.")


@_check("02", 2)
def _moe_topk(answer):
    """Router probabilities [0.5, 0.3, 0.2] and top-2 with renormalisation: what weights do the
    three experts get?"""

    want = top_k_gating(torch.tensor([[0.5, 0.3, 0.2]]), k=2)[0][0].tolist()
    if _close(answer, want, 1e-3):
        return True, f"{[round(w, 3) for w in want]}: the top two, divided by their sum 0.8."
    if _close(answer, [0.5, 0.3, 0.0], 1e-3):
        return False, "those are the raw probabilities; renormalising divides them by their sum."
    return False, f"keep the two largest and divide by their sum: {[round(w, 3) for w in want]}."


@_check("02", 3)
def _moe_k2_gradient(answer):
    """With k = 2 and renormalize=True, does the task loss still send the router's weights a
    gradient? Answer True or False, then measure it on a MoELayer."""

    torch.manual_seed(0)
    layer = MoELayer(4, n_experts=3, d_hidden=4, k=2, renormalize=True)
    layer(torch.randn(16, 4)).pow(2).mean().backward()
    grad = float(layer.router.proj.weight.grad.abs().max())
    want = grad > 1e-6
    if answer is want:
        return True, (f"{want}: the largest entry is {grad:.2g}. The two kept weights are "
                      "p_i / (p_i + p_j), a ratio the router moves; only k = 1 makes it p / p = 1.")
    return False, (f"measure it: the largest entry of layer.router.proj.weight.grad is {grad:.2g}. "
                   "With two kept experts the weights are a ratio of their probabilities, "
                   f"which the router changes, so the answer is {want}.")


@_check("02", 5)
def _moe_fool_the_loss(answer):
    """Fool the balance loss: give router probabilities probs (tokens x 4, rows summing to 1)
    whose top-1 choices send at least 3/4 of the tokens to one expert while the Switch loss
    E sum_e f_e P_e is below 1."""

    if not isinstance(answer, torch.Tensor) or answer.ndim != 2 or answer.shape[1] != 4:
        return False, "answer a tensor of probabilities shaped (tokens, 4)."
    probs = answer.detach().double()
    if (probs < -1e-9).any() or (probs.sum(-1) - 1).abs().max() > 1e-6:
        return False, "each row must be probabilities: non-negative and summing to 1."
    choice = probs.argmax(-1, keepdim=True)
    share = float(torch.bincount(choice[:, 0], minlength=4).max()) / len(probs)
    loss = float(load_balancing_loss(probs, choice))
    if share < 0.75:
        return False, (f"the busiest expert gets {share:.0%} of the tokens' top-1 choices; "
                       "send at least three quarters to one expert.")
    if loss >= 1:
        return False, (f"the loss is {loss:.3f}, not below 1: keep the busy expert's mean "
                       "probability P low (its tokens choose it by a hair, the other tokens "
                       "give it almost nothing).")
    return True, (f"{share:.0%} of the tokens on one expert at loss {loss:.3f} < 1: the loss "
                  "sees the load only through P, so its value does not certify a balance.")


# ------------------------------------------------------------------ 03 multi-task learning
@_check("03", 1)
def _mtl_correlation(answer):
    """The tasks of make_correlated_tasks(20_000, -0.7, in_features=20): what is their label
    correlation (to two decimals)?"""

    y = make_correlated_tasks(20_000, -0.7, in_features=20)[1].numpy()
    want = float(np.corrcoef(y.T)[0, 1])
    if _close(answer, want, 0.02):
        return True, (f"{want:+.3f}: close to the cosine -0.7; the sine terms make it differ a "
                      "little (see the module doc of cgc_edu.data.synthetic).")
    return False, f"measure it with np.corrcoef(y.T)[0, 1]: it is {want:+.3f}."


@_check("03", 2)
def _mtl_cgc_gate(answer):
    """CGC(20, 2, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=8): over how many
    experts does each task's gate mix?"""

    model = CGC(20, 2, n_shared=2, n_specific=2, expert_hidden=8, tower_hidden=8)
    want = model.gate_weights(torch.randn(3, 20))[0].shape[1]
    if answer == want:
        return True, f"{want}: the 2 shared experts and the task's own 2, never the other task's."
    return False, (f"task t's gate mixes the shared experts and task t's own: {want} (you said "
                   f"{answer}); the other task's experts are out of its reach.")


@_check("03", 3)
def _mtl_cgc_alone(answer):
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


# ------------------------------------------------------------------ 04 MoE-LoRA
@_check("04", 1)
def _moelora_gate_cost(answer):
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


@_check("04", 2)
def _moelora_one_expert(answer):
    """What is AdapterConfig.moe_lora(n_experts=1)? Name the method."""

    config = AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=1)
    want = method_of(config)
    if _same_text(answer, want):
        return True, (f"{want}: one expert, its gate weight is always 1 (has_learned_gate="
                      f"{config.has_learned_gate}, needs_task_ids={config.needs_task_ids}).")
    return False, (f"one expert shared by all tasks, gate weight always 1: that is {want} "
                   f"(you said {answer!r}).")


@_check("04", 3)
def _moelora_uniform(answer):
    """MoE-LoRA with gate="uniform": does the layer's output depend on the task id? (True/False)"""

    config = AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=4, gate="uniform")
    want = config.needs_task_ids
    if answer is want:
        return True, ("no: every task gets the same 1/4 on each expert, so the bank is one "
                      "shared LoRA and the conflict between tasks returns.")
    return False, ("a uniform gate gives every task the same weights over the same shared "
                   f"experts; needs_task_ids is {want}.")


# ------------------------------------------------------------------ 05 CGC-LoRA
@_check("05", 1)
def _cgc_moelora(answer):
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


@_check("05", 2)
def _cgc_uniform_share(answer):
    """The ablation without a gate: cgc_lora(rank=6, n_tasks=8, gate="uniform"). What is a
    task's common share (gate mass on the common experts), before and after training?"""

    layer = CGCLoRALinear(nn.Linear(8, 8), AdapterConfig.cgc_lora(rank=6, n_tasks=8, gate="uniform"))
    want = float(layer.gate_weights(torch.tensor([5]))[0, :layer.config.n_common].sum())
    if _close(answer, want, 1e-3):
        return True, (f"{want:.3f} always: a uniform gate has no parameters, so training cannot "
                      "move it.")
    return False, (f"2 common of 3 allowed experts at 1/3 each: {want:.3f}, and it never changes "
                   "(the uniform gate has no parameters).")


@_check("05", 3)
def _cgc_total_budget(answer):
    """budget="total", 8 tasks, 2 common + 1 specific expert: the smallest rank that divides,
    and the trainable numbers of one 128 x 128 projection (gate aside)? Answer (rank, count)."""

    rank = next(r for r in range(1, 1000)
                if r % AdapterConfig.cgc_lora(rank=10, n_tasks=8, budget="total").n_experts == 0)
    count = adapter_parameter_count(AdapterConfig.cgc_lora(rank=rank, n_tasks=8, budget="total"),
                                    128, 128)["experts"]
    try:
        right = int(answer[0]) == rank and int(answer[1]) == count
    except (TypeError, ValueError, IndexError):
        right = False
    if right:
        return True, f"rank {rank} (E = {rank} experts of rank 1): {count:,} numbers, one LoRA of rank {rank}."
    return False, (f"E = 2 + 8 x 1 = 10 experts, so the rank must be a multiple of 10: rank "
                   f"{rank} gives r_e = 1 and E r_e (128 + 128) = {count:,}.")


# ------------------------------------------------------------------ 06 1+N
def _designed_clusters():

    return prior_clusters(make_tiny_tasks(seed=0, n_train=1, n_low=1, n_validation=0, n_test=0)["train"])


@_check("06", 1)
def _onen_route(answer):
    """With the designed clusters (prior_clusters), where does a request for `ends` go?
    Answer (cluster name, local task id)."""
    clusters = _designed_clusters()
    cluster = next(c for c, tasks in clusters.items() if "ends" in tasks)
    want = (cluster, clusters[cluster].index("ends"))
    if tuple(answer) == want if isinstance(answer, (tuple, list)) else False:
        return True, f"{want}: the task's cluster, and its position inside that cluster."
    return False, (f"the router looks up the cluster ({cluster}: {clusters[cluster]}) and "
                   f"renumbers the task inside it: {want}.")


@_check("06", 2)
def _onen_peft_rank(answer):
    """A cluster of 3 tasks served with cgc_lora(rank=12, n_common=3, n_specific=1,
    budget="total"): what rank does export_peft give one task's LoRA?"""

    config = AdapterConfig.cgc_lora(rank=12, alpha=24, n_tasks=3, n_common=3, n_specific=1,
                                    budget="total")
    want = config.experts_per_task * config.expert_rank
    if answer == want:
        return True, f"|S_t| r_e = {config.experts_per_task} x {config.expert_rank} = {want}."
    return False, (f"a task uses its |S_t| = {config.experts_per_task} experts of rank "
                   f"{config.expert_rank} (12 / E with E = {config.n_experts}): rank {want}.")


@_check("06", 3)
def _onen_memory(answer):
    """1+N over the 8 tasks: how many copies of the central model's weights are in memory, and
    how many would one merged model per task need? Answer (1+N copies, merged copies)."""
    clusters = _designed_clusters()
    want = (1, sum(len(t) for t in clusters.values()))
    if _close(answer, want):
        return True, f"{want}: the N sets are views of one base; merging copies it per task."
    return False, f"the sets share one base's tensors; merged serving needs one copy per task: {want}."


# ------------------------------------------------------------------ 07 experiments
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


def _named(results=None):
    """The stored study's instruction-prompt rows (or the learner's own table)."""
    if results is None:
        results = load_results(stored_results_folder())
    return results[results["setting"] == "named"] if "setting" in results else results


def _stored_stats(results=None):

    return summary(_named(results))


@_check("07", 1)
def _exp_spread(answer, results=None):
    """In the stored study (instruction prompts), which task has the largest seed spread (std)
    under CGC-LoRA?"""
    stats = _stored_stats(results)
    cgc = stats[(stats["method"] == "cgc_lora") & (stats["task"] != "average")].set_index("task")
    want = cgc["std"].idxmax()
    if _same_text(answer, want):
        return True, f"{want} (std {100 * cgc['std'].max():.1f} points)."
    return False, (f"read statistics.summary(results) for cgc_lora: the largest std is {want}'s "
                   f"({100 * cgc['std'].max():.1f} points), not {answer!r}.")


@_check("07", 2)
def _exp_best(answer, results=None):
    """In the stored study (instruction prompts), which method has the best average exact
    match? (Its key, e.g. 'cgc_lora'.)"""
    stats = _stored_stats(results)
    average = stats[stats["task"] == "average"].set_index("method")["mean"]
    want = average.idxmax()
    if _same_text(answer, want):
        return True, f"{want} ({100 * average.max():.0f} % on average over tasks and seeds)."
    mine = average.get(str(answer))
    hint = f"; {answer} has {100 * mine:.0f} %" if mine is not None else ""
    return False, f"the best average is {want}'s ({100 * average.max():.0f} %){hint}."


@_check("07", 3)
def _exp_wins(answer, results=None):
    """On how many seeds does CGC-LoRA beat the independent models ('separate'), and on how
    many does it lose? Answer a pair (wins, losses)."""

    pair = paired_comparison(_named(results), "cgc_lora", "separate")
    want = (pair["wins"], pair["losses"])
    if _close(answer, want):
        verdict = ("CGC-LoRA beats the independent models here" if pair["ci_low"] > 0 else
                   "the independent models beat CGC-LoRA here" if pair["ci_high"] < 0 else
                   "no clear winner: the bootstrap interval contains 0")
        return True, (f"{want} of {pair['n_seeds']} seeds, mean {100 * pair['mean_diff']:+.1f} "
                      f"points: {verdict}.")
    return False, (f"statistics.paired_comparison(results, 'cgc_lora', 'separate') pairs the "
                   f"seeds: {want[0]} wins and {want[1]} losses, not {answer!r}.")


# ------------------------------------------------------------------ 08 gate lab
@_check("08", 1)
def _lab_layer(answer, recording):
    """In which transformer layer does `last` rely most on its own expert (lowest common
    share)? Pass your recording: check.ex1(answer, recording)."""

    values, tasks, layers = common_share_table(recording, step=-1)
    want = layers[int(np.argmin(values[tasks.index("last")]))]
    if _same_text(answer, want):
        return True, f"{want}: the lowest common share of `last` in your recording."
    return False, (f"plots.common_share_table(recording) row 'last': its lowest value is in "
                   f"{want}.")


@_check("08", 2)
def _lab_uniform(answer):
    """The ablation without a gate, cgc_lora(rank=6, n_tasks=4, gate="uniform"): what weight does
    the inspector show on each allowed expert, at any step?"""

    layer = CGCLoRALinear(nn.Linear(8, 8), AdapterConfig.cgc_lora(rank=6, n_tasks=4, gate="uniform"))
    g = layer.gate_weights(torch.tensor([0]))[0]
    want = float(g[g > 0][0])
    if _close(answer, want, 1e-3):
        return True, f"{want:.3f} on each of the 3 allowed experts, fixed: one snapshot says it all."
    return False, f"a uniform gate spreads 1 over |S_t| = 3 experts: {want:.3f} each, at every step."


@_check("08", 3)
def _lab_zero(answer):
    """A task's learned gate is [0.5, 0.3, 0, 0.2, 0] over 5 experts. What are its weights after
    override_gate(..., "zero:0")?"""

    learned = torch.tensor([[0.5, 0.3, 0.0, 0.2, 0.0]])
    fake_gate = lambda ids: learned.expand(len(ids), -1)          # noqa: E731 - a fixed gate
    want = override_weights(fake_gate, AdapterConfig.cgc_lora(rank=6, n_tasks=3), 1, "zero:0").tolist()
    if _close(answer, want, 1e-3):
        return True, f"{[round(w, 3) for w in want]}: expert 0 out, the rest divided by 0.5."
    return False, (f"set expert 0 to 0 and divide the rest by their sum (0.5): "
                   f"{[round(w, 3) for w in want]}.")


# ------------------------------------------------------------------ 09 your model
@_check("09", 1)
def _your_count(answer):
    """How many numbers does method_config("cgc_lora", n_tasks=2, rank=8, alpha=16) train on
    the central model? Add up adapter_parameter_count over every adapted projection (its
    d_in and d_out), before you let the model count them."""
    model = add_adapters(load_central_model(), method_config("cgc_lora", n_tasks=2, rank=8,
                                                             alpha=16))
    want = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if _close(answer, want, 0.5):
        return True, (f"{want:,}: experts r_e (d_in + d_out) each, plus the gates, on "
                      f"{len(adapter_layers(model))} projections.")
    return False, (f"sum adapter_parameter_count(config, layer.in_features, "
                   f"layer.out_features)['total'] over adapter_layers(model): {want:,}, not "
                   f"{answer!r}.")


@_check("09", 2)
def _your_csv(answer, train_data):
    """Write the training rows as a CSV with columns question, answer and kind, and load
    it with load_task_data(..., prompt_column="question", target_column="answer",
    task_column="kind"). Pass what you loaded: check.ex2(from_csv, train_data)."""
    keys = ("prompt", "target", "task")
    try:
        got = [list(answer[k]) for k in keys]
    except (KeyError, TypeError) as err:
        return False, (f"pass the dataset load_task_data returned (columns {keys}); "
                       f"reading it failed: {err}.")
    want = [list(train_data[k]) for k in keys]
    for k, g, w in zip(keys, got, want):
        if g != w:
            first = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            return False, (f"column {k!r} differs from the JSONL's at row {first} "
                           f"({len(g)} rows loaded, {len(w)} expected).")
    return True, f"the same {len(want[0])} rows, in the same order, from the CSV."


@_check("09", 3)
def _your_qwen(answer):
    """Size Qwen2.5-0.5B (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 key-value
    heads, vocabulary 151,936, tied embeddings) on the meta device: how many parameters, in
    millions?"""
    with torch.device("meta"):
        qwen = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864,
            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
            tie_word_embeddings=True))
    want = sum(p.numel() for p in qwen.parameters()) / 1e6
    if _close(answer, want, 1.0):
        return True, f"{want:.0f} M parameters ({2 * want * 1e6 / 2 ** 30:.2f} GiB in bf16)."
    return False, (f"build Qwen2ForCausalLM(Qwen2Config(...)) under torch.device('meta') "
                   f"and count: {want:.0f} M, not {answer!r}. Tied embeddings count once.")


# ------------------------------------------------------------------ 11 which method, when
def _complete_cells(stored):
    names = list(dict.fromkeys(stored["seeds"]["cell"]))
    return [(n, v) for n in names for v in [verdicts(stored, n)] if v["complete"]]


@_check("11", 1)
def _map_rule(answer, stored=None):
    """Write the map's rule yourself: ahead(a, b) takes two methods' scores in one cell as
    dicts {seed: score} and returns True when a is ahead of b on every seed they share,
    paired by seed. Pass the function: check.ex1(ahead)."""
    if not callable(answer):
        return False, (f"pass a function ahead(a, b) -> bool, not a "
                       f"{type(answer).__name__}.")
    stored = read_map() if stored is None else stored
    seeds, tried = stored["seeds"], 0
    for name, _ in _complete_cells(stored):
        cell = seeds[seeds["cell"] == name]
        scores = {m: dict(zip(g["seed"], g["average"])) for m, g in cell.groupby("method")}
        for a in scores:
            for b in scores:
                if a == b:
                    continue
                want = compare(cell, a, b)["verdict"] == "ahead"
                try:
                    got = bool(answer(dict(scores[a]), dict(scores[b])))
                except Exception as err:  # the learner's code: report, do not crash
                    return False, f"ahead(...) raised {type(err).__name__}: {err}."
                tried += 1
                if got != want:
                    diffs = {s: round(100 * (scores[a][s] - scores[b][s]), 1)
                             for s in sorted(scores[a]) if s in scores[b]}
                    return False, (f"in {name}, {a} against {b}: paired differences "
                                   f"{diffs} (points), so the rule says "
                                   f"{'ahead' if want else 'not ahead'}; yours says "
                                   f"{'ahead' if got else 'not ahead'}. Hint: every "
                                   "difference must be above 0.")
    return True, f"your rule agrees with map_report.compare on all {tried} ordered pairs."


@_check("11", 2)
def _map_pick(answer, stored=None):
    """Your problem: 8 tasks, prompts that name the task, a total budget of rank 48
    (TinyTasks' cell tinytasks_named_r48). Which method does the map pick, and is the pick
    beyond the seed spread? Answer a pair (method key, True or False)."""
    stored = read_map() if stored is None else stored
    v = verdicts(stored, "tinytasks_named_r48")
    want = (v["winner"], bool(v["beyond_spread"]))
    if (isinstance(answer, (tuple, list)) and len(answer) == 2
            and _same_text(answer[0], want[0]) and bool(answer[1]) == want[1]):
        level = ", ".join(v["level"]) or "no other method"
        return True, (f"{want[0]} ({100 * v['mean']:.1f} %); nothing separates it from "
                      f"{level}." if not want[1] else
                      f"{want[0]}, ahead of every other method on every seed.")
    return False, (f"read verdicts(stored, 'tinytasks_named_r48'): its winner is "
                   f"{want[0]}, beyond the spread: {want[1]}. Answer (method, bool).")


@_check("11", 3)
def _map_cgc_count(answer, stored=None):
    """In how many of the map's cells is CGC-LoRA ahead of independent LoRAs ('separate')
    by the map's rule, and in how many behind? Answer a pair (ahead, behind)."""
    stored = read_map() if stored is None else stored
    cells = _complete_cells(stored)
    verdict = [v["versus"]["separate"]["verdict"] for _, v in cells]
    want = (verdict.count("ahead"), verdict.count("behind"))
    if _close(answer, want):
        return True, (f"{want[0]} ahead, {want[1]} behind, {len(cells) - sum(want)} where "
                      f"nothing separates them, of {len(cells)} cells.")
    return False, ("count verdicts(stored, cell)['versus']['separate']['verdict'] over the "
                   f"cells: {want}, not {answer!r}.")


# ------------------------------------------------------------------ exercises that build
# Each takes the learner's function, runs it beside the library's version on inputs made
# here (fixed seeds), and says where it first differs: a hint, never the solution's code.
def _run_theirs(fn, *args):
    """(value, None), or (None, why) when the learner's function raises."""
    if not callable(fn):
        return None, f"pass your function itself (got {type(fn).__name__})."
    try:
        return fn(*args), None
    except Exception as error:  # the learner's code: report, never crash the check
        return None, f"your function raised {type(error).__name__}: {error}"


def _tensor_close(got, want, rtol=1e-4, atol=1e-5) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and bool(torch.allclose(got.detach().double(), want.detach().double(),
                                    rtol=rtol, atol=atol)))


def _trained_looking(*layers):
    """A non-zero B and a non-uniform gate on each layer, so that every expert, every gate
    weight and the scaling show in its output (fresh layers are the base layer)."""
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_()
            if layer.gate.learned:
                layer.gate.weight.normal_()
    return layers[0]


def _shape_hint(got, want) -> str:
    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    return f"it returned {shape}, the library {tuple(want.shape)}"


@_check("00", 3)
def _tour_rules(answer):
    """Build the tasks: write answer(task, word) giving the target of each TinyTasks task (e.g.
    answer("rotate", "cab") == "abc"); the check runs it on a fresh suite's rows."""

    rows = make_tiny_tasks(seed=5, n_train=12, n_low=12, n_validation=0, n_test=0,
                           name_in_prompt=True)["train"]
    for row in rows:
        word = row["prompt"].split(":", 1)[1][:-1]          # "task:word=" -> word
        got, why = _run_theirs(answer, row["task"], word)
        if why:
            return False, why
        if got != row["target"]:
            return False, (f"{row['task']}({word!r}) should be {row['target']!r}, yours gave "
                           f"{got!r}; chapter 00's table of tasks says what each one does.")
    return True, f"all {len(rows)} rows of all {len(TASKS)} tasks, as make_tiny_tasks writes them."


@_check("01", 4)
def _lora_forward(answer):
    """Build LoRA: write lora_forward(x, W0, A, B, scaling) -> x W0^T + scaling * x A^T B^T
    (x (batch, d_in), W0 (d_out, d_in), A (r, d_in), B (d_out, r)); the check compares it with
    cgc_edu's layer holding the same weights."""

    torch.manual_seed(0)
    config = AdapterConfig.lora(rank=3, alpha=12)
    layer = _trained_looking(CGCLoRALinear(nn.Linear(7, 5, bias=False), config))
    x = torch.randn(4, 7)
    W0, A, B = layer.base_layer.weight, layer.lora_A[0], layer.lora_B[0]
    want = layer(x).detach()
    got, why = _run_theirs(answer, x, W0.detach(), A.detach(), B.detach(), layer.scaling)
    if why:
        return False, why
    if _tensor_close(got, want):
        return True, ("your output equals CGCLoRALinear's with one expert: LoRA is the base "
                      "plus a scaled rank-r path.")
    if isinstance(got, torch.Tensor) and got.shape == want.shape:
        base = x @ W0.detach().T
        if _tensor_close(got, base + (x @ A.detach().T @ B.detach().T)):
            return False, f"the low-rank path is missing its scaling alpha / r = {layer.scaling:g}."
        if _tensor_close(got, base):
            return False, "that is the frozen layer alone: add the low-rank path x A^T B^T."
    return False, f"not the layer's output ({_shape_hint(got, want)}); A maps d_in to r first."


@_check("02", 4)
def _moe_sparse(answer):
    """Build sparse dispatch: write sparse_moe(layer, x) for a MoELayer that runs each expert
    only on the tokens routed to it and returns what layer(x) returns (x (tokens, d_model);
    routing = layer.router(x) gives .indices and .weights)."""

    torch.manual_seed(0)
    layer = MoELayer(6, n_experts=4, d_hidden=8, k=2).eval()
    x = torch.randn(20, 6)
    with torch.no_grad():
        want = layer(x)
        routing = layer.router(x)
    routed = [int((routing.indices == e).any(-1).sum()) for e in range(4)]
    seen = [0] * 4
    hooks = [expert.register_forward_hook(
        lambda _m, args, _o, e=e: seen.__setitem__(e, seen[e] + args[0].reshape(-1, 6).shape[0]))
        for e, expert in enumerate(layer.experts)]
    try:
        with torch.no_grad():
            got, why = _run_theirs(answer, layer, x)
    finally:
        for hook in hooks:
            hook.remove()
    if why:
        return False, why
    if not _tensor_close(got, want):
        return False, (f"not layer(x) ({_shape_hint(got, want)}): each token's output is the "
                       "sum over its k experts of weight x expert(token).")
    if seen != routed:
        return False, (f"right output, but the experts saw {seen} tokens and were routed "
                       f"{routed}: run expert e on x[tokens routed to e] only.")
    return True, ("equal to the dense layer, each expert run on its own tokens only: k / E of "
                  "the dense layer's expert compute.")


@_check("03", 4)
def _mtl_cgc_mix(answer):
    """Build a CGC gate: write cgc_mix(level, x, t) giving task t's mixed output of an
    ExtractionLayer: softmax(level.task_gates[t](x)) over [shared experts, task t's specific
    experts], in that order."""

    torch.manual_seed(0)
    level = ExtractionLayer(5, n_tasks=3, n_shared=2, n_specific=2, expert_hidden=4)
    x = torch.randn(6, 5)
    with torch.no_grad():
        outputs, _ = level([x] * 4)
        for t in range(3):
            got, why = _run_theirs(answer, level, x, t)
            if why:
                return False, why
            if not _tensor_close(got, outputs[t]):
                return False, (f"task {t}: not the level's output ({_shape_hint(got, outputs[t])}"
                               f"); its gate sees only the 2 shared experts and its own 2, the "
                               "other tasks' experts are out of its reach.")
    return True, "all three tasks: a gate per task over the shared experts and its own."


def _moelora_layer(config, seed=0):
    """A standalone 6 -> 5 layer, `_trained_looking`."""
    torch.manual_seed(seed)
    return _trained_looking(CGCLoRALinear(nn.Linear(6, 5), config))


@_check("04", 4)
def _moelora_update(answer):
    """Build MoE-LoRA's update: write moe_lora_update(layer, x, t) = scaling * sum_e g_t,e
    B_e A_e x for x (batch, d_in) (layer.lora_A (E, r_e, d_in), layer.lora_B (E, d_out, r_e),
    layer.gate_weights(torch.tensor([t])) (1, E)); the check compares with the layer's own."""

    layer = _moelora_layer(AdapterConfig.moe_lora(rank=8, alpha=16, n_tasks=3, n_experts=4))
    x = torch.randn(3, 6)
    with torch.no_grad():
        for t in range(3):
            want = layer(x, task_ids=torch.full((3,), t)) - layer.base_layer(x)
            got, why = _run_theirs(answer, layer, x, t)
            if why:
                return False, why
            if not _tensor_close(got, want):
                return False, (f"task {t}: not the layer's update ({_shape_hint(got, want)}); "
                               "weight each expert's B_e A_e x by the task's gate, then scale.")
    return True, "every task: one bank of experts, mixed by each task's own gate weights."


@_check("05", 4)
def _cgc_merge_delta(answer):
    """Build merging: write task_delta(layer, t) giving dW_t (d_out, d_in) = scaling * sum over
    S_t of g_t,e B_e A_e for a CGC-LoRA layer; the check compares with layer.delta_weight(t)
    and with merging it into W0."""

    layer = _moelora_layer(AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3))
    x = torch.randn(3, 6)
    with torch.no_grad():
        for t in range(3):
            want = layer.delta_weight(t)
            got, why = _run_theirs(answer, layer, t)
            if why:
                return False, why
            if not _tensor_close(got, want):
                return False, (f"task {t}: not dW_t ({_shape_hint(got, want)}); B_e A_e is "
                               "(d_out, d_in), the gate is zero outside S_t, then scale.")
            merged = layer.base_layer(x) + x @ got.T
            if not _tensor_close(merged, layer(x, task_ids=torch.full((3,), t))):
                return False, f"task {t}: W0 + your dW_t does not give the routed output."
    return True, ("W0 + dW_t answers as the routed layer does: merging a task costs no "
                  "adapter at inference.")


@_check("06", 4)
def _onen_clusters(answer):
    """Build the clustering: write clusters_of(affinity, n) that groups the tasks of an
    affinity matrix (a DataFrame, tasks x tasks, 1 on the diagonal) into n clusters by scipy's
    average linkage on the distance 1 - affinity; answer {name: [tasks]}."""

    tasks = [t.name for t in TASKS]
    gen = np.random.default_rng(3)
    for n in (2, 3):
        raw = gen.uniform(-1, 1, (len(tasks), len(tasks)))
        matrix = (raw + raw.T) / 2
        np.fill_diagonal(matrix, 1.0)
        affinity = pd.DataFrame(matrix, index=tasks, columns=tasks)
        want = cluster_tasks(affinity, n)
        got, why = _run_theirs(answer, affinity.copy(), n)
        if why:
            return False, why
        try:
            same = (sorted(len(v) for v in got.values()) == sorted(len(v) for v in want.values())
                    and adjusted_rand_index(got, want) > 1 - 1e-9)
        except (AttributeError, TypeError, ValueError):
            same = False
        if not same:
            return False, (f"{n} clusters: yours {got!r}, cluster_tasks gives {want}; "
                           "scipy.spatial.distance.squareform(1 - affinity) feeds linkage, "
                           "fcluster(..., criterion='maxclust') cuts it.")
    return True, "the same groups as cluster_tasks for 2 and 3 clusters."


@_check("08", 4)
def _lab_recorder(answer):
    """Build a gate recorder: write record_gates(model, batch) that runs model(**batch) once
    and returns {module name: the (batch, E) weights its gate returned}, using forward hooks
    on each adapter layer's .gate (adapter_layers(model) names them); remove your hooks."""

    torch.manual_seed(0)
    model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, n_tasks=3))
    layers = adapter_layers(model)
    _trained_looking(*layers.values())
    batch = {"input_ids": torch.randint(4, model.config.vocab_size, (3, 5)),
             "task_ids": torch.tensor([2, 0, 1])}
    with torch.no_grad():
        got, why = _run_theirs(answer, model, batch)
    if why:
        return False, why
    left = sum(len(layer.gate._forward_hooks) for layer in layers.values())
    if not isinstance(got, dict) or set(got) != set(layers):
        names = sorted(got)[:3] if isinstance(got, dict) else type(got).__name__
        return False, (f"answer one entry per adapter layer (the check's model adapts every "
                       f"projection: {len(layers)}, e.g. {next(iter(layers))!r}); yours: "
                       f"{names}.")
    for name, layer in layers.items():
        if not _tensor_close(got[name], layer.gate_weights(batch["task_ids"])):
            return False, f"{name}: not the weights the gate gives tasks [2, 0, 1]."
    if left:
        return False, f"right weights, but {left} hooks are still on the gates: remove them."
    return True, (f"the gates of all {len(layers)} adapted modules of the check's model (it "
                  "adapts every projection) recorded in one forward, hooks removed.")


@_check("12", 1)
def _controls_paired_record(answer, results=None):
    """Build the paired count: write paired_record(results, a, b) giving (wins, losses) of
    method a against method b: each seed's average exact match over the tasks, a against b
    on the same seed; the check compares it with statistics.paired_comparison on pairs of
    the stored study."""

    stored = load_results(Path(results) if results is not None else stored_results_folder())
    pairs = [("named", "one_plus_n", "cgc_lora"), ("named", "cgc_uniform", "cgc_lora"),
             ("named", "integrated", "separate"), ("anonymous", "cgc_lora", "integrated")]
    for setting, a, b in pairs:
        runs = stored[stored["setting"] == setting]
        pair = paired_comparison(runs, a, b, n_boot=10)
        want = (pair["wins"], pair["losses"])
        got, why = _run_theirs(answer, runs.copy(), a, b)
        if why:
            return False, why
        try:
            got = (int(got[0]), int(got[1]))
        except (TypeError, ValueError, IndexError):
            return False, f"answer (wins, losses), two ints; yours returned {got!r}."
        if got != want:
            return False, (f"{a} against {b} ({setting} prompts): {want[0]} wins and "
                           f"{want[1]} losses, yours {got}. Average each seed's exact match "
                           "over the tasks first, then compare the two methods seed by seed.")
    return True, (f"the same wins and losses as paired_comparison on {len(pairs)} pairs of "
                  "the stored study.")


@_check("10", 4)
def _real_chat_prompt(answer, tokenizer):
    """Build the chat format: write chat_prompt(tokenizer, question) giving the text an instruct
    model reads before its answer (tokenizer.apply_chat_template with the user's turn and the
    generation prompt); pass the tokenizer: check.ex4(chat_prompt, tokenizer)."""

    questions = ["Spell cat backwards.", "What is the capital of France?"]
    want = chat_format(Dataset.from_dict({"prompt": questions, "target": ["tac", "Paris"]}),
                       tokenizer)["prompt"]
    for question, rendered in zip(questions, want):
        got, why = _run_theirs(answer, tokenizer, question)
        if why:
            return False, why
        if got != rendered:
            hint = ("add_generation_prompt=True opens the assistant's turn"
                    if isinstance(got, str) and rendered.startswith(got)
                    else "tokenize=False returns the text")
            return False, f"for {question!r} chat_format renders {rendered!r}; {hint}."
    return True, ("the text chat_format trains on: the answer's tokens follow it, and only "
                  "they carry the loss.")


__all__ = ["Checks"]
