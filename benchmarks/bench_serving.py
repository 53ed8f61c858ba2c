"""Serving many tasks on one base: 1+N against merged models, the bare base and peft.

    python benchmarks/bench_serving.py [--rounds 7] [--threads 2] [--quick]

Two parts, every candidate timed in interleaved rounds of one run (median of rounds), so a
busy machine slows all of them alike; the machine's load average is printed at start and end.

1. Serving (greedy decoding of TinyTasks test prompts, 8 tasks in 2 clusters, the central
   model's architecture with random weights: speed does not depend on the values).
   1+N keeps one base and one CGC-LoRA set per cluster; "merged" keeps one full copy of the
   base per task with that task's adapter folded in, and serves a mixed batch task by task.
   Targets: a mixed batch of 64 requests, 1+N >= 1.3x the merged models' throughput; one
   request alone, 1+N >= 0.8x a merged model (measured without and with ``hot_merge``, a
   private merged copy of the adapted weights for the lone request's task).
2. The cost of mixing: one forward of a mixed batch of 64 prompts x 32 tokens over 8 and 32
   tasks (independent preset, rank 8, every projection of the central-size Llama) against
   the bare base model's forward on the same batch (target <= 1.3x), and against peft's own
   multi-adapter batch (one LoRA per task in one PeftModel, ``adapter_names=`` per sample).

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.framework import OnePlusN, prior_clusters, unique_parameter_bytes
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.models import central_config
from cgc_edu.train import greedy_decode

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds of each candidate, timed round by round (each round runs every one)."""
    samples = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def serving(args) -> dict:
    torch.manual_seed(0)
    tok = build_tokenizer()
    test = make_tiny_tasks(seed=0, n_train=1, n_low=1, n_validation=0, n_test=16)["test"]
    clusters = prior_clusters(test)
    base = LlamaForCausalLM(central_config()).eval()
    fw = OnePlusN(base, clusters, AdapterConfig.cgc_lora(rank=12, alpha=24, n_common=2, n_specific=1,
                                                         budget="total"), tokenizer=tok)
    with torch.no_grad():  # trained-looking adapters (B = 0 would make every task the same)
        for s in fw.sets.values():
            for layer in adapter_layers(s).values():
                layer.lora_B.normal_(0, 0.02)
                if layer.gate.learned:
                    layer.gate.weight.normal_(0, 0.5)
    merged = {t: fw.merged_model(t) for t in fw.tasks}

    rows = list(test)
    random.Random(0).shuffle(rows)
    rows = rows[: args.requests]
    prompts, names = [r["prompt"] for r in rows], [r["task"] for r in rows]

    def serve_one_plus_n(p=prompts, n=names):
        return fw.generate(p, n, max_new_tokens=args.new_tokens)

    def serve_merged(p=prompts, n=names):
        out = [None] * len(p)
        for task in dict.fromkeys(n):  # one batch per task, in order of first request
            idx = [i for i, t in enumerate(n) if t == task]
            for i, a in zip(idx, greedy_decode(merged[task], tok, [p[i] for i in idx],
                                               max_new_tokens=args.new_tokens)):
                out[i] = a
        return out

    assert serve_one_plus_n() == serve_merged(), "merged models must answer like the routed sets"
    one = (prompts[:1], names[:1])
    with torch.no_grad():  # what generate itself uses
        t = interleaved({"1+N batch": serve_one_plus_n, "merged batch": serve_merged,
                         "1+N one": lambda: serve_one_plus_n(*one),
                         "merged one": lambda: serve_merged(*one)}, args.rounds)
    # The same lone request through OnePlusN(hot_merge=True): a hot copy of the base whose
    # adapted weights are private merged tensors for the request's task, kept while it stays.
    fw.hot_merge = True
    assert serve_one_plus_n(*one) == serve_merged(*one), "the hot copy must answer like the sets"
    with torch.no_grad():
        hot = interleaved({"1+N one hot": lambda: serve_one_plus_n(*one),
                           "merged one": lambda: serve_merged(*one)}, args.rounds)
    hot_bytes = fw.memory()["hot_bytes"]
    fw.hot_merge = False
    bank = [fw.serving_model()] if hasattr(fw, "serving_model") else []  # its one-pass bank, if any
    mem_1n = unique_parameter_bytes(base, *fw.sets.values(), *bank)
    mem_merged = unique_parameter_bytes(*merged.values())
    print(f"\n1. serving: {len(fw.tasks)} tasks in {len(clusters)} clusters, greedy decoding of "
          f"{args.new_tokens} tokens, median of {args.rounds} interleaved rounds")
    print(f"   memory       1+N {mem_1n / 2**20:6.2f} MiB (base, {len(fw.sets)} sets, serving bank)   merged "
          f"{mem_merged / 2**20:6.2f} MiB ({len(merged)} models)   merged / 1+N {mem_merged / mem_1n:.2f}")
    print(f"   {len(prompts)} requests  1+N {t['1+N batch'] * 1e3:7.1f} ms   merged {t['merged batch'] * 1e3:7.1f} ms"
          f"   throughput 1+N / merged {t['merged batch'] / t['1+N batch']:.2f}x  (target >= 1.3)")
    print(f"   one request  1+N {t['1+N one'] * 1e3:7.1f} ms   merged {t['merged one'] * 1e3:7.1f} ms"
          f"   speed 1+N / merged      {t['merged one'] / t['1+N one']:.2f}x  (target >= 0.8)")
    print(f"   one request, hot_merge=True: 1+N {hot['1+N one hot'] * 1e3:5.1f} ms   merged "
          f"{hot['merged one'] * 1e3:7.1f} ms   speed 1+N / merged {hot['merged one'] / hot['1+N one hot']:.2f}x"
          f"  (memory +{hot_bytes / 2**20:.2f} MiB: merged / 1+N {mem_merged / (mem_1n + hot_bytes):.2f})")
    return {"memory_ratio": mem_merged / mem_1n, "batch_speedup": t["merged batch"] / t["1+N batch"],
            "single_speedup": t["merged one"] / t["1+N one"],
            "single_speedup_hot": hot["merged one"] / hot["1+N one hot"], "times": t}


def peft_multi_adapter(base, n_tasks: int, rank: int):
    """One PeftModel holding one LoRA per task, as a peft user serves many tasks."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=PROJECTIONS, init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="task0")
    for t in range(1, n_tasks):
        model.add_adapter(f"task{t}", cfg)
    return model.eval()


def mixing_cost(args, n_tasks: int) -> dict:
    torch.manual_seed(0)
    bare = LlamaForCausalLM(central_config()).eval()
    config = AdapterConfig.independent(rank=args.rank, alpha=2 * args.rank, n_tasks=n_tasks)
    adapted = add_adapters(copy.deepcopy(bare), config).eval()
    with torch.no_grad():
        for layer in adapter_layers(adapted).values():
            layer.lora_B.normal_(0, 0.02)
    peft_model = peft_multi_adapter(copy.deepcopy(bare), n_tasks, args.rank)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, bare.config.vocab_size, (args.batch, args.tokens), generator=gen)
    task_ids = torch.arange(args.batch) % n_tasks
    names = [f"task{int(t)}" for t in task_ids]
    with torch.inference_mode():
        t = interleaved({"bare base": lambda: bare(input_ids),
                         # fresh ids each call: a new batch, nothing kept from the last one
                         "cgc_edu": lambda: adapted(input_ids, task_ids=task_ids.clone()),
                         "peft": lambda: peft_model(input_ids=input_ids, adapter_names=names)},
                        args.rounds)
    cost, peft_ratio = t["cgc_edu"] / t["bare base"], t["peft"] / t["cgc_edu"]
    print(f"   {n_tasks:2d} tasks  bare {t['bare base'] * 1e3:6.1f} ms   cgc_edu {t['cgc_edu'] * 1e3:6.1f} ms"
          f"   peft {t['peft'] * 1e3:6.1f} ms   cgc_edu / bare {cost:.2f}x (target <= 1.3)"
          f"   peft / cgc_edu {peft_ratio:.2f}x")
    return {"mixing_cost": cost, "peft_over_cgc": peft_ratio, "times": t}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests in the mixed batch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="prompts in the mixing-cost batch")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per prompt there")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.new_tokens, args.batch = 2, 16, 4, 16
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    result = serving(args)
    print(f"\n2. the cost of mixing: one forward of {args.batch} prompts x {args.tokens} tokens, "
          f"independent preset rank {args.rank} on every projection, median of {args.rounds} rounds")
    result["mixing"] = {n: mixing_cost(args, n) for n in (8, 32)}
    load_end = os.getloadavg()
    print(f"\nload average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    result["load"] = (load_start, load_end)
    return result


if __name__ == "__main__":
    main()
