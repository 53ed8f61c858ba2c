"""Speed on the real central model, SmolLM2-135M-Instruct: ratios measured in one run.

    python benchmarks/bench_real.py [--rounds 5] [--threads 2] [--device cpu|cuda]

Every candidate is timed in interleaved rounds (median of rounds), so a busy machine slows
all of them alike. Adapters on every projection of all 30 layers, weights random (speed does
not depend on their values). Targets (issue 24):

1. a training step (forward + backward, batch 8 x 32 tokens, one task per sample) of
   CGC-LoRA (2 common + 2 private experts of rank 2) over peft's LoRA of the rank one task
   sees (4 experts x 2 = 8): at most 1.0x;
2. one forward of a mixed batch of 32 prompts x 32 tokens over 8 and over 32 tasks (CGC-LoRA,
   eval, no grad) over the bare base model's: at most 1.1x;
3. one request answered by 1+N (two clusters, ``hot_merge=True``) over a merged plain model
   of that task: greedy decoding of 16 tokens, speed at least 0.9x.

Needs the real model installed (scripts/setup.sh does it).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.data import TinyTasksCollator
from cgc_edu.data.english import ENGLISH_TASK_NAMES, english_clusters, make_english_tasks
from cgc_edu.framework import OnePlusN
from cgc_edu.models.smollm2 import load_smollm2
from cgc_edu.train import greedy_decode
from cgc_edu.train.finetune import chat_format

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def interleaved(fns: dict, rounds: int, samples: dict | None = None) -> dict:
    """Each candidate's median time over ``rounds`` interleaved rounds (after a warm-up);
    ``samples``, if given, receives every round's times."""
    samples = {} if samples is None else samples
    samples.update({name: [] for name in fns})
    for fn in fns.values():   # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def randomize(model):
    """Trained-looking adapters: B = 0 at init would make every task the same."""
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 0.02)
            if layer.gate.learned:
                layer.gate.weight.normal_(0, 0.5)
    return model


def batch(tokenizer, n: int, n_tasks: int, device, length: int = 32) -> dict:
    """n rows of ``length`` tokens, task ids cycling over ``n_tasks``."""
    torch.manual_seed(0)
    ids = torch.randint(100, 40_000, (n, length), device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": ids.clone(), "task_ids": torch.arange(n, device=device) % n_tasks}


def training_step(base, tokenizer, rounds, device) -> float:
    cgc = AdapterConfig.cgc_lora(n_tasks=len(ENGLISH_TASK_NAMES), rank=8, alpha=16,
                                 n_common=2, n_specific=2, target_modules=PROJECTIONS)
    ours = randomize(add_adapters(copy.deepcopy(base), cgc)).train()
    layer = next(iter(adapter_layers(ours).values()))
    seen = int(len(layer.allowed[0]) * layer.lora_A.shape[1])     # the rank one task sees
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=seen, lora_alpha=2 * seen, target_modules=PROJECTIONS)).train()
    data = batch(tokenizer, 8, len(ENGLISH_TASK_NAMES), device)
    plain = {k: v for k, v in data.items() if k != "task_ids"}

    def step(model, call):
        model.zero_grad(set_to_none=True)
        model(**call).loss.backward()

    rounds_taken = {}
    t = interleaved({"cgc": lambda: step(ours, data), "peft": lambda: step(peft, plain)},
                    rounds, rounds_taken)
    ratio = t["cgc"] / t["peft"]
    # each round's own ratio (the two steps ran back to back): how far one round's noise goes
    each = sorted(a / b for a, b in zip(rounds_taken["cgc"], rounds_taken["peft"]))
    print(f"1. training step, batch 8 x 32: CGC-LoRA {t['cgc'] * 1e3:7.1f} ms   peft LoRA "
          f"(rank {seen}) {t['peft'] * 1e3:7.1f} ms   ratio {ratio:.2f}x  (target <= 1.0; "
          f"single rounds {each[0]:.2f}..{each[-1]:.2f}x, median "
          f"{statistics.median(each):.2f}x)")
    return ratio


@torch.no_grad()
def mixed_batch(base, tokenizer, rounds, device) -> dict:
    ratios, fns = {}, {"bare": None}
    data = {}
    for n_tasks in (8, 32):
        config = AdapterConfig.cgc_lora(n_tasks=n_tasks, rank=8, alpha=16, n_common=2,
                                        n_specific=2, target_modules=PROJECTIONS)
        model = randomize(add_adapters(copy.deepcopy(base), config)).eval()
        data[n_tasks] = batch(tokenizer, 32, n_tasks, device)
        call = {k: v for k, v in data[n_tasks].items() if k != "labels"}
        fns[f"{n_tasks} tasks"] = (lambda m=model, c=call: m(**c))
    bare_call = {k: v for k, v in data[8].items() if k not in ("labels", "task_ids")}
    fns["bare"] = lambda: base(**bare_call)
    t = interleaved(fns, rounds)
    for n_tasks in (8, 32):
        ratios[n_tasks] = t[f"{n_tasks} tasks"] / t["bare"]
        print(f"2. mixed batch 32 x 32 over {n_tasks:2d} tasks: {t[f'{n_tasks} tasks'] * 1e3:7.1f}"
              f" ms   bare base {t['bare'] * 1e3:7.1f} ms   ratio {ratios[n_tasks]:.2f}x  "
              "(target <= 1.1)")
    return ratios


@torch.no_grad()
def one_request(base, tokenizer, rounds) -> float:
    config = AdapterConfig.cgc_lora(rank=8, alpha=16, n_common=2, n_specific=2,
                                    target_modules=PROJECTIONS)
    framework = OnePlusN(base, english_clusters(), config, tokenizer=tokenizer, hot_merge=True)
    for s in framework.sets.values():
        randomize(s)
    task = "plural"
    merged = framework.merged_model(task).eval()
    prompt = chat_format(make_english_tasks(seed=0)["test"], tokenizer)["prompt"][40]

    def routed():
        return framework.generate([prompt], task, max_new_tokens=16)

    def plain():
        return greedy_decode(merged, tokenizer, [prompt], max_new_tokens=16)

    assert routed() == plain(), "the merged model must answer like 1+N"
    t = interleaved({"1+N": routed, "merged": plain}, rounds)
    speed = t["merged"] / t["1+N"]
    print(f"3. one request, 16 tokens: 1+N (hot_merge) {t['1+N'] * 1e3:7.1f} ms   merged model "
          f"{t['merged'] * 1e3:7.1f} ms   speed {speed:.2f}x  (target >= 0.9)")
    return speed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"SmolLM2-135M-Instruct on {args.device}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; median of {args.rounds} interleaved rounds")
    base, tokenizer = load_smollm2()
    base = base.to(args.device).eval()
    out = {"train": training_step(base, tokenizer, args.rounds, args.device),
           "mixed": mixed_batch(base, tokenizer, args.rounds, args.device)}
    if args.device == "cpu":   # OnePlusN's generate runs where its base is
        out["one_request"] = one_request(base, tokenizer, args.rounds)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return out


if __name__ == "__main__":
    main()
