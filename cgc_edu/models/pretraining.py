"""Pretrain the central model: ``python -m cgc_edu.models.pretraining`` (a few minutes on 2 CPU cores).

The recipe is deterministic (fixed seed, generated corpus, fixed schedule). The corpus is
*general*, not TinyTasks: lines of short snippets such as ``cab|cab`` (copying, with the
delimiters ``|``, ``>`` and ``=``), ``xyzab`` (continuing the alphabet, wrapping around),
``45678`` (counting), ``ab,ab,ab`` (repeating) and random characters (reading). So the
model reads and copies strings, and knows which letter follows which, before it has seen
any task; the tasks' adapters build on those skills.

Taught in: notebooks/00_tour.ipynb
"""

from __future__ import annotations

import argparse
import math
import random
import string
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from ..data.tinytasks import CHARACTERS, build_tokenizer
from ..train.loop import greedy_decode
from .central import ASSETS_DIR, central_config

LETTERS, DIGITS = string.ascii_lowercase, string.digits
MAX_CHARS = 30  # one line of corpus (short lines keep pretraining within minutes)


def _word(rng: random.Random, lo: int = 1, hi: int = 8) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _snippet(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:  # copy: the skill every task builds on
        w = _word(rng)
        return f"{w}{rng.choice('|>=')}{w}"
    if kind < 0.65:  # continue the alphabet (wraps z -> a)
        start, n = rng.randrange(26), rng.randint(3, 10)
        return "".join(LETTERS[(start + i) % 26] for i in range(n))
    if kind < 0.75:  # count
        start, n = rng.randrange(10), rng.randint(3, 8)
        return "".join(DIGITS[(start + i) % 10] for i in range(n))
    if kind < 0.9:  # repeat a pattern
        w = _word(rng, 1, 3)
        return rng.choice(", ").join([w] * rng.randint(2, 4))
    return "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(2, 8)))  # read noise


def corpus_line(rng: random.Random) -> str:
    """One line of the general pretraining corpus: snippets joined by spaces.
    """
    line = _snippet(rng)
    while True:
        nxt = _snippet(rng)
        if len(line) + 1 + len(nxt) > MAX_CHARS or rng.random() < 0.2:
            return line
        line = f"{line} {nxt}"


def _batch(rng, tok, batch_size):
    ids = [tok(corpus_line(rng))["input_ids"] + [tok.eos_token_id] for _ in range(batch_size)]
    width = max(map(len, ids))
    input_ids = torch.full((batch_size, width), tok.pad_token_id)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
    labels = input_ids.masked_fill(input_ids == tok.pad_token_id, -100)
    return input_ids, (input_ids != tok.pad_token_id).long(), labels


def pretrain(steps: int = 2000, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
             progress: bool = True) -> LlamaForCausalLM:
    """Train the central model from scratch on the general corpus (deterministic for a seed).

    AdamW, linear warm-up then cosine decay, gradient clipping at 1.
    """
    torch.manual_seed(seed)  # the "1" is fixed: the training-seed switch moves adapters only
    tok = build_tokenizer()
    model = LlamaForCausalLM(central_config())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))))
    rng = random.Random(seed)
    bar = tqdm(range(steps), desc="pretraining the central model", disable=not progress)
    for step in bar:
        input_ids, attention_mask, labels = _batch(rng, tok, batch_size)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def copy_accuracy(model, tokenizer=None, n: int = 200, seed: int = 1234,
                  delimiter: str = "|") -> float:
    """Exact-match rate of greedy copying ``word|`` -> ``word`` for ``n`` random words.

    The central model's general skill; tests check it stays above a floor.

    Taught in: notebooks/00_tour.ipynb
    """

    tokenizer = tokenizer or build_tokenizer()
    rng = random.Random(seed)
    words = [_word(rng, 3, 6) for _ in range(n)]
    outputs = greedy_decode(model, tokenizer, [w + delimiter for w in words], max_new_tokens=7)
    return sum(out.split(" ")[0] == w for out, w in zip(outputs, words)) / n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = pretrain(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    tok = build_tokenizer()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)  # model.safetensors + config.json + generation_config.json
    tok.save_pretrained(args.out)
    print(f"saved to {args.out} in {time.perf_counter() - start:.0f} s; "
          f"copy accuracy {copy_accuracy(model, tok):.3f}")


if __name__ == "__main__":
    main()
