"""TinyTasks: LoRA vs independent LoRAs vs MoE-LoRA vs CGC-LoRA at equal trainable parameters.

Every method adapts every linear layer of the central model with budget "total" and rank r,
so each has exactly the trainable parameters of one LoRA of rank r (gates aside). For each
seed: fresh data (make_tiny_tasks(seed)), fresh adapters, the same training recipe, exact
match on the test split. Prints the table (mean ± std over seeds, per task and on average),
the training time of each method, and checks the two phenomena the suite is built to show:

  (a) the seesaw: the shared LoRA loses to independent LoRAs on some task by more than the
      seed spread;
  (b) sharing helps a low-data task: some low-data task does better under a shared method
      (LoRA, MoE-LoRA or CGC-LoRA) than under its independent LoRA, by more than the spread.

    python benchmarks/bench_tinytasks.py                      # 3 seeds, 800 steps, 2 threads
    python benchmarks/bench_tinytasks.py --seeds 0 --steps 300 --methods lora,cgc_lora
    python benchmarks/bench_tinytasks.py --jobs 12 --threads 1  # one process per run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import time

import pandas as pd
import torch

from cgc_edu import AdapterConfig, add_adapters, trainable_parameters
from cgc_edu.data import TASKS, build_tokenizer, make_tiny_tasks
from cgc_edu.models import load_central_model
from cgc_edu.train import evaluate, train

METHODS = ("independent", "lora", "moe_lora", "cgc_lora")


def method_config(method: str, rank: int, n_tasks: int) -> AdapterConfig:
    """The four methods at budget "total": each bank holds one rank-``rank`` LoRA's parameters."""
    common = dict(rank=rank, alpha=2.0 * rank, n_tasks=n_tasks, budget="total")
    if method == "independent":
        return AdapterConfig.independent(**common)         # n_tasks experts of rank r/n_tasks
    if method == "lora":
        return AdapterConfig.lora(**common)                # one expert of rank r
    if method == "moe_lora":
        return AdapterConfig.moe_lora(n_experts=8, **common)   # 8 shared experts, task gate
    if method == "cgc_lora":
        return AdapterConfig.cgc_lora(n_common=8, n_specific=1, **common)  # 8 shared + 1 per task
    raise ValueError(f"unknown method {method!r}; choose among {METHODS}")


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    tasks = make_tiny_tasks(seed=seed, name_in_prompt=args.name_in_prompt)
    tok = build_tokenizer()
    model = add_adapters(load_central_model(), method_config(method, args.rank, len(TASKS)))
    start = time.perf_counter()
    train(model, tasks["train"], tok, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
          seed=seed, progress=False)
    seconds = time.perf_counter() - start
    table = evaluate(model, tasks["test"], tok)
    return {"method": method, "seed": seed, "seconds": seconds,
            "params": trainable_parameters(model), "exact_match": table["exact_match"]}


def seed_spread(values: pd.Series) -> float:
    """The spread over seeds: max - min."""
    return float(values.max() - values.min())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--name-in-prompt", action="store_true",
                        help="prompts name the task (the shared LoRA can then read it)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    for m in methods:
        method_config(m, args.rank, len(TASKS))  # fail fast on a bad method or rank
    runs = [(m, s) for s in seeds for m in methods]
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            results = list(pool.map(run_one, *zip(*runs), [args] * len(runs)))
    else:
        results = [run_one(m, s, args) for m, s in runs]

    em = pd.DataFrame({(r["method"], r["seed"]): r["exact_match"] for r in results})
    mean = em.T.groupby(level=0).mean().T[methods]
    std = em.T.groupby(level=0).std(ddof=0).T[methods]
    table = mean.map(lambda v: f"{v:.3f}") + " ± " + std.map(lambda v: f"{v:.3f}")
    print(f"TinyTasks test exact match, mean ± std over seeds {seeds}; {args.steps} steps, "
          f"batch {args.batch_size}, lr {args.lr}, rank {args.rank} (budget 'total'), "
          f"prompt names task: {args.name_in_prompt}")
    low = [t.name for t in TASKS if t.low_data]
    table.index = [f"{t} (low-data)" if t in low else t for t in table.index]
    print(table.to_string())
    info = pd.DataFrame(results).groupby("method")[["params", "seconds"]].mean().loc[methods]
    print("\ntrainable parameters and training seconds per run "
          f"({args.threads} thread(s) per run, {args.jobs} run(s) at a time):")
    print(info.round({"seconds": 1}).astype({"params": int}).to_string())

    def spread(task, *ms):
        return max(seed_spread(em.loc[task, m]) for m in ms)

    if {"independent", "lora"} <= set(methods):
        gaps = {t: mean.loc[t, "independent"] - mean.loc[t, "lora"] for t in mean.index[:-1]}
        seesaw = [t for t, g in gaps.items() if g > spread(t, "independent", "lora")]
        print(f"\n(a) seesaw: shared LoRA below independent LoRAs by more than the seed spread on "
              f"{seesaw or 'no task'} -> {'holds' if seesaw else 'FAILS'}")
    shared = [m for m in ("lora", "moe_lora", "cgc_lora") if m in methods]
    if "independent" in methods and shared:
        gains = [(t, m, mean.loc[t, m] - mean.loc[t, "independent"]) for t in low for m in shared
                 if mean.loc[t, m] - mean.loc[t, "independent"] > spread(t, m, "independent")]
        said = ", ".join(f"{t} under {m} (+{g:.3f})" for t, m, g in gains) or "no low-data task"
        print(f"(b) sharing helps a low-data task: {said} -> {'holds' if gains else 'FAILS'}")
    if "cgc_lora" in methods:
        order = mean.loc["average"].sort_values(ascending=False)
        print(f"\nCGC-LoRA ranks {list(order.index).index('cgc_lora') + 1} of {len(order)} on "
              f"average ({order['cgc_lora']:.3f}); best: {order.index[0]} ({order.iloc[0]:.3f})")


if __name__ == "__main__":
    main()
