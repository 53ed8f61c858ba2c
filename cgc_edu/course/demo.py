"""A one-minute end-to-end run of the CGC-LoRA layer family on a tiny Llama: ``python -m cgc_edu.course.demo``.

It builds a small LlamaForCausalLM from a config (no download), adds CGC-LoRA adapters for
three toy tasks, trains only the adapters and gates on a mixed-task batch, and prints what it
did: the loss, the learned gates, and checks of merging, saving and exporting.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .. import (
    AdapterConfig,
    adapter_layers,
    add_adapters,
    load_adapters,
    merge_task,
    save_adapters,
    trainable_parameters,
    unmerge,
)
from ..utils import seed_everything

VOCAB = 24


def toy_batch(n_tasks: int, batch: int, length: int, generator: torch.Generator):
    """Task t: the next token is (token + t + 1) mod VOCAB — the same inputs, different rules."""
    task_ids = torch.arange(batch) % n_tasks
    start = torch.randint(0, VOCAB, (batch, 1), generator=generator)
    steps = (task_ids + 1)[:, None] * torch.arange(length)[None]
    return (start + steps) % VOCAB, task_ids


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seed_everything(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    n_tasks = 3
    base_config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(base_config)      # the frozen base: rebuilt identically from its seed
    total = sum(p.numel() for p in model.parameters())
    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=n_tasks, n_common=2, n_specific=1,
                                    target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    add_adapters(model, config)
    print(f"tiny Llama: {total:,} frozen parameters; CGC-LoRA adds {trainable_parameters(model):,} "
          f"trainable ones in {len(adapter_layers(model))} layers "
          f"({config.n_common} common + {config.n_specific} specific expert(s) per task, {n_tasks} tasks)")

    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, args.steps + 1):
        tokens, task_ids = toy_batch(n_tasks, 24, 12, generator)
        loss = model(tokens, labels=tokens, task_ids=task_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  mixed-task loss {loss.item():.3f}")
    model.eval()

    tokens, task_ids = toy_batch(n_tasks, 30, 12, generator)
    with torch.no_grad():
        logits = model(tokens, task_ids=task_ids).logits
        accuracy = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean().item()
    print(f"next-token accuracy on fresh mixed-task data: {accuracy:.2f}")

    layer = next(iter(adapter_layers(model).values()))
    gates = layer.gate_weights(torch.arange(n_tasks)).detach()
    labels = layer.expert_labels([f"t{t}" for t in range(n_tasks)])
    print(f"gate weights of {layer.module_name} (rows: tasks; columns: {', '.join(labels)})")
    for t in range(n_tasks):
        print(f"  task {t}: " + "  ".join(f"{w:.2f}" for w in gates[t].tolist()))

    with torch.no_grad():
        want = model(tokens[:4], task_ids=torch.full((4,), 1)).logits
        merge_task(model, 1)
        merged_error = (model(tokens[:4]).logits - want).abs().max().item()
        unmerge(model)
    print(f"task 1 merged into the base weights: max |difference| {merged_error:.1e}")

    with tempfile.TemporaryDirectory() as folder:
        save_adapters(model, folder)
        torch.manual_seed(args.seed)
        fresh = load_adapters(LlamaForCausalLM(base_config), folder)   # same base, adapters from disk
        with torch.no_grad():
            reload_error = (fresh(tokens, task_ids=task_ids).logits - logits).abs().max().item()
    print(f"saved and reloaded (safetensors + JSON): max |difference| {reload_error:.1e}")
    return {"accuracy": accuracy, "merged_error": merged_error, "reload_error": reload_error}


if __name__ == "__main__":
    main()
