"""peft's conveniences: `disable_adapters` (the bare base with the adapters kept, peft's
``disable_adapter()``) and the safe merge (`merge_task` / `merged_copy` refuse non-finite
weights and leave the model as it was, peft's ``safe_merge=True``)."""
import copy
import re

import pytest
import torch
from peft import PeftModel
from torch import nn

from cgc_edu import (AdapterConfig, adapter_layers, add_adapters, disable_adapters,
                     export_peft_lora, merge_task, merged_copy, task_context, unmerge)
from cgc_edu.data import build_tokenizer
from cgc_edu.models import load_central_model

from tiny_models import assert_same_state, randomize, state, tiny_framework  # tests/tiny_models.py

CONFIG = AdapterConfig.cgc_lora(rank=6, n_tasks=3)
SICK = "model.layers.2.mlp.down_proj"      # the module the safe-merge tests break


@pytest.fixture(scope="module")
def central():
    return load_central_model()


@pytest.fixture
def pair(central):
    """(bare, model): the central model, and a copy with CGC-LoRA adapters whose B is
    non-zero, so that the adapters change the outputs."""
    bare = copy.deepcopy(central)
    return bare, randomize(add_adapters(copy.deepcopy(central), CONFIG))


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randint(3, 52, (3, 10)), torch.tensor([0, 2, 1])


def logits(model, tokens, **kwargs):
    with torch.no_grad():
        return model(tokens, **kwargs).logits


def assert_untouched(model, before):
    """Every tensor bit for bit as before (NaN included), and no task merged."""
    assert_same_state(model, before)
    assert all(layer.merged_task is None for layer in adapter_layers(model).values())
    assert model._cgc.router.merged_task is None


# --------------------------------------------------------------- disable_adapters
def test_inside_the_block_the_bare_base_answers_without_task_ids(pair, x):
    bare, model = pair
    tokens, ids = x
    want, adapted = logits(bare, tokens), logits(model, tokens, task_ids=ids)
    assert (adapted - want).abs().max() > 1e-2                  # the adapters matter
    with pytest.raises(ValueError, match="task_ids missing"):
        logits(model, tokens)                                   # they need task ids ...
    with disable_adapters(model) as same:
        assert same is model
        torch.testing.assert_close(logits(model, tokens), want, rtol=1e-5, atol=1e-6)
        # ... except inside the block; ids given there are checked, then ignored
        torch.testing.assert_close(logits(model, tokens, task_ids=ids), want, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="task id 7 is out of range"):
            logits(model, tokens, task_ids=torch.tensor([7, 0, 0]))
    assert torch.equal(logits(model, tokens, task_ids=ids), adapted)


def test_adapters_come_back_untouched_when_the_block_raises(pair, x):
    _, model = pair
    tokens, ids = x
    before, adapted = state(model), logits(model, tokens, task_ids=ids)
    with pytest.raises(RuntimeError, match="boom"):
        with disable_adapters(model):
            logits(model, tokens)
            raise RuntimeError("boom")
    assert model._cgc.router.disabled == 0
    assert_untouched(model, before)
    assert torch.equal(logits(model, tokens, task_ids=ids), adapted)


def test_generate_inside_the_block_is_the_bare_base_s(pair):
    bare, model = pair
    prompt = build_tokenizer()(["abc=", "xyz="], return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=bare.config.pad_token_id)
    want = bare.generate(prompt, **kwargs)
    with disable_adapters(model):
        assert torch.equal(model.generate(prompt, **kwargs), want)
        # a task_context around generate changes nothing inside the block
        with task_context(model, torch.tensor([1, 2])):
            assert torch.equal(model.generate(prompt, **kwargs), want)
    with pytest.raises(ValueError, match="task_ids missing"):
        model.generate(prompt, **kwargs)


def test_blocks_nest(pair, x):
    bare, model = pair
    tokens, ids = x
    want, adapted = logits(bare, tokens), logits(model, tokens, task_ids=ids)
    with disable_adapters(model):
        with disable_adapters(model):
            torch.testing.assert_close(logits(model, tokens), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits(model, tokens), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(logits(model, tokens, task_ids=ids), adapted)


def test_a_merged_model_runs_the_bare_w0_and_is_merged_again_after(pair, x):
    bare, model = pair
    tokens, _ = x
    merge_task(model, 1)
    merged, before = logits(model, tokens), state(model)
    with disable_adapters(model):
        assert model._cgc.router.merged_task is None
        # the bare W0 (up to the rounding of one unmerge), not W0 + dW_1
        torch.testing.assert_close(logits(model, tokens), logits(bare, tokens), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match=r"disable_adapters.*merge after the block"):
            merge_task(model, 2)
    assert all(layer.merged_task == 1 for layer in adapter_layers(model).values())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())   # bit for bit
    assert torch.equal(logits(model, tokens), merged)


def test_unmerge_inside_the_block_leaves_the_model_unmerged(pair, x):
    _, model = pair
    tokens, ids = x
    adapted = logits(model, tokens, task_ids=ids)
    merge_task(model, 0)
    with disable_adapters(model):
        unmerge(model)
    assert model._cgc.router.merged_task is None
    torch.testing.assert_close(logits(model, tokens, task_ids=ids), adapted, rtol=1e-4, atol=1e-5)


def test_disable_adapters_needs_a_model_with_adapters(central):
    with pytest.raises(ValueError, match="disable_adapters: LlamaForCausalLM has no adapters"):
        with disable_adapters(central):
            pass


def test_one_plus_n_sets_and_serving_model_run_the_central_model():
    fw = tiny_framework({"a": ["t0", "t1"], "b": ["t2"]})
    tokens = torch.randint(3, 20, (2, 7))
    want = logits(fw.base, tokens)
    for model in [*fw.sets.values(), fw.serving_model()]:
        assert (logits(model, tokens, task_ids=torch.tensor([0, 0])) - want).abs().max() > 1e-3
        with disable_adapters(model):
            torch.testing.assert_close(logits(model, tokens), want, rtol=1e-5, atol=1e-6)


def test_our_disable_adapters_answers_as_peft_s_disable_adapter(pair, x, tmp_path):
    bare, model = pair
    tokens, _ = x
    export_peft_lora(model, 1, tmp_path)
    peft_model = PeftModel.from_pretrained(bare, tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, tokens), logits(model, tokens,
                               task_ids=torch.full((3,), 1)), rtol=1e-4, atol=1e-4)
    with peft_model.disable_adapter(), disable_adapters(model):
        torch.testing.assert_close(logits(model, tokens), logits(peft_model, tokens),
                                   rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the safe merge
def plant(model, where, value):
    """Put ``value`` (NaN or inf) into one weight of SICK that task 1 reads: its adapter
    (expert 0, a common one; task 1's gate embedding) or its base weight W0."""
    layer = model.get_submodule(SICK)
    tensor = {"lora_B": layer.lora_B[0], "lora_A": layer.lora_A[0],
              "gate": layer.gate.task_embedding[1], "W0": layer.base_layer.weight}[where]
    with torch.no_grad():
        tensor.view(-1)[5] = value


@pytest.mark.parametrize("where, value, says", [
    ("lora_B", float("nan"), r"the adapter's weights hold NaN \(lora_B\).*retrain"),
    ("lora_A", float("inf"), r"the adapter's weights hold inf \(lora_A\).*retrain"),
    ("gate", float("nan"), r"the adapter's weights hold NaN \(gate.task_embedding\)"),
    ("W0", float("nan"), r"base weight W0 already holds NaN.*reload the base model"),
], ids=["nan-in-B", "inf-in-A", "nan-in-gate", "nan-in-W0"])
def test_merge_refuses_non_finite_weights_and_changes_nothing(pair, x, where, value, says):
    _, model = pair
    plant(model, where, value)
    before = state(model)
    for merge in (merge_task, merged_copy):
        with pytest.raises(ValueError, match=re.escape(f"{merge.__name__}: ") + ".*" +
                           re.escape(repr(SICK)) + ".*" + says) as info:
            merge(model, 1)
        assert "task 1" in str(info.value) and "Nothing was merged" in str(info.value)
        assert_untouched(model, before)


def test_a_repaired_adapter_merges(pair, x):
    _, model = pair
    tokens, _ = x
    layer = model.get_submodule(SICK)
    clean = layer.lora_B.detach().clone()
    plant(model, "lora_B", float("nan"))
    with pytest.raises(ValueError, match="hold NaN"):
        merge_task(model, 1)
    with torch.no_grad():
        layer.lora_B.copy_(clean)
    routed = logits(model, tokens, task_ids=torch.full((3,), 1))
    torch.testing.assert_close(logits(merge_task(model, 1), tokens), routed, rtol=1e-4, atol=1e-5)


def test_merge_refuses_a_sum_that_overflows_w0_s_dtype():
    torch.manual_seed(0)
    model = randomize(add_adapters(nn.Sequential(nn.Linear(8, 8)).half(),
                                   AdapterConfig.cgc_lora(rank=6, n_tasks=3)))
    layer = adapter_layers(model)["0"]
    delta = layer.delta_weight(1)
    i = int(delta.abs().argmax())
    with torch.no_grad():
        layer.lora_B.mul_(100.0 / float(delta.view(-1)[i].abs()))      # |dW| reaches 100
        layer.base_layer.weight.view(-1)[i] = 65504.0 * torch.sign(layer.delta_weight(1).view(-1)[i])
    before = state(model)
    with pytest.raises(ValueError, match=r"merge_task: W0 \+ dW_t of task 1 in module '0' overflows "
                                         r"to inf in W0's dtype torch.float16"):
        merge_task(model, 1)
    assert_untouched(model, before)


HOT_REFUSAL = (r"OnePlusN hot_merge of task 't1' \(local id 1 in cluster 'a'\): task 1's delta dW_t "
               r"in module .* is not finite: the adapter's weights hold NaN \(lora_B\).*retrain the "
               r"adapter.*Nothing was merged")


def sicken(fw):
    """A NaN in set "a"'s first adapted layer (expert 0, which every task of the set reads)."""
    layer = next(iter(adapter_layers(fw.sets["a"]).values()))
    with torch.no_grad():
        layer.lora_B[0].view(-1)[3] = float("nan")


def test_one_plus_n_hot_merge_refuses_non_finite_weights_and_keeps_its_hot_copy():
    """1+N's hot copy is a merge too: a NaN in a set's adapter is refused (naming the task and
    the fix) before anything is written; the hot copy keeps the last task's weights."""
    clusters = {"a": ["t0", "t1"], "b": ["t2"]}
    fresh = tiny_framework(clusters, hot_merge=True)
    sicken(fresh)
    with pytest.raises(ValueError, match=HOT_REFUSAL):         # before any hot copy exists
        fresh.generate("abc=", "t1")
    assert fresh._hot is None and fresh.memory()["hot_bytes"] == 0

    fw = tiny_framework(clusters, hot_merge=True)
    tokens = torch.randint(3, 20, (2, 7))
    hot_t2 = logits(fw._hot_model("t2"), tokens)
    kept, memory, base = state(fw._hot), fw.memory(), state(fw.base)
    sicken(fw)
    for ask in (lambda: fw._hot_model("t1"), lambda: fw.generate("abc=", "t1")):
        with pytest.raises(ValueError, match=HOT_REFUSAL):
            ask()
        assert_same_state(fw._hot, kept)
        assert fw.memory() == memory and fw._hot_cache.key[0] == "t2"
    assert_same_state(fw.base, base)
    torch.testing.assert_close(logits(fw._hot_model("t2"), tokens), hot_t2, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_backward_after_the_block_recomputes_the_bare_base(pair, x, reentrant):
    """Activation checkpointing recomputes each block in the backward pass; a loss computed
    inside the block and backpropagated after it must recompute the bare base too."""
    _, model = pair
    tokens, _ = x
    model.train().model.embed_tokens.weight.requires_grad_(True)   # something for grads to reach

    def embedding_grad(checkpointed):
        if checkpointed:
            model.activation_checkpointing_enable({"use_reentrant": reentrant})
        model.zero_grad(set_to_none=True)
        with disable_adapters(model):
            loss = model(tokens, labels=tokens).loss
        loss.backward()
        model.activation_checkpointing_disable()
        return model.model.embed_tokens.weight.grad.clone()

    torch.testing.assert_close(embedding_grad(True), embedding_grad(False), rtol=1e-5, atol=1e-7)
