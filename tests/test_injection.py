"""Injection into transformers and plain models, task routing, merging and its errors."""
import copy

import pytest
import torch
from torch import nn

from cgc_edu import (AdapterConfig, CGCLoRALinear, add_adapters, adapter_config, adapter_layers,
                     merge_task,
                     remove_adapters, task_context, trainable_parameters, unmerge)
from cgc_edu.adapters.saving import load_adapters, save_adapters

from tiny_models import assert_same_state, randomize, state, tiny_llama  # tests/tiny_models.py
from cgc_edu import task_context
from cgc_edu.utils import relative_difference
from tiny_models import gpt2, tiny_base  # tests/

TARGETS = ["q_proj", "v_proj", "down_proj"]


def adapted(config=None, seed=0):
    config = config or AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS)
    return randomize(add_adapters(tiny_llama(seed), config))


@pytest.fixture

def inputs():
    torch.manual_seed(3)
    return torch.randint(1, 40, (4, 9)), torch.tensor([0, 2, 1, 2])


def test_fresh_adapters_give_base_outputs_exactly(inputs):
    x, ids = inputs
    base = tiny_llama()
    model = add_adapters(copy.deepcopy(base), AdapterConfig.cgc_lora(rank=6, n_tasks=3))
    assert torch.equal(model(x, task_ids=ids).logits, base(x).logits)


def test_adapters_follow_the_models_mode(inputs):
    # an eval model (load_central_model returns one) stays in eval: no adapter dropout
    x, ids = inputs
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3, dropout=0.5, target_modules=TARGETS)
    model = randomize(add_adapters(tiny_llama().eval(), config))
    assert not any(layer.training for layer in adapter_layers(model).values())
    with torch.no_grad():
        assert torch.equal(model(x, task_ids=ids).logits, model(x, task_ids=ids).logits)
    trained = add_adapters(tiny_llama().train(), config)
    assert all(layer.training for layer in adapter_layers(trained).values())


def test_the_config_is_read_back_and_is_the_one_given():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS)
    model = add_adapters(tiny_llama(), config)
    assert adapter_config(model) == config
    with pytest.raises(ValueError, match=r"adapter_config: .* has no adapters; call add_adapters"):
        adapter_config(tiny_llama())


def test_wraps_targets_and_freezes_base():
    model = add_adapters(tiny_llama(), AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS))
    names = list(adapter_layers(model))
    assert len(names) == 2 * len(TARGETS)
    assert all(n.rsplit(".", 1)[-1] in TARGETS for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or (".gate." in n) for n in trainable)
    default = add_adapters(tiny_llama(), AdapterConfig.lora(rank=4))
    assert "lm_head" not in adapter_layers(default) and len(adapter_layers(default)) == 14


def test_trainable_count_formulas_on_a_model():
    r, n_tasks = 6, 4
    for budget, per_module in (("per_task", lambda i, o, E: E * (r // 3) * (i + o)),
                               ("total", lambda i, o, E: r * (i + o))):
        config = AdapterConfig.cgc_lora(rank=r, n_tasks=n_tasks, gate="uniform", budget=budget,
                                        target_modules=TARGETS)
        model = add_adapters(tiny_llama(), config)
        want = sum(per_module(l.in_features, l.out_features, config.n_experts)
                   for l in adapter_layers(model).values())
        assert trainable_parameters(model) == want


def test_shared_gate_is_one_module():
    model = add_adapters(tiny_llama(), AdapterConfig.moe_lora(rank=4, n_tasks=3, shared_gate=True,
                                                              target_modules=TARGETS))
    gates = {id(l.gate) for l in adapter_layers(model).values()}
    assert len(gates) == 1
    per_module = add_adapters(tiny_llama(), AdapterConfig.moe_lora(rank=4, n_tasks=3, target_modules=TARGETS))
    gate_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".gate." in n)
    assert gate_params(per_module) == len(adapter_layers(per_module)) * gate_params(model)


def test_task_ids_keyword_and_context_agree(inputs):
    x, ids = inputs
    model = adapted()
    by_kwarg = model(x, task_ids=ids).logits
    with task_context(model, ids):
        by_context = model(x).logits
    torch.testing.assert_close(by_kwarg, by_context)
    assert model._cgc.router.task_ids is None  # nothing leaks out of a call or a context


def test_mixed_batch_equals_each_task_alone(inputs):
    x, ids = inputs
    model = adapted()
    mixed = model(x, task_ids=ids).logits
    for i in range(len(ids)):
        torch.testing.assert_close(mixed[i:i + 1], model(x[i:i + 1], task_ids=ids[i:i + 1]).logits,
                                   rtol=1e-5, atol=1e-5)


def test_generate_inside_context_and_with_keyword(inputs):
    x, ids = inputs
    model = adapted()
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with task_context(model, ids):
        out = model.generate(x, **kw)
        beams = model.generate(x, num_beams=2, **kw)
    assert out.shape == (4, 13) and beams.shape == (4, 13)
    assert torch.equal(model.generate(x, task_ids=ids, **kw), out)
    for i in range(4):  # each row is what its task alone generates
        with task_context(model, ids[i:i + 1]):
            assert torch.equal(model.generate(x[i:i + 1], **kw), out[i:i + 1])
    with task_context(model, torch.zeros(4, dtype=torch.long)):
        assert not torch.equal(model.generate(x, **kw), out)


def test_plain_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    base = copy.deepcopy(net)
    model = add_adapters(net, AdapterConfig.cgc_lora(rank=4, n_tasks=2, n_common=1, n_specific=1))
    x = torch.randn(5, 8)
    ids = torch.tensor([0, 1, 1, 0, 1])
    assert torch.equal(model(x, task_ids=ids), base(x))
    randomize(model)
    assert isinstance(model[0], CGCLoRALinear) and isinstance(model[2], CGCLoRALinear)
    assert not torch.allclose(model(x, task_ids=ids), base(x))


def test_merge_gives_unmerged_outputs_and_unmerge_restores(inputs):
    x, _ = inputs
    model = adapted()
    W0 = {n: l.base_layer.weight.detach().clone() for n, l in adapter_layers(model).items()}
    for task in range(3):
        ids = torch.full((len(x),), task)
        want = model(x, task_ids=ids).logits
        merge_task(model, task)
        torch.testing.assert_close(model(x).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x, task_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        unmerge(model)
        for n, l in adapter_layers(model).items():
            torch.testing.assert_close(l.base_layer.weight, W0[n], rtol=1e-5, atol=1e-6)


def test_unknown_target_module_is_clear_and_leaves_model_unchanged():
    model = tiny_llama()
    before = state(model)
    with pytest.raises(ValueError, match=r"target module 'qproj' matches no nn.Linear.*'q_proj'"):
        add_adapters(model, AdapterConfig.lora(rank=4, target_modules=["q_proj", "qproj"]))
    assert_same_state(model, before)
    assert all(p.requires_grad for p in model.parameters()) and not adapter_layers(model)


def test_adding_twice_is_an_error():
    model = adapted()
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model, AdapterConfig.lora(rank=4))


def test_bad_task_ids_at_model_level_leave_model_unchanged(inputs):
    x, ids = inputs
    model = adapted()
    before = state(model)
    for bad, error, match in [
        (None, ValueError, r"LlamaForCausalLM \(adapters on 6 modules, first model\.layers\.0\.self_attn"
                           r"\.q_proj\): task_ids missing.*task_context"),
        (torch.tensor([0, 1, 2, 9]), ValueError, r"LlamaForCausalLM.*: task id 9 is out of range.*\[0, 2\]"),
        (ids.float(), TypeError, "dtype torch.float32"),
        (ids[:2], ValueError, "got 2 task ids for a batch of 4"),
    ]:
        with pytest.raises(error, match=match):
            model(x, task_ids=bad) if bad is not None else model(x)
        assert model._cgc.router.task_ids is None
    with pytest.raises(ValueError, match="task id 5 is out of range"):
        with task_context(model, torch.tensor([5])):
            pass
    assert_same_state(model, before)


def test_merge_errors_leave_model_unchanged(inputs):
    x, ids = inputs
    model = adapted()
    before = state(model)
    with pytest.raises(ValueError, match=r"task id 3 is out of range"):
        merge_task(model, 3)
    with pytest.raises(TypeError, match=r"task_id=1.5 must be an int"):
        merge_task(model, 1.5)
    assert_same_state(model, before)
    merge_task(model, 1)
    merged = state(model)
    with pytest.raises(ValueError, match=r"task 1 is merged into the weights, but task ids \[0, 2\].*unmerge"):
        model(x, task_ids=ids)
    with pytest.raises(ValueError, match="task 1 is already merged"):
        merge_task(model, 2)
    assert_same_state(model, merged)
    with pytest.raises(ValueError, match="has no adapters"):
        merge_task(tiny_llama(), 0)


def count_checks(monkeypatch):
    """Count the calls of the one task-id check (AdapterConfig.check_task_ids)."""
    calls = []
    original = AdapterConfig.check_task_ids

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("where"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AdapterConfig, "check_task_ids", counted)
    return calls


def test_task_ids_are_checked_once_per_model_forward_not_per_layer(inputs, monkeypatch):
    x, ids = inputs
    model = adapted()
    assert len(adapter_layers(model)) == 6
    calls = count_checks(monkeypatch)
    model(x, task_ids=ids)
    assert len(calls) == 1 and calls[0].startswith("LlamaForCausalLM")
    calls.clear()
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.generate(x, task_ids=ids, num_beams=2, num_return_sequences=2, **kw)  # 4 forwards, batch 16
    assert len(calls) == 1 and calls[0].startswith("task_context")
    calls.clear()
    layer = next(iter(adapter_layers(model).values()))
    layer(torch.randn(4, 32), torch.tensor([0, 1, 2, 0]))  # standalone: the layer checks its own ids
    assert len(calls) == 1 and calls[0] == "model.layers.0.self_attn.q_proj"


def test_generate_expands_context_ids_for_beams_and_return_sequences(inputs):
    x, ids = inputs
    model = adapted()
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, num_beams=2, num_return_sequences=2)
    with task_context(model, ids):
        mixed = model.generate(x, **kw)
    assert mixed.shape == (8, 12)
    for i in range(4):  # each sample's two sequences are what its task alone generates
        assert torch.equal(model.generate(x[i:i + 1], task_ids=ids[i:i + 1], **kw), mixed[2 * i:2 * i + 2])


def test_every_layer_reads_the_one_resolved_tensor(inputs):
    x, ids = inputs
    model = adapted()
    seen = []
    for layer in adapter_layers(model).values():
        layer.register_forward_hook(lambda m, a, o: seen.append(m.router.ids_on(m.lora_A.device)))
    model(x, task_ids=ids)
    assert len(seen) == 6 and all(t is seen[0] for t in seen)
    assert seen[0].dtype == torch.long and torch.equal(seen[0], ids)


def test_remove_adapters_gives_back_the_bare_base(inputs):
    x, ids = inputs
    base = tiny_llama()
    base.model.embed_tokens.weight.requires_grad_(True)
    base.lm_head.weight.requires_grad_(False)  # tied to the embedding: one Parameter
    base.model.norm.weight.requires_grad_(False)
    grads = {n: p.requires_grad for n, p in base.named_parameters()}
    before, want = state(base), base(x).logits
    linears = {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    model = randomize(add_adapters(base, AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS)))
    merge_task(model, 2)  # remove_adapters unmerges first
    out = remove_adapters(model)
    assert out is base and not adapter_layers(out)
    assert {n: m for n, m in out.named_modules() if isinstance(m, nn.Linear)} == linears  # same modules
    for k, v in before.items():
        torch.testing.assert_close(out.state_dict()[k], v, rtol=0, atol=1e-6)
    assert set(out.state_dict()) == set(before)
    assert {n: p.requires_grad for n, p in out.named_parameters()} == grads
    assert not any(hasattr(out, a) for a in ("_cgc",))
    assert "generate" not in vars(out) and not out._forward_pre_hooks and not out._forward_hooks
    torch.testing.assert_close(out(x).logits, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="remove_adapters: LlamaForCausalLM has no adapters"):
        remove_adapters(out)
    again = add_adapters(out, AdapterConfig.lora(rank=4))  # and it can be adapted again
    assert len(adapter_layers(again)) == 14


def test_config_cannot_change_behind_the_models_back(tmp_path, inputs):
    x, ids = inputs
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS)
    model = randomize(add_adapters(tiny_llama(), config))
    with pytest.raises(AttributeError):
        config.n_tasks = 5
    with pytest.raises(AttributeError):
        adapter_config(model).rank = 12
    with pytest.raises(AttributeError):
        config.target_modules.append("o_proj")  # a tuple
    assert adapter_config(model) == AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS)
    want = model(x, task_ids=ids).logits
    save_adapters(model, tmp_path / "a")
    loaded = load_adapters(tiny_llama(), tmp_path / "a")
    assert adapter_config(loaded) == config
    torch.testing.assert_close(loaded(x, task_ids=ids).logits, want)


class TwoHeads(nn.Module):
    """A plain model with a body, a nested head ("classifier.dense", "classifier.out") and a score."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 6)
        self.classifier = nn.Sequential()
        self.classifier.add_module("dense", nn.Linear(6, 6))
        self.classifier.add_module("out", nn.Linear(6, 2))
        self.score = nn.Linear(6, 1)

    def forward(self, x):
        h = self.body(x)
        return self.classifier(h), self.score(h)


def test_default_targets_skip_output_heads_and_modules_to_save():
    model = add_adapters(TwoHeads(), AdapterConfig.lora(rank=2))
    assert list(adapter_layers(model)) == ["body"]                 # heads (and what is inside them) excluded
    model = add_adapters(TwoHeads(), AdapterConfig.lora(rank=2, modules_to_save=("classifier",)))
    assert list(adapter_layers(model)) == ["body"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.dense.weight", "classifier.out.bias"} <= trainable
    assert not any(n.startswith("score.") for n in trainable)


def test_modules_to_save_in_the_config():
    config = AdapterConfig.lora(rank=2, modules_to_save="classifier")
    assert config.modules_to_save == ("classifier",)               # a tuple: the config is frozen
    assert config.to_dict()["modules_to_save"] == ["classifier"]
    assert AdapterConfig.from_dict(config.to_dict()) == config
    for bad in ((), ("",), (3,)):
        with pytest.raises(ValueError, match=r"AdapterConfig.modules_to_save=.*module names"):
            AdapterConfig.lora(rank=2, modules_to_save=bad)


def test_remove_adapters_restores_a_trained_head():
    model = add_adapters(TwoHeads(), AdapterConfig.lora(rank=2, modules_to_save=("out",)))
    before = model.classifier.out.weight.detach().clone()
    with torch.no_grad():
        model.classifier.out.weight.add_(1.0)                       # "training"
    bare = remove_adapters(model)
    assert torch.equal(bare.classifier.out.weight, before)
    assert isinstance(bare.body, nn.Linear) and all(p.requires_grad for p in bare.parameters())


# ------------------------------------------- merged_copy, the merged task's one record

CGC = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)


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
