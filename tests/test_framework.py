"""The 1+N framework: routing, shared base memory, merging, save/load (affinity and clustering:
test_affinity.py)."""
import json

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from cgc_edu import AdapterConfig, merge_task, remove_adapters, task_context, unmerge
from cgc_edu.adapters.saving import export_peft_lora, load_adapters, save_adapters
from cgc_edu.train import train
from cgc_edu.data import TASKS, make_tiny_tasks
from cgc_edu.framework import (OnePlusN, base_fingerprint, prior_clusters, subset_tasks,
                               unique_parameter_bytes)
from cgc_edu.adapters.injection import adapter_layers

from tiny_models import TOK, tiny_base, tiny_framework  # tests/tiny_models.py

CONFIG = AdapterConfig.cgc_lora(rank=6, alpha=12, n_common=2, n_specific=1, budget="per_task")


@pytest.fixture(scope="module")
def tasks():
    return make_tiny_tasks(seed=0, n_train=24, n_low=8, n_validation=0, n_test=6)


@pytest.fixture
def framework(tasks):
    return tiny_framework(prior_clusters(tasks["train"]), CONFIG)


# ------------------------------------------------------------------ 1+N
def test_sets_share_the_base_weights_and_memory_is_one_base_plus_small_sets(framework):
    base = framework.base
    for s in framework.sets.values():
        for name, layer in adapter_layers(s).items():
            assert layer.base_layer.weight.data_ptr() == base.get_submodule(name).weight.data_ptr()
        assert s.model.embed_tokens.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    adapter_bytes = sum(p.numel() * p.element_size() for s in framework.sets.values()
                        for p in s.parameters() if p.requires_grad)
    mem = framework.memory()
    assert mem["base_bytes"] == base_bytes
    assert mem["total_bytes"] == base_bytes + adapter_bytes == unique_parameter_bytes(base, *framework.sets.values())


def test_routing_matches_each_cluster_set_with_local_ids(framework, tasks):
    prompts = ["abc=", "xyz=", "hello=", "qq="]
    names = ["last", "reverse", "ends", "shift"]
    got = framework.generate(prompts, names, max_new_tokens=4)
    for prompt, task, answer in zip(prompts, names, got):
        cluster, local = framework.route(task)
        assert framework.generate(prompt, task, max_new_tokens=4) == answer
        model = framework.sets[cluster]
        enc = TOK([prompt], return_tensors="pt")
        with task_context(model, torch.tensor([local])):
            out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=TOK.pad_token_id)
        assert TOK.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == answer
    # the clusters' sets really differ (else routing would be untestable)
    enc = TOK(["abc="], return_tensors="pt")
    a = framework.sets["transform"](**enc, task_ids=torch.tensor([0])).logits
    b = framework.sets["extract"](**enc, task_ids=torch.tensor([0])).logits
    assert not torch.allclose(a, b)


def test_a_request_that_names_no_task_reaches_the_untouched_central_model(framework):
    from cgc_edu.train import greedy_decode

    prompts = ["abc=", "xyz=", "hello="]
    bare = greedy_decode(framework.base, TOK, prompts, max_new_tokens=4)
    assert framework.generate(prompts, None, max_new_tokens=4) == bare
    assert framework.generate("abc=", None, max_new_tokens=4) == bare[0]
    mixed = framework.generate(prompts, [None, "reverse", None], max_new_tokens=4)
    routed = framework.generate("xyz=", "reverse", max_new_tokens=4)
    assert mixed == [bare[0], routed, bare[2]] and routed != bare[1]
    framework.hot_merge = True
    assert framework.generate(prompts, [None, "reverse", None], max_new_tokens=4) == mixed
    with pytest.raises(KeyError, match="unknown task"):
        framework.generate(prompts, [None, "nope", None])


def test_unknown_task_lists_known_ones(framework):
    with pytest.raises(KeyError, match=r"unknown task 'sort'.*known tasks are \['reverse', 'shift'"):
        framework.generate("abc=", "sort")
    with pytest.raises(KeyError, match="unknown task 'sort'"):
        framework.merged_model("sort")


def test_bad_clusters_fail_clearly():
    with pytest.raises(ValueError, match="task 'a' is in clusters 'x' and 'y'"):
        OnePlusN(tiny_base(), {"x": ["a", "b"], "y": ["a"]}, CONFIG)
    with pytest.raises(TypeError, match="non-empty dict"):
        OnePlusN(tiny_base(), ["a", "b"], CONFIG)


def test_a_framework_without_a_tokenizer_builds_merges_and_exports_but_asks_for_one_to_read(tasks, tmp_path):
    """A 1+N may be built on any model: its tokenizer is its own, never TinyTasks' by default."""
    fw = OnePlusN(tiny_base(), prior_clusters(tasks["train"]), CONFIG)
    assert fw.tokenizer is None
    fw.merged_model("reverse"), fw.serving_model(), fw.export_peft("reverse", tmp_path / "peft")
    for call, name in [(lambda: fw.generate("abc=", "reverse"), "generate"),
                       (lambda: fw.train(tasks["train"], steps=1, progress=False), "train"),
                       (lambda: fw.score_items(tasks["test"]), "score_items"),
                       (lambda: fw.evaluate(tasks["test"]), "evaluate")]:
        with pytest.raises(ValueError, match=rf"OnePlusN\.{name}: this OnePlusN has no tokenizer; pass "
                                             r"the central model's own, OnePlusN\(.*tokenizer=\.\.\.\)"):
            call()
    fw.tokenizer = TOK
    assert isinstance(fw.generate("abc=", "reverse"), str)


def test_modules_to_save_are_refused_over_the_shared_base():
    import dataclasses
    base = tiny_base()
    before = base_fingerprint(base)
    with pytest.raises(ValueError, match=r"modules_to_save=\['lm_head'\].*share the central model"):
        OnePlusN(base, {"x": ["a", "b"]}, dataclasses.replace(CONFIG, modules_to_save=("lm_head",)))
    assert base_fingerprint(base) == before and all(p.requires_grad for p in base.parameters())


def test_merged_model_equals_routed_set_and_leaves_base_alone(framework):
    before = base_fingerprint(framework.base)
    tokens = torch.randint(4, 40, (2, 7))
    for task in ["rotate", "length"]:
        cluster, local = framework.route(task)
        merged = framework.merged_model(task)
        assert not adapter_layers(merged)
        want = framework.sets[cluster](tokens, task_ids=torch.tensor([local, local])).logits
        torch.testing.assert_close(merged(tokens).logits, want, atol=1e-4, rtol=1e-4)
    assert base_fingerprint(framework.base) == before


def test_evaluate_routes_by_cluster(framework, tasks):
    table = framework.evaluate(tasks["test"])
    assert list(table.index) == framework.tasks[:4] + framework.tasks[4:] + ["average"]
    assert table.loc["first", "cluster"] == "extract" and table.loc["rotate", "cluster"] == "transform"
    assert table.loc[framework.tasks, "n"].tolist() == [6] * 8
    answers = framework.generate(tasks["test"]["prompt"], tasks["test"]["task"], max_new_tokens=7)
    hits = pd.Series([a == t for a, t in zip(answers, tasks["test"]["target"])]).groupby(
        pd.Series(tasks["test"]["task"])).mean()
    for task in framework.tasks:
        assert table.loc[task, "exact_match"] == pytest.approx(hits[task])


def test_train_changes_only_adapters(tasks):
    fw = OnePlusN(tiny_base(), prior_clusters(tasks["train"]), CONFIG, tokenizer=TOK)
    before = base_fingerprint(fw.base)
    losses = fw.train(tasks["train"], steps=4, batch_size=8, lr=1e-2, progress=False)
    assert set(losses) == {"transform", "extract"} and all(len(v) >= 1 for v in losses.values())
    assert sum(len(v) for v in losses.values()) == 4
    assert base_fingerprint(fw.base) == before
    assert any(l.lora_B.abs().sum() > 0 for s in fw.sets.values() for l in adapter_layers(s).values())


def test_save_load_roundtrip(framework, tmp_path, tasks):
    framework.save(tmp_path)
    loaded = OnePlusN.load(tmp_path, base_model=tiny_base())
    assert loaded.clusters == framework.clusters
    tokens = torch.randint(4, 40, (2, 6))
    for cluster in framework.clusters:
        ids = torch.tensor([0, 1])
        assert torch.equal(loaded.sets[cluster](tokens, task_ids=ids).logits,
                           framework.sets[cluster](tokens, task_ids=ids).logits)
    with pytest.raises(ValueError, match="fingerprint"):
        OnePlusN.load(tmp_path, base_model=tiny_base(seed=1))
    with pytest.raises(FileNotFoundError, match="one_plus_n.json"):
        OnePlusN.load(tmp_path / "nowhere", base_model=tiny_base())


def test_save_load_from_base_reference(framework, tmp_path):
    framework.base.save_pretrained(tmp_path / "base")
    fw = OnePlusN(LlamaForCausalLM.from_pretrained(tmp_path / "base"), framework.clusters, CONFIG)
    assert fw.base_reference == str(tmp_path / "base")
    fw.save(tmp_path / "fw")
    loaded = OnePlusN.load(tmp_path / "fw")
    assert base_fingerprint(loaded.base) == base_fingerprint(framework.base)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before, what):
    after = model.state_dict()
    assert set(after) == set(before), what
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{what}: {k} changed"


def test_no_public_operation_on_one_set_changes_the_base_or_another_set(framework, tasks, tmp_path):
    base_before = snapshot(framework.base)
    other_before = snapshot(framework.sets["extract"])
    mine = framework.sets["transform"]
    adapters_before = {n: l.lora_B.detach().clone() for n, l in adapter_layers(mine).items()}
    tokens = torch.randint(4, 40, (2, 6))
    other_out = framework.sets["extract"](tokens, task_ids=torch.tensor([0, 1])).logits

    train(mine, subset_tasks(tasks["train"], framework.clusters["transform"]), TOK, steps=3,
          batch_size=8, lr=1e-2, progress=False)
    assert any(not torch.equal(l.lora_B, adapters_before[n]) for n, l in adapter_layers(mine).items())
    trained = snapshot(mine)
    with pytest.raises(ValueError, match=r"merge_task: .*shared by the 2 adapter sets of a OnePlusN.*merged_model"):
        merge_task(mine, 1)
    with pytest.raises(ValueError, match=r"q_proj: .*shared by the 2 adapter sets"):
        next(iter(adapter_layers(mine).values())).merge(0)  # the layer itself refuses too
    assert all(l.merged_task is None for l in adapter_layers(mine).values())
    assert_unchanged(mine, trained, "the set after a refused merge")
    unmerge(mine)
    other = OnePlusN(tiny_base(), framework.clusters, CONFIG, seed=7)  # same shapes, other adapters
    save_adapters(other.sets["transform"], tmp_path / "other")
    load_adapters(mine, tmp_path / "other")
    export_peft_lora(mine, 0, tmp_path / "peft")
    framework.export_peft("reverse", tmp_path / "peft2")
    framework.merged_model("reverse")
    remove_adapters(mine)

    assert_unchanged(framework.base, base_before, "the central model")
    assert_unchanged(framework.sets["extract"], other_before, "the other set")
    assert all(not p.requires_grad for p in framework.base.parameters())
    torch.testing.assert_close(framework.sets["extract"](tokens, task_ids=torch.tensor([0, 1])).logits,
                               other_out, rtol=0, atol=0)


def test_load_checks_each_sets_config_like_load_adapters(framework, tmp_path):
    framework.save(tmp_path)
    cfg = tmp_path / "set_0" / "cgc_adapter_config.json"
    meta = json.loads(cfg.read_text())
    del meta["config"]
    cfg.write_text(json.dumps(meta))
    invalid = (r"set_0/cgc_adapter_config.json is not a valid cgc_edu adapter config"
               r".*'config'")
    with pytest.raises(ValueError, match=r"OnePlusN.load: .*" + invalid):
        OnePlusN.load(tmp_path, base_model=tiny_base())
    with pytest.raises(ValueError, match=r"load_adapters: .*" + invalid):
        load_adapters(tiny_base(), tmp_path / "set_0")
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="is not a valid cgc_edu adapter config"):
        OnePlusN.load(tmp_path, base_model=tiny_base())
    (tmp_path / "one_plus_n.json").write_text(json.dumps({"format": "cgc_edu-one-plus-n"}))
    with pytest.raises(ValueError, match=r"one_plus_n.json is not a valid OnePlusN manifest"):
        OnePlusN.load(tmp_path, base_model=tiny_base())
