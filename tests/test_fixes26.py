"""Regression tests of issue 26's three confirmed failures: a serving cache that missed gate
overrides and scaling changes, 1+N's merged model on GPT-2 (Conv1D), and the exercises'
results folder outside an editable install."""
import os

import pytest
import torch

from cgc_edu import AdapterConfig, add_adapters, export_peft_lora, task_context
from cgc_edu.adapters.injection import adapter_config, adapter_layers
from cgc_edu.course.counterfactual import override_gate
from cgc_edu.course.exercises import stored_results_folder
from cgc_edu.framework import OnePlusN
from cgc_edu.utils import relative_difference

from tiny_models import gpt2, randomize, tiny_base, tiny_framework  # tests/

CGC = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)


def test_a_gate_override_inside_one_kept_context_changes_the_answer():
    model = randomize(add_adapters(tiny_base(), CGC)).eval()
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
    model = randomize(add_adapters(tiny_base(), CGC)).eval()
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


def test_one_plus_n_on_gpt2_merges_serves_hot_and_exports_in_conv1d_layout(tmp_path):
    from peft import PeftModel

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_common=2, n_specific=1)
    fw = OnePlusN(gpt2(), {"a": ["t0", "t1"], "b": ["t2", "t3"]}, config, hot_merge=True)
    for s in fw.sets.values():
        randomize(s, 1)
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


# ------------------------------------------------- task t as one LoRA, one function
def unfolded_delta(layer, task_id):
    """dW_t = (alpha/r) sum_e g_t,e B_e A_e, expert by expert, nothing folded."""
    g = layer.gate(torch.tensor([task_id]))[0]
    return sum(layer.scaling * g[e] * layer.lora_B[e] @ layer.lora_A[e]
               for e in range(layer.n_experts))


@pytest.mark.parametrize("config", [
    AdapterConfig.lora(rank=4), AdapterConfig.independent(rank=4, n_tasks=3),
    AdapterConfig.moe_lora(rank=4, n_tasks=3, n_experts=4, budget="total"), CGC,
    AdapterConfig.cgc_lora(rank=6, n_tasks=3, gate="uniform", use_rslora=True),
], ids=["lora", "independent", "moe_lora", "cgc_lora", "cgc_uniform_rslora"])
def test_task_lora_folds_gate_and_scaling_into_b(config):
    model = randomize(add_adapters(tiny_base(), config))
    layer = next(iter(adapter_layers(model).values()))
    ids = torch.arange(config.n_tasks)
    A_t, Bt_t = layer.task_lora(ids)
    k = config.experts_per_task * config.expert_rank
    assert A_t.shape == (config.n_tasks, k, layer.in_features)
    assert Bt_t.shape == (config.n_tasks, k, layer.out_features)
    for t in range(config.n_tasks):
        want = unfolded_delta(layer, t)
        assert relative_difference(Bt_t[t].T @ A_t[t], want) < 1e-6
        assert relative_difference(layer.delta_weight(t), want) < 1e-6


def test_rslora_is_a_config_option_saved_with_the_config(tmp_path):
    from cgc_edu import load_adapters, save_adapters

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, use_rslora=True)
    assert config.scaling == pytest.approx(12 / 6 ** 0.5)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in config.to_dict().items() if k != "use_rslora"}
    assert AdapterConfig.from_dict(legacy).use_rslora is False   # configs saved before
    with pytest.raises(ValueError, match="use_rslora"):
        AdapterConfig(use_rslora="yes")
    model = randomize(add_adapters(tiny_base(), config))
    assert {l.scaling for l in adapter_layers(model).values()} == {config.scaling}
    save_adapters(model, tmp_path)
    loaded = load_adapters(tiny_base(), tmp_path)
    assert adapter_config(loaded).use_rslora is True
    tokens, ids = torch.randint(4, 40, (3, 6)), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, task_ids=ids).logits,
                                   model(tokens, task_ids=ids).logits)


def test_rslora_exports_to_peft_with_the_same_logits(tmp_path):
    from peft import PeftModel

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, use_rslora=True)
    model = randomize(add_adapters(tiny_base(), config)).eval()
    tokens = torch.randint(4, 40, (2, 6))
    export_peft_lora(model, 1, tmp_path)
    served = PeftModel.from_pretrained(tiny_base(), str(tmp_path)).eval()
    with torch.no_grad():
        want = model(tokens, task_ids=torch.tensor([1, 1])).logits
        assert relative_difference(served(tokens).logits, want) < 1e-5


# ------------------------------------- 1+N's kept models see what the layer's key sees
def one_plus_n(hot_merge):
    return tiny_framework({"a": ["t0", "t1"], "b": ["t2", "t3"]}, hot_merge=hot_merge)


@pytest.mark.parametrize("hot_merge", [False, True], ids=["serving_bank", "hot_copy"])
@pytest.mark.parametrize("change", ["gate_hook", "scaling"])
def test_one_plus_n_sees_a_gate_hook_or_a_scaling_change_between_calls(hot_merge,
                                                                        change):
    fw = one_plus_n(hot_merge)
    tokens = torch.randint(4, 40, (2, 6))
    cluster, local = fw.route("t1")

    def answer():   # what 1+N serves for t1: its hot copy, or its serving bank
        with torch.no_grad():
            if hot_merge:
                return fw._hot_model("t1")(tokens).logits
            ids = torch.tensor([fw.tasks.index("t1")] * 2)
            return fw.serving_model()(tokens, task_ids=ids).logits

    def routed():   # the set itself, no kept model
        with torch.no_grad():
            ids = torch.tensor([local, local])
            return fw.sets[cluster](tokens, task_ids=ids).logits

    before = answer()
    if change == "gate_hook":
        with override_gate(fw.sets[cluster], local, "zero:0"):
            changed, want = answer(), routed()
        assert relative_difference(answer(), before) < 1e-6   # undone after the block
    else:
        for layer in adapter_layers(fw.sets[cluster]).values():
            layer.scaling *= 3
        changed, want = answer(), routed()
    assert (changed - before).abs().max() > 1e-3
    assert relative_difference(changed, want) < 1e-5


# ------------------------------------------------- peft idioms: merged_copy, train()
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_copy_is_a_plain_base_model_with_the_tasks_weights(arch):
    from cgc_edu import merged_copy

    base = tiny_base() if arch == "llama" else gpt2()
    model = randomize(add_adapters(base, CGC)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(4, 40, (2, 7))
    for task in range(3):
        plain = merged_copy(model, task)
        assert type(plain) is type(base) and not adapter_layers(plain)
        assert not hasattr(plain, "_cgc")
        with torch.no_grad():
            want = model(tokens, task_ids=torch.tensor([task, task])).logits
            assert relative_difference(plain(tokens).logits, want) < 1e-5
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)     # model untouched
    with pytest.raises(ValueError, match="merged_copy: task id 3 is out of range"):
        merged_copy(model, 3)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_train_leaves_the_models_mode_as_it_found_it(mode):
    from cgc_edu.data import build_tokenizer, make_tiny_tasks
    from cgc_edu.train import train

    model = add_adapters(tiny_base(), CGC).train(mode == "train")
    data = make_tiny_tasks(seed=0, tasks=["reverse", "first", "last"], n_train=8,
                           n_low=4, n_validation=0, n_test=0)["train"]
    train(model, data, build_tokenizer(), steps=2, batch_size=4, progress=False)
    assert all(m.training == (mode == "train") for m in model.modules())


def test_the_merged_task_has_one_record_the_layers():
    """The router reads the merged task from its layers instead of keeping a copy: a merge
    made through the model or on the layers alone is seen alike, and so is undoing it."""
    from cgc_edu import merge_task, unmerge

    model = randomize(add_adapters(tiny_base(), CGC)).eval()
    router = model._cgc.router
    tokens = torch.randint(4, 40, (2, 5))
    assert router.merged_task is None
    merge_task(model, 1)
    assert router.merged_task == 1
    with pytest.raises(ValueError, match="task 1 is merged"):
        model(tokens, task_ids=torch.tensor([0, 1]))
    unmerge(model)
    assert router.merged_task is None
    for layer in adapter_layers(model).values():      # merged layer by layer, by hand
        layer.merge(2)
    assert router.merged_task == 2
    with pytest.raises(ValueError, match="task 2 is merged"):
        with task_context(model, torch.tensor([0, 0])):
            pass
    merged = model(tokens).logits                     # no ids needed: task 2 is in W0
    unmerge(model)
    torch.testing.assert_close(merged, model(tokens, task_ids=torch.tensor([2, 2])).logits)
