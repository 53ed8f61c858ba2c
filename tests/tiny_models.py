"""A one-layer Llama over the TinyTasks tokenizer, for the tests of the 1+N framework, the
affinity measures and serving (one builder, so the three test files test the same model),
and a spy on what ``greedy_decode`` hands ``generate`` (the device tests)."""
import contextlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cgc_edu.train import loop as train_module
from cgc_edu.data import build_tokenizer

TOK = build_tokenizer()


def tiny_base(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOK), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=True, pad_token_id=TOK.pad_token_id,
                         bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id)
    return LlamaForCausalLM(config).eval()


class Seen(Exception):
    """Raised by a spy once it has seen what it was waiting for."""


def spy_on_generate(monkeypatch, model) -> dict:
    """Make ``greedy_decode`` record the devices of the task ids it routes and of the tensors
    it hands ``model.generate``, then stop with `Seen` (generate cannot run on "meta": it reads
    token values). Returns the dict the devices land in."""
    seen = {}
    monkeypatch.setattr(train_module, "_routed", lambda m, ids: seen.update(task_ids=ids.device)
                        or contextlib.nullcontext())

    def generate(input_ids, attention_mask, **kwargs):
        seen.update(input_ids=input_ids.device, attention_mask=attention_mask.device)
        raise Seen

    monkeypatch.setattr(model, "generate", generate)
    return seen
