"""The tests' shared builders, one of each: a one-layer Llama over the TinyTasks
tokenizer (the 1+N framework, affinity, serving), a two-layer Llama (injection, saving),
a GPT-2 (Conv1D), a standalone layer, "trained-looking" adapters, a 1+N over the tiny
Llama, and a spy on what ``greedy_decode`` hands ``generate`` (the device tests)."""
import contextlib

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from cgc_edu import AdapterConfig, CGCLoRALinear, adapter_layers
from cgc_edu.data import build_tokenizer
from cgc_edu.framework import OnePlusN
from cgc_edu.train import loop as train_module

TOK = build_tokenizer()


def tiny_base(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOK), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=True, pad_token_id=TOK.pad_token_id,
                         bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id)
    return LlamaForCausalLM(config).eval()


def tiny_llama(seed=0, hidden=32):
    """A two-layer Llama of 40 tokens with grouped-query attention."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def gpt2(seed=0):
    """A two-layer GPT-2 of 48 tokens: its projections are transformers' Conv1D."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=48, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def randomize(model, seed=1, scale=0.5):
    """Give every adapter (of a model, or one layer) a non-zero B and a non-uniform
    gate, so that every expert, every gate and every task matters."""
    gen = torch.Generator().manual_seed(seed)
    one = isinstance(model, CGCLoRALinear)
    layers = [model] if one else adapter_layers(model).values()
    with torch.no_grad():
        for layer in layers:
            B, gate = layer.lora_B, layer.gate
            B.copy_(scale * torch.randn(B.shape, generator=gen))
            if gate.learned:
                gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen))
    return model


D_IN, D_OUT = 12, 10


def make_layer(config, seed=0, fresh=False):
    """A standalone CGCLoRALinear on a 12 -> 10 nn.Linear, `randomize`d unless
    ``fresh``."""
    torch.manual_seed(seed)
    layer = CGCLoRALinear(nn.Linear(D_IN, D_OUT), config)
    return layer if fresh else randomize(layer, seed + 1)


def tiny_framework(clusters, config=None, seed=1, **kwargs):
    """A 1+N over `tiny_base` whose sets are `randomize`d (each changes the outputs)."""
    config = config or AdapterConfig.cgc_lora(rank=6, alpha=12, n_common=2,
                                              n_specific=1)
    fw = OnePlusN(tiny_base(), clusters, config, tokenizer=TOK, **kwargs)
    for k, s in enumerate(fw.sets.values()):
        randomize(s, seed + k)
    return fw


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


def same_bits(a, b) -> bool:
    """The same tensor bit for bit (NaN included, unlike torch.equal)."""
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def state(model) -> dict:
    """A copy of every tensor of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before: dict) -> None:
    """Every tensor of ``model`` bit for bit as in ``before`` (a `state`)."""
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert same_bits(after[k], v), k
