"""Half-precision base models (bfloat16, float16): forward, backward, merge, save/load, export.

Adapters over a half-precision base are float32 (as peft keeps them) and the gate computes in
float32; the base keeps its dtype. Tolerances are set by the dtype: a bfloat16 logit carries
~3 significant digits (eps 2^-8), a float16 one ~4 (eps 2^-11); each check also asserts that the
adapters move the logits by several times that tolerance, so a tolerance cannot hide them.
"""
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from cgc_edu import (AdapterConfig, add_adapters, export_peft_lora, load_adapters, merge_task,
                     save_adapters, unmerge)
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.adapters.saving import WEIGHTS_NAME

from test_architectures import build, config_for, logits, randomize, tokens_for

HALF = [torch.bfloat16, torch.float16]
#: atol on logits of magnitude ~0.5 (the tiny models'), by dtype.
ATOL = {torch.bfloat16: 0.1, torch.float16: 0.015}


def close(a, b, dtype):
    torch.testing.assert_close(a.float(), b.float(), atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_half_precision_forward_merge_save_load_and_export(arch, dtype, tmp_path):
    tokens, ids = tokens_for(), torch.tensor([2, 0, 1])
    base_logits = logits(build(arch, dtype), tokens)
    model = add_adapters(build(arch, dtype), config_for(arch))
    for layer in adapter_layers(model).values():
        assert layer.base_layer.weight.dtype == dtype
        assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
        assert layer.gate_weights(torch.tensor([0, 2])).dtype == torch.float32
    fresh = logits(model, tokens, ids)
    assert fresh.dtype == dtype and torch.equal(fresh, base_logits)   # B = 0: the base, exactly

    randomize(model)
    mixed = logits(model, tokens, ids)
    assert (mixed.float() - base_logits.float()).abs().max() > 4 * ATOL[dtype]
    alone = torch.cat([logits(model, tokens[i:i + 1], ids[i:i + 1]) for i in range(3)])
    close(mixed, alone, dtype)

    want = logits(model, tokens, torch.full((3,), 1))
    weights = {n: l.base_layer.weight.detach().clone() for n, l in adapter_layers(model).items()}
    merge_task(model, 1)
    merged = logits(model, tokens)
    assert merged.dtype == dtype
    close(merged, want, dtype)
    with_task = {n: l.base_layer.weight.detach().float() for n, l in adapter_layers(model).items()}
    unmerge(model)
    eps = torch.finfo(dtype).eps
    for name, layer in adapter_layers(model).items():
        # W + dW, then - dW: two roundings, each at most half a unit in the last place of its result.
        before, after = weights[name].float(), layer.base_layer.weight.float()
        bound = eps / 2 * (with_task[name].abs() + before.abs()) * 1.01
        assert ((after - before).abs() <= bound).all(), name
        assert not torch.equal(with_task[name], before)
    close(logits(model, tokens, ids), mixed, dtype)

    save_adapters(model, tmp_path / "bank")
    assert {t.dtype for t in load_file(str(tmp_path / "bank" / WEIGHTS_NAME)).values()} == {torch.float32}
    loaded = load_adapters(build(arch, dtype), tmp_path / "bank")
    assert torch.equal(logits(loaded, tokens, ids), mixed)   # a fresh base: not the merged-and-unmerged one

    export_peft_lora(model, 1, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(build(arch, dtype), str(tmp_path / "peft")).eval()
    peft_logits = logits(peft_model, tokens)
    assert peft_logits.dtype == dtype
    close(peft_logits, want, dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_backward_trains_float32_adapters(dtype):
    model = add_adapters(build("llama", dtype), config_for("llama"))
    tokens, ids = tokens_for(batch=6, length=8), torch.arange(6) % 3
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(tokens, labels=tokens, task_ids=ids).loss
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_model_cast_after_add_adapters_runs_its_adapters_in_that_dtype(dtype):
    tokens, ids = tokens_for(), torch.tensor([1, 2, 0])
    model = randomize(add_adapters(build("llama"), config_for("llama")))   # float32, then cast
    want = logits(model, tokens, ids)
    model.to(dtype)
    layer = next(iter(adapter_layers(model).values()))
    assert layer.lora_A.dtype == dtype and layer.gate.weight.dtype == dtype
    assert layer.gate_weights(torch.tensor([1])).dtype == torch.float32    # the gate computes in float32
    got = logits(model, tokens, ids)
    assert got.dtype == dtype
    close(got, want, dtype)
    same = logits(model, tokens, torch.full((3,), 2))
    merge_task(model, 2)
    close(logits(model, tokens), same, dtype)
    unmerge(model)


def test_uniform_gate_over_a_bfloat16_model():
    """The ablation gate has no parameters: its float32 weights are cast by the layer too."""
    model = add_adapters(build("llama"), AdapterConfig.cgc_lora(rank=6, n_tasks=3, gate="uniform"))
    model = randomize(model).to(torch.bfloat16)
    tokens, ids = tokens_for(), torch.tensor([0, 1, 2])
    mixed = logits(model, tokens, ids)
    alone = torch.cat([logits(model, tokens[i:i + 1], ids[i:i + 1]) for i in range(3)])
    close(mixed, alone, torch.bfloat16)
