"""Activation (gradient) checkpointing with task routing: the backward pass recomputes each
block after the model's forward has ended, and must route it with the same task ids."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from cgc_edu import AdapterConfig, adapter_config, add_adapters, remove_adapters
from cgc_edu.data import TinyTasksCollator, make_tiny_tasks
from tiny_models import TOK


def two_block_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOK), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=32, tie_word_embeddings=True,
                         pad_token_id=TOK.pad_token_id, bos_token_id=TOK.bos_token_id,
                         eos_token_id=TOK.eos_token_id)
    return LlamaForCausalLM(config)


def adapted(seed=0):
    model = add_adapters(two_block_llama(seed), AdapterConfig.cgc_lora(
        n_tasks=8, rank=4, n_common=1, n_specific=1))
    with torch.no_grad():                       # B = 0 at init: give every expert a say
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 1000))
    return model.train()


def grads(model, **call):
    model.zero_grad(set_to_none=True)
    model(**call).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def batch():
    data = make_tiny_tasks(seed=0, n_train=4, n_low=4, n_validation=0, n_test=0)["train"]
    rows = [data[i] for i in range(0, len(data), 5)][:6]
    return TinyTasksCollator(TOK)(rows)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("when", ["after", "before"])
def test_checkpointed_gradients_equal_plain_ones(reentrant, when):
    plain = adapted()
    reference = grads(plain, **batch())
    if when == "before":      # checkpointing switched on first, adapters added after
        model = two_block_llama()
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model = add_adapters(model, adapter_config(plain))
        model.load_state_dict(plain.state_dict())
        model.train()
    else:
        model = copy.deepcopy(plain)
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.model.layers[0].gradient_checkpointing
    got = grads(model, **batch())
    assert got.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-5, atol=1e-7,
                                   msg=name)
    # the gates' gradients depend on the task ids: a recompute routed otherwise would differ
    gate = [n for n in reference if "gate" in n]
    assert gate and any(reference[n].abs().max() > 0 for n in gate)


def test_checkpointing_inside_a_task_context_and_after_remove():
    from cgc_edu import task_context

    plain = adapted()
    data = batch()
    ids = data.pop("task_ids")
    plain.zero_grad()
    with task_context(plain, ids):
        plain(**data).loss.backward()
    reference = {n: p.grad.clone() for n, p in plain.named_parameters() if p.requires_grad}
    model = copy.deepcopy(plain)
    model.gradient_checkpointing_enable()
    model.zero_grad(set_to_none=True)
    with task_context(model, ids):
        model(**data).loss.backward()
    for name, g in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, g,
                                   rtol=1e-5, atol=1e-7)
    bare = remove_adapters(model)
    block = bare.model.layers[0]
    assert not hasattr(block, "_cgc_block_router")
    assert "Routed" not in type(block._gradient_checkpointing_func).__name__
    bare(**data).loss.backward()        # the bare model still checkpoints, unrouted


def test_trainer_gradient_checkpointing_trains_the_adapters(tmp_path):
    model = adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = make_tiny_tasks(seed=0, n_train=4, n_low=4, n_validation=0, n_test=0)["train"]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-2, gradient_checkpointing=True, report_to=[],
                             remove_unused_columns=False, use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data,
            data_collator=TinyTasksCollator(TOK)).train()
    assert model.model.layers[0].gradient_checkpointing
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)
