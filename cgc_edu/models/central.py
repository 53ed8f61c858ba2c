"""The central model: the "1" of 1+N, a tiny Llama that every adapter builds on.

It is a plain ``transformers.LlamaForCausalLM`` over TinyTasks' character vocabulary,
pretrained by ``python -m cgc_edu.models.pretraining`` on a general synthetic corpus (copying,
continuing letter and digit runs, repeating patterns). Its weights ship with the package
as safetensors in ``cgc_edu/models/assets/``, next to its config and tokenizer files, so that
``LlamaForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read the folder
the usual way, and nothing is downloaded.

Taught in: notebooks/00_tour.ipynb
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from ..data.tinytasks import build_tokenizer
from ..utils import PLAIN_TORCH, no_progress_bars

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def central_config() -> LlamaConfig:
    """The central model's architecture: hidden 128, 4 layers, 4 heads, 52-character vocab.

    Tiny on purpose: adapter training on it takes seconds on a laptop CPU.
    """
    tok = build_tokenizer()
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)


def load_central_model(path: str | Path | None = None) -> LlamaForCausalLM:
    """Load the pretrained central model (in eval mode) from ``path`` or the shipped assets.

    Raises FileNotFoundError with the command that recreates the weights if they are missing.

    Taught in: notebooks/00_tour.ipynb
    """
    path = Path(path) if path is not None else ASSETS_DIR
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no central model weights at {path / 'model.safetensors'}; recreate them with "
            "`python -m cgc_edu.models.pretraining` (or pass the folder you saved them to)")
    with no_progress_bars():
        model = LlamaForCausalLM.from_pretrained(path, **PLAIN_TORCH)
    return model.eval()
