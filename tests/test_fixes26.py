"""Regression tests of issue 26's three confirmed failures: a serving cache that missed gate
overrides and scaling changes, 1+N's merged model on GPT-2 (Conv1D), and the exercises'
results folder outside an editable install."""
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cgc_edu import AdapterConfig, add_adapters, export_peft_lora, task_context
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.course.counterfactual import override_gate
from cgc_edu.course.exercises import stored_results_folder
from cgc_edu.framework import OnePlusN
from cgc_edu.utils import relative_difference

from tiny_models import tiny_base  # tests/tiny_models.py

CGC = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)


def trained_like(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)
            if layer.gate.learned:
                layer.gate.weight.copy_(torch.randn(layer.gate.weight.shape, generator=g))
    return model


def test_a_gate_override_inside_one_kept_context_changes_the_answer():
    model = trained_like(add_adapters(tiny_base(), CGC)).eval()
    tokens = torch.randint(4, 40, (3, 6))
    ids = torch.tensor([0, 1, 2])
    with torch.no_grad(), task_context(model, ids):
        before = model(tokens).logits        # fills the serving cache for this ids tensor
        with override_gate(model, 0, "zero:2"):
            overridden = model(tokens).logits
        after = model(tokens).logits
    fresh = model.eval()
    with torch.no_grad(), override_gate(fresh, 0, "zero:2"):
        want = fresh(tokens, task_ids=torch.tensor([0, 1, 2])).logits
    assert (overridden[0] - before[0]).abs().max() > 1e-3      # the override is seen ...
    torch.testing.assert_close(overridden, want)                # ... as a fresh call sees it
    torch.testing.assert_close(after, before)                   # and undone after


def test_a_scaling_change_inside_one_kept_context_changes_the_answer():
    model = trained_like(add_adapters(tiny_base(), CGC)).eval()
    tokens = torch.randint(4, 40, (3, 6))
    ids = torch.tensor([0, 1, 2])
    with torch.no_grad(), task_context(model, ids):
        before = model(tokens).logits
        for layer in adapter_layers(model).values():
            layer.scaling *= 3                                    # what rsLoRA's knob does
        scaled = model(tokens).logits
    with torch.no_grad():
        want = model(tokens, task_ids=torch.tensor([0, 1, 2])).logits
    assert (scaled - before).abs().max() > 1e-3
    torch.testing.assert_close(scaled, want)


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=48, n_embd=32, n_layer=2, n_head=2,
                                      n_positions=32, bos_token_id=0, eos_token_id=0)).eval()


def test_one_plus_n_on_gpt2_merges_serves_hot_and_exports_in_conv1d_layout(tmp_path):
    from peft import PeftModel

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_common=2, n_specific=1)
    fw = OnePlusN(gpt2(), {"a": ["t0", "t1"], "b": ["t2", "t3"]}, config, hot_merge=True)
    for s in fw.sets.values():
        trained_like(s, seed=1)
    tokens = torch.randint(0, 48, (2, 7))
    for task in ("t1", "t2"):
        cluster, local = fw.route(task)
        with torch.no_grad():
            want = fw.sets[cluster](tokens, task_ids=torch.tensor([local, local])).logits
            merged = fw.merged_model(task)(tokens).logits
            hot = fw._hot_model(task)(tokens).logits
        assert relative_difference(merged, want) < 1e-5
        assert relative_difference(hot, want) < 1e-5
        folder = fw.export_peft(task, tmp_path / task)
        served = PeftModel.from_pretrained(gpt2(), str(folder)).eval()
        with torch.no_grad():
            assert relative_difference(served(tokens).logits, want) < 1e-5


def test_the_exercises_find_the_repository_results_from_the_notebooks_folder(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert stored_results_folder(os.path.join(repo, "notebooks")) == \
        stored_results_folder(repo)
    assert (stored_results_folder(repo) / "results.csv").is_file()
    with pytest.raises(FileNotFoundError, match=r"no results/results.csv in .*results=load_results"):
        stored_results_folder(tmp_path)
