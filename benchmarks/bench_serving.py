"""Serving 1+N: one base plus N adapter sets, against one merged model per task.

    python benchmarks/bench_serving.py [--requests 64] [--repeats 3] [--threads 2]

Both serve the 8 TinyTasks tasks over the central model's architecture (random weights: speed
and memory do not depend on the values). 1+N keeps one base and one CGC-LoRA set per cluster
(the sets share the base's tensors); "merged" keeps one full copy of the base per task with
that task's adapter folded in (runs at the base's speed, but costs a base per task).
Printed: parameter memory and time per request (a mixed batch of requests, and one request
alone), each as a ratio merged / 1+N, measured in the same run.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from cgc_edu import AdapterConfig
from cgc_edu.data import build_tokenizer, format_prompt, make_tiny_tasks
from cgc_edu.framework import OnePlusN, prior_clusters, unique_parameter_bytes
from cgc_edu.injection import adapter_layers
from cgc_edu.models import central_config
from cgc_edu.train import greedy_decode


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests in the mixed batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = build_tokenizer()
    tasks = make_tiny_tasks(seed=0, n_train=2, n_low=1, n_validation=0, n_test=0)["train"]
    clusters = prior_clusters(tasks)
    base = LlamaForCausalLM(central_config()).eval()
    fw = OnePlusN(base, clusters, AdapterConfig.cgc_lora(rank=12, alpha=24, n_common=2, n_specific=1,
                                                         budget="total"), tokenizer=tok)
    with torch.no_grad():  # trained-looking adapters (B = 0 would make every task the same)
        for s in fw.sets.values():
            for layer in adapter_layers(s).values():
                layer.lora_B.normal_(0, 0.02)
    merged = {t: fw.merged_model(t) for t in fw.tasks}

    rng = random.Random(0)
    names = [rng.choice(fw.tasks) for _ in range(args.requests)]
    prompts = [format_prompt("".join(rng.choice("abcdefgh") for _ in range(5))) for _ in names]

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
    mem_1n = unique_parameter_bytes(base, *fw.sets.values())
    mem_merged = unique_parameter_bytes(*merged.values())
    t_1n = timed(serve_one_plus_n, args.repeats) / args.requests
    t_merged = timed(serve_merged, args.repeats) / args.requests
    one = (prompts[:1], names[:1])
    t1_1n = timed(lambda: serve_one_plus_n(*one), args.repeats)
    t1_merged = timed(lambda: serve_merged(*one), args.repeats)

    print(f"tasks {len(fw.tasks)}, clusters {len(clusters)}, requests {args.requests}, "
          f"threads {args.threads}")
    print(f"memory      1+N {mem_1n / 2**20:7.2f} MiB (base {unique_parameter_bytes(base) / 2**20:.2f} "
          f"+ {len(fw.sets)} sets)   merged {mem_merged / 2**20:7.2f} MiB ({len(merged)} models)   "
          f"ratio merged/1+N {mem_merged / mem_1n:.2f}")
    print(f"mixed batch 1+N {1e3 * t_1n:7.2f} ms/request   merged {1e3 * t_merged:7.2f} ms/request   "
          f"ratio merged/1+N {t_merged / t_1n:.2f}")
    print(f"one request 1+N {1e3 * t1_1n:7.2f} ms           merged {1e3 * t1_merged:7.2f} ms           "
          f"ratio merged/1+N {t1_merged / t1_1n:.2f}")
    return {"memory_ratio": mem_merged / mem_1n, "batch_time_ratio": t_merged / t_1n,
            "single_time_ratio": t1_merged / t1_1n}


if __name__ == "__main__":
    main()
