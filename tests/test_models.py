"""The central model: shipped weights, general skill, deterministic recipe."""
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from cgc_edu.models.pretraining import copy_accuracy, corpus_line, pretrain
from cgc_edu.data import build_tokenizer
from cgc_edu.models import ASSETS_DIR, central_config, load_central_model


@pytest.fixture(scope="module")
def central():
    return load_central_model()


def test_shipped_weights_load_as_a_small_llama(central):
    weights = ASSETS_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 10 * 2**20
    assert isinstance(central, LlamaForCausalLM) and not central.training
    expected = central_config()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(central.config, key) == getattr(expected, key)
    assert central.config.vocab_size == len(build_tokenizer())


def test_shipped_tokenizer_matches_the_built_one():
    shipped, built = AutoTokenizer.from_pretrained(ASSETS_DIR), build_tokenizer()
    text = "reverse:cab=bac 123|xyz"
    assert shipped(text)["input_ids"] == built(text)["input_ids"]
    assert shipped.eos_token_id == built.eos_token_id


@pytest.mark.slow
def test_central_model_copies_strings(central):
    # The general skill it was pretrained for, on words it has (almost surely) never seen.
    assert copy_accuracy(central, n=100, seed=7) > 0.9
    assert copy_accuracy(central, n=100, seed=7, delimiter="=") > 0.9


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m cgc_edu.models.pretraining"):
        load_central_model(tmp_path)


@pytest.mark.slow
def test_recipe_is_deterministic():
    assert corpus_line(random.Random(3)) == corpus_line(random.Random(3))
    a, b = (pretrain(steps=2, batch_size=4, seed=0, progress=False) for _ in range(2))
    c = pretrain(steps=2, batch_size=4, seed=1, progress=False)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_models_run_their_own_forwards_not_hub_kernels():
    # transformers >= 5.25 kernelizes from_pretrained models by default when the `kernels`
    # package is installed (train() does it again); a fused block could bypass the adapters.
    assert not getattr(load_central_model(), "use_kernels", False)
    pytest.importorskip("kernels")
    from cgc_edu import AdapterConfig, add_adapters

    model = LlamaForCausalLM.from_pretrained(ASSETS_DIR)
    model.set_use_kernels(True)                    # what those versions do by default
    assert model.use_kernels
    add_adapters(model, AdapterConfig.cgc_lora(rank=3, n_tasks=2))
    model.train()
    assert not model.use_kernels
