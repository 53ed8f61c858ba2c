"""Greedy decoding of the central model with CGC-LoRA adapters, against the bare central model.

    python benchmarks/bench_decode.py [--prompts 64] [--repeats 5] [--threads 2] [--new-tokens 8]

The central model (4 Llama layers, 28 adapted projections) with an 8-task CGC-LoRA adapter
(2 common + 1 specific expert) decodes ~64 TinyTasks test prompts, a mixed-task batch, greedily
(`cgc_edu.train.greedy_decode`, i.e. ``model.generate`` inside a ``task_context``). The same
prompts are decoded by the bare central model in the same run, in interleaved rounds (median
of rounds), so a busy machine slows both alike. Printed: both times and the ratio
adapted / bare. Run it on two checkouts (before and after a change) to compare them.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.models import load_central_model
from cgc_edu.train import greedy_decode


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = build_tokenizer()
    rows = make_tiny_tasks(seed=0, n_train=1, n_low=1, n_validation=0, n_test=8)["test"]
    rows = rows.select(range(min(args.prompts, len(rows))))
    prompts, task_ids = list(rows["prompt"]), [int(t) for t in rows["task_id"]]
    n_tasks = len(set(rows["task"])) if rows else 8

    bare = load_central_model()
    adapted = add_adapters(copy.deepcopy(bare), AdapterConfig.cgc_lora(
        rank=6, alpha=12, n_tasks=8, n_common=2, n_specific=1)).eval()
    with torch.no_grad():  # trained-looking adapters (B = 0 would make every task the same)
        for layer in adapter_layers(adapted).values():
            layer.lora_B.normal_(0, 0.02)
            if layer.gate.learned:
                layer.gate.weight.normal_(0, 0.5)

    runs = {
        "bare": lambda: greedy_decode(bare, tok, prompts, max_new_tokens=args.new_tokens),
        "adapted": lambda: greedy_decode(adapted, tok, prompts, task_ids=task_ids,
                                         max_new_tokens=args.new_tokens),
    }
    times = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["adapted"] / med["bare"]
    import cgc_edu
    print(f"cgc_edu from {cgc_edu.__file__}")
    print(f"greedy decoding, central model, {len(prompts)} prompts over {n_tasks} tasks, "
          f"{args.new_tokens} new tokens, {len(adapter_layers(adapted))} adapted layers, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"  bare central model : {med['bare'] * 1e3:8.1f} ms")
    print(f"  with 8-task adapter: {med['adapted'] * 1e3:8.1f} ms")
    print(f"  ratio adapted / bare: {ratio:.2f}x")
    return {"bare_s": med["bare"], "adapted_s": med["adapted"], "ratio": ratio}


if __name__ == "__main__":
    main()
