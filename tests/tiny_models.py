"""A one-layer Llama over the TinyTasks tokenizer, for the tests of the 1+N framework, the
affinity measures and serving (one builder, so the three test files test the same model)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cgc_edu.data import build_tokenizer

TOK = build_tokenizer()


def tiny_base(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOK), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=True, pad_token_id=TOK.pad_token_id,
                         bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id)
    return LlamaForCausalLM(config).eval()
