"""Serving: the layer's inference path (one expert, or the gate folded into B), its reuse of
gathered weights while decoding, and the 1+N serving model that answers every cluster's
tasks in one pass."""

import pytest
import torch

from cgc_edu import AdapterConfig, merge_task
from cgc_edu.data import make_tiny_tasks
from cgc_edu.framework import OnePlusN, prior_clusters, unique_parameter_bytes
from cgc_edu.adapters.injection import adapter_layers

from tiny_models import (D_IN, D_OUT, TOK, Seen, make_layer, spy_on_generate,  # tests/
                         tiny_base, tiny_framework)
from cgc_edu import add_adapters, task_context
from cgc_edu.course.counterfactual import override_gate
from cgc_edu.utils import relative_difference
from tiny_models import gpt2, randomize  # tests/


def reference(layer, x, task_ids):
    """The layer's equation through the dense bank (every expert, gate-weighted): no fast path."""
    g = layer.gate(task_ids) * layer.scaling                               # (batch, E)
    h = torch.einsum("bnd,erd->bner", x, layer.lora_A)
    delta = torch.einsum("bner,be,eor->bno", h, g, layer.lora_B)
    return layer.base_layer(x) + delta


FAST = {  # |S_t| = 1: the configs the one-expert path serves
    "lora": AdapterConfig.lora(rank=4, alpha=8),
    "lora_scaling_1": AdapterConfig.lora(rank=4, alpha=4),
    "independent_3": AdapterConfig.independent(rank=4, n_tasks=3),
    "independent_8_total": AdapterConfig.independent(rank=16, alpha=4, n_tasks=8, budget="total"),
    "independent_1_task": AdapterConfig.independent(rank=4, n_tasks=1),
}


@pytest.mark.parametrize("name", sorted(FAST))

def test_one_expert_path_equals_the_dense_reference_with_gradients(name):
    layer = make_layer(FAST[name])
    ids = torch.tensor([0, 2, 1, 2, 0, 1, 1])[: 7] % layer.config.n_tasks
    x = torch.randn(7, 5, D_IN, requires_grad=True)
    params = [layer.lora_A, layer.lora_B, x]
    got = layer(x, ids)
    want = reference(layer, x, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * w).sum(), params),
                    torch.autograd.grad((want * w).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_decoding_reuses_the_gather_only_while_ids_and_weights_are_unchanged():
    layer = make_layer(FAST["independent_3"]).eval()
    x, ids = torch.randn(4, 3, D_IN), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        first = layer(x, ids)
        kept = layer._serving_cache.value
        assert kept is not None
        torch.testing.assert_close(layer(x, ids), first, rtol=0, atol=0)
        assert layer._serving_cache.value is kept     # reused, not rebuilt
        ids[0] = 2                                   # the same tensor, changed in place
        torch.testing.assert_close(layer(x, ids), reference(layer, x, ids), rtol=1e-5, atol=1e-5)
        layer.lora_B.mul_(2.0)                       # an optimizer step or load_adapters
        torch.testing.assert_close(layer(x, ids), reference(layer, x, ids), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():                     # inference tensors: no version counter
        fresh = ids.clone()
        torch.testing.assert_close(layer(x, fresh), reference(layer, x, fresh), rtol=1e-5, atol=1e-5)
    # with autograd on, nothing kept is used: gradients reach A and B
    out = layer(x, ids)
    out.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0


MULTI = {  # |S_t| > 1: served with the gate folded into each sample's B
    "cgc_lora": AdapterConfig.cgc_lora(rank=6, n_tasks=3, n_common=2, n_specific=1),
    "cgc_lora_total_8": AdapterConfig.cgc_lora(rank=20, n_tasks=8, n_common=2, n_specific=1,
                                               budget="total"),
    "moe_lora": AdapterConfig.moe_lora(rank=4, n_tasks=3, n_experts=4, budget="total"),
    "cgc_uniform": AdapterConfig.cgc_lora(rank=6, n_tasks=3, gate="uniform"),
}


def randomize_gate(layer, seed=1):
    if layer.gate.learned:
        with torch.no_grad():
            layer.gate.weight.copy_(torch.randn(layer.gate.weight.shape,
                                                generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("name", sorted(MULTI))

def test_serving_path_with_the_gate_folded_in_equals_the_training_path(name):
    layer = make_layer(MULTI[name]).eval()
    randomize_gate(layer)
    ids = torch.tensor([0, 2, 1, 2, 0, 1, 1]) % layer.config.n_tasks
    x = torch.randn(7, 5, D_IN)
    trained_path = layer(x, ids)                      # autograd on: the training path
    assert trained_path.requires_grad
    with torch.no_grad():
        served = layer(x, ids)
        assert layer._serving_cache.value is not None             # the folded path ran
    torch.testing.assert_close(served, trained_path.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(served, reference(layer, x, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST))

def test_serving_path_of_one_expert_presets_equals_the_reference(name):
    layer = make_layer(FAST[name]).eval()
    ids = torch.tensor([0, 2, 1, 2, 0]) % layer.config.n_tasks
    x = torch.randn(5, 4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, ids), reference(layer, x, ids), rtol=1e-5, atol=1e-5)
        assert layer._serving_cache.value is not None


@pytest.mark.parametrize("name", sorted(FAST) + sorted(MULTI))

def test_one_request_alone_equals_the_reference(name):
    layer = make_layer({**FAST, **MULTI}[name]).eval()
    randomize_gate(layer)
    with torch.no_grad():
        for task in range(layer.config.n_tasks):
            x, ids = torch.randn(1, 6, D_IN), torch.tensor([task])
            torch.testing.assert_close(layer(x, ids), reference(layer, x, ids), rtol=1e-5, atol=1e-5)
            assert layer._serving_cache.value is not None


def test_hooks_on_the_base_layer_still_run():
    layer = make_layer(MULTI["cgc_lora"])
    seen = []
    handle = layer.base_layer.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    x, ids = torch.randn(2, 3, D_IN), torch.tensor([0, 1])
    layer(x, ids)
    with torch.no_grad():
        layer.eval()(x, ids)
    handle.remove()
    layer(x, ids)
    assert seen == [torch.Size([2, 3, D_OUT])] * 2


def test_folded_gate_is_refolded_when_the_gate_or_the_ids_change():
    layer = make_layer(MULTI["cgc_lora"]).eval()
    x, ids = torch.randn(4, 3, D_IN), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        first = layer(x, ids)
        torch.testing.assert_close(layer(x, ids), first, rtol=0, atol=0)
        randomize_gate(layer, seed=3)                # the gate trained or loaded in place
        moved = layer(x, ids)
        assert (moved - first).abs().max() > 1e-3
        torch.testing.assert_close(moved, reference(layer, x, ids), rtol=1e-5, atol=1e-5)
        ids[0] = 2                                   # the same tensor, changed in place
        torch.testing.assert_close(layer(x, ids), reference(layer, x, ids), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- 1+N serving model

@pytest.fixture(scope="module")

def clusters():
    return prior_clusters(make_tiny_tasks(seed=0, n_train=4, n_low=2, n_validation=0, n_test=0)["train"])


def set_logits(fw, input_ids, tasks):
    """Each request through its own cluster's set with its local id: the reference."""
    rows = []
    for i, task in enumerate(tasks):
        cluster, local = fw.route(task)
        rows.append(fw.sets[cluster](input_ids[i: i + 1], task_ids=torch.tensor([local])).logits)
    return torch.cat(rows)


def served_logits(fw, input_ids, tasks):
    ids = torch.tensor([fw.tasks.index(t) for t in tasks])
    return fw.serving_model()(input_ids, task_ids=ids).logits


@pytest.mark.parametrize("preset", ["cgc", "cgc_total_shared_gate", "moe", "mixed_ranks"])

def test_serving_model_answers_every_cluster_like_its_set_in_one_pass(clusters, preset):
    names = list(clusters)
    configs = {
        "cgc": None,
        "cgc_total_shared_gate": AdapterConfig.cgc_lora(rank=12, alpha=4, n_common=2, n_specific=1,
                                                         budget="total", shared_gate=True),
        "moe": AdapterConfig.moe_lora(rank=4, n_experts=2),
        # clusters may differ in rank and in the modules they adapt: padded with zeros
        "mixed_ranks": {names[0]: AdapterConfig.cgc_lora(rank=6, n_tasks=len(clusters[names[0]]),
                                                         target_modules=["q_proj", "v_proj"]),
                        names[1]: AdapterConfig.lora(rank=2, n_tasks=len(clusters[names[1]]),
                                                     target_modules=["v_proj", "down_proj"])},
    }
    fw = tiny_framework(clusters, configs[preset])
    tasks = [fw.tasks[i % len(fw.tasks)] for i in (0, 5, 1, 6, 2, 7, 3, 4)]  # clusters mixed
    input_ids = torch.randint(3, len(TOK), (len(tasks), 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(served_logits(fw, input_ids, tasks), set_logits(fw, input_ids, tasks),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["cgc", "mixed_ranks"])

def test_hot_merge_answers_like_the_sets_and_never_writes_the_base(clusters, preset):
    names = list(clusters)
    config = None if preset == "cgc" else {
        names[0]: AdapterConfig.cgc_lora(rank=6, n_tasks=len(clusters[names[0]]), target_modules=["q_proj"]),
        names[1]: AdapterConfig.lora(rank=2, n_tasks=len(clusters[names[1]]), target_modules=["down_proj"])}
    fw = tiny_framework(clusters, config)
    before = {k: v.clone() for k, v in fw.base.state_dict().items()}
    input_ids = torch.randint(3, len(TOK), (2, 6), generator=torch.Generator().manual_seed(1))
    cold = [fw.generate(["abc=", "xy="], task, max_new_tokens=4) for task in fw.tasks]
    fw.hot_merge = True
    with torch.no_grad():
        for task in [fw.tasks[0], fw.tasks[0], fw.tasks[-1], fw.tasks[2]]:
            hot = fw._hot_model(task)
            assert not adapter_layers(hot)                    # a plain model, like a merged one
            torch.testing.assert_close(hot(input_ids).logits, set_logits(fw, input_ids, [task] * 2),
                                       rtol=1e-5, atol=1e-5)
    assert [fw.generate(["abc=", "xy="], task, max_new_tokens=4) for task in fw.tasks] == cold
    fw.generate("abc=", fw.tasks[2])
    kept = fw._hot_cache.key
    fw.generate("xy=", fw.tasks[2])                           # the same task: nothing refilled
    assert fw._hot_cache.key is kept
    with torch.no_grad():                                     # an adapter changes: refilled
        next(iter(adapter_layers(fw.sets[fw.route(fw.tasks[2])[0]]).values())).lora_B.mul_(3.0)
        torch.testing.assert_close(fw._hot_model(fw.tasks[2])(input_ids).logits,
                                   set_logits(fw, input_ids, [fw.tasks[2]] * 2), rtol=1e-5, atol=1e-5)
    after = fw.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # the shared base is untouched


def test_serving_model_follows_changes_to_the_sets_and_shares_the_base(clusters):
    fw = tiny_framework(clusters)
    tasks = fw.tasks
    input_ids = torch.randint(3, len(TOK), (len(tasks), 5), generator=torch.Generator().manual_seed(1))
    rng = torch.get_rng_state()
    served = fw.serving_model()
    assert torch.equal(torch.get_rng_state(), rng), "building the serving model moved the caller's RNG"
    assert fw.serving_model() is served                        # unchanged sets: kept
    before = served_logits(fw, input_ids, tasks)
    with torch.no_grad():                                      # like an optimizer step on one set
        layer = next(iter(adapter_layers(fw.sets[fw.route(tasks[-1])[0]]).values()))
        layer.lora_A.add_(0.3)
    after = served_logits(fw, input_ids, tasks)
    with torch.no_grad():
        torch.testing.assert_close(after, set_logits(fw, input_ids, tasks), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    # one base in memory: the serving model adds its bank, not a copy of the base
    bank = sum(l.lora_A.numel() + l.lora_B.numel() for l in adapter_layers(fw.serving_model()).values()) * 4
    assert unique_parameter_bytes(fw.base, fw.serving_model()) == unique_parameter_bytes(fw.base) + bank
    with pytest.raises(ValueError, match="shared by the 2 adapter sets"):
        merge_task(fw.serving_model(), 0)
    # generate answers through it, in request order, one task or many
    prompts = ["abc=", "hello=", "xy=", "qq="]
    mixed = fw.generate(prompts, [tasks[0], tasks[-1], tasks[1], tasks[-2]], max_new_tokens=3)
    assert mixed[1] == fw.generate(prompts[1], tasks[-1], max_new_tokens=3)


def test_generate_hands_the_serving_model_tensors_on_the_models_device(clusters, monkeypatch):
    # "meta" exists everywhere and computes nothing: a hard-coded CPU tensor would show as "cpu".
    fw = OnePlusN(tiny_base().to("meta"), clusters, AdapterConfig.cgc_lora(rank=6, n_common=2, n_specific=1),
                  tokenizer=TOK)
    served = fw.serving_model()
    assert {p.device for p in served.parameters()} == {torch.device("meta")}
    seen = spy_on_generate(monkeypatch, served)
    with pytest.raises(Seen):
        fw.generate(["abc=", "xy="], [fw.tasks[0], fw.tasks[-1]], max_new_tokens=2)
    assert set(seen.values()) == {torch.device("meta")} and len(seen) == 3


# ------------------------- kept models see gate overrides and scaling changes; GPT-2's 1+N

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
