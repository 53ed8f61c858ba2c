"""Training-step cost of a CGC-LoRA layer against peft's LoRA layer, a naive expert loop, and merging.

    python benchmarks/bench_layer.py            # d=1024, batch 8 x 128 tokens, 8 and 32 tasks
    python benchmarks/bench_layer.py --quick    # small shapes, for a smoke run

Every number is a ratio against a reference timed in the same run, with the candidates timed
in interleaved rounds (median of rounds), so a busy machine slows all of them alike.
Targets (docs/design.md): CGC-LoRA step <= 1.3x peft LoRA of the same rank r; merged task <= 1.05x base.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from cgc_edu import AdapterConfig, CGCLoRALinear


def naive_expert_loop(layer: CGCLoRALinear, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """MOELoRA's way: a Python loop over experts, each applied to the whole batch."""
    g = layer.gate(task_ids)
    out = layer.base_layer(x)
    for e in range(layer.n_experts):
        out = out + layer.scaling * g[:, e, None, None] * ((x @ layer.lora_A[e].T) @ layer.lora_B[e].T)
    return out


def step_fn(forward, params):
    """One training step's compute: forward, a scalar loss, backward."""
    def step():
        for p in params:
            p.grad = None
        forward().square().mean().backward()
    return step


def time_interleaved(fns: dict, rounds: int, inner: int) -> dict:
    samples = {name: [] for name in fns}
    for fn in fns.values():                     # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def peft_lora_layer(base: nn.Linear, rank: int, alpha: float):
    model = get_peft_model(nn.Sequential(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.02)
    return layer, [p for p in layer.parameters() if p.requires_grad]


def run(d: int, batch: int, tokens: int, tasks: int, rank: int, budget: str, rounds: int, inner: int):
    torch.manual_seed(0)
    base = nn.Linear(d, d)
    base.requires_grad_(False)
    x = torch.randn(batch, tokens, d)
    task_ids = torch.arange(batch) % tasks          # every sample of the batch a different task
    config = AdapterConfig.cgc_lora(rank=rank, alpha=2 * rank, n_tasks=tasks, n_common=2, n_specific=1,
                                    budget=budget)
    layer = CGCLoRALinear(base, config)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
        layer.gate.weight.normal_()
    params = [p for p in layer.parameters() if p.requires_grad]
    peft_layer, peft_params = peft_lora_layer(nn.Linear(d, d).requires_grad_(False), rank, 2 * rank)
    fns = {
        "peft LoRA (rank r)": step_fn(lambda: peft_layer(x), peft_params),
        "CGC-LoRA": step_fn(lambda: layer(x, task_ids), params),
        "naive expert loop": step_fn(lambda: naive_expert_loop(layer, x, task_ids), params),
    }
    t = time_interleaved(fns, rounds, inner)
    ref = t["peft LoRA (rank r)"]
    E, k = config.n_experts, config.experts_per_task * config.expert_rank
    print(f"\n{tasks} tasks mixed in a batch of {batch} x {tokens} tokens, d={d}, "
          f"r={rank}, "
          f"budget={budget!r}: E={E} experts of rank {config.expert_rank} "
          f"(bank rank {E * config.expert_rank}, rank {k} per task)")
    for name, seconds in t.items():
        print(f"  {name:22s} {seconds * 1e3:8.2f} ms/step   ratio to peft LoRA {seconds / ref:5.2f}x")
    return t["CGC-LoRA"] / ref


def run_merged(d: int, batch: int, tokens: int, rounds: int, inner: int):
    torch.manual_seed(0)
    base = nn.Linear(d, d).requires_grad_(False)
    layer = CGCLoRALinear(nn.Linear(d, d), AdapterConfig.cgc_lora(rank=24, n_tasks=8)).requires_grad_(False)
    layer.base_layer.load_state_dict(base.state_dict())
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
    layer.merge(3)
    x = torch.randn(batch, tokens, d)
    with torch.no_grad():
        t = time_interleaved({"base nn.Linear": lambda: base(x), "merged CGC-LoRA task": lambda: layer(x)},
                             rounds, inner)
    ratio = t["merged CGC-LoRA task"] / t["base nn.Linear"]
    print(f"\nmerged task vs the bare base layer (forward, batch {batch} x {tokens}, d={d}):")
    for name, seconds in t.items():
        print(f"  {name:22s} {seconds * 1e3:8.2f} ms/forward")
    print(f"  ratio merged / base {ratio:5.2f}x   (target <= 1.05)")
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description="CGC-LoRA layer benchmark (ratios in one run)")
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    d, batch, tokens, rounds, inner = (256, 8, 32, 3, 2) if args.quick else (1024, 8, 128, 7, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = {}
    for tasks, rank_total in ((8, 40), (32, 68)):
        ratios[(tasks, "per_task")] = run(d, batch, tokens, tasks, 24, "per_task", rounds, inner)
        ratios[(tasks, "total")] = run(d, batch, tokens, tasks, rank_total, "total", rounds, inner)
    merged = run_merged(d, batch, tokens, rounds, 10 * inner)
    print("\nsummary (target: CGC-LoRA <= 1.30x peft LoRA; merged <= 1.05x base)")
    for (tasks, budget), ratio in ratios.items():
        print(f"  {tasks:2d} tasks, budget {budget:8s}: CGC-LoRA / peft LoRA = {ratio:.2f}x")
    print(f"  merged / base = {merged:.2f}x")
    return ratios, merged


if __name__ == "__main__":
    main()
