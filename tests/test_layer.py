"""The CGC-LoRA layer against the design's equation, peft's LoRA, and its own invariants."""
import math

import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, CGCLoRALinear

from tiny_models import D_IN, D_OUT, make_layer  # tests/tiny_models.py
from cgc_edu import add_adapters
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.utils import relative_difference
from tiny_models import randomize, tiny_base  # tests/


def equation(layer, x, task_ids):
    """The design's equation, computed expert by expert, sample by sample, in plain torch."""
    c = layer.config
    out = []
    for i, t in enumerate(task_ids.tolist()):
        allowed = c.allowed_experts(t)
        if layer.gate.learned:
            logits = layer.gate.weight @ layer.gate.task_embedding[t]
            logits = torch.full_like(logits, -math.inf).index_copy(0, torch.tensor(allowed), logits[allowed])
            g = torch.softmax(logits, 0)
        else:
            g = torch.zeros(c.n_experts)
            g[allowed] = 1.0 / len(allowed)
        y = x[i] @ layer.base_layer.weight.T + layer.base_layer.bias
        for e in range(c.n_experts):
            y = y + (c.alpha / c.rank) * g[e] * (x[i] @ layer.lora_A[e].T @ layer.lora_B[e].T)
        out.append(y)
    return torch.stack(out)


CONFIGS = {
    "lora": AdapterConfig.lora(rank=4),
    "independent": AdapterConfig.independent(rank=4, n_tasks=3),
    "moe_lora": AdapterConfig.moe_lora(rank=4, n_tasks=3, n_experts=4, budget="total"),
    "cgc_lora": AdapterConfig.cgc_lora(rank=6, n_tasks=3, n_common=2, n_specific=1),
    "cgc_lora_total": AdapterConfig.cgc_lora(rank=10, n_tasks=4, n_common=2, n_specific=2, budget="total"),
    "cgc_uniform": AdapterConfig.cgc_lora(rank=6, n_tasks=3, gate="uniform"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))

def test_layer_equals_design_equation(name):
    layer = make_layer(CONFIGS[name])
    n_tasks = layer.config.n_tasks
    task_ids = torch.arange(5) % n_tasks
    x = torch.randn(5, 7, D_IN)
    got = layer(x, task_ids)
    want = torch.stack([equation(layer, x[:, j], task_ids) for j in range(7)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))

def test_reference_forward_is_the_equation_and_the_fast_path_equals_it(name):
    """`reference_forward` (the library's loop over experts) against this file's own
    equation, then the batched forward, training and serving, against it."""
    layer = make_layer(CONFIGS[name])
    task_ids = torch.arange(5) % layer.config.n_tasks
    x = torch.randn(5, 7, D_IN)
    with torch.no_grad():
        ref = layer.reference_forward(x, task_ids)
    want = torch.stack([equation(layer, x[:, j], task_ids) for j in range(7)], dim=1)
    torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x, task_ids), ref, rtol=1e-5, atol=1e-5)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, task_ids), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x[:1], task_ids[:1]), ref[:1], rtol=1e-5, atol=1e-5)


def test_the_forward_reads_like_its_equation():
    """The layer's forward stays short enough to read against the formula (issue 39)."""
    import inspect
    lines = [l for l in inspect.getsource(CGCLoRALinear.forward).splitlines()[2:] if l.strip()]
    assert len(lines) <= 15, len(lines)


def test_fresh_layer_equals_base_layer():
    layer = make_layer(CONFIGS["cgc_lora"], fresh=True)
    x = torch.randn(4, 3, D_IN)
    torch.testing.assert_close(layer(x, torch.tensor([0, 1, 2, 0])), layer.base_layer(x), rtol=0, atol=0)


def test_shapes_scaling_and_init():
    c = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)
    layer = make_layer(c, fresh=True)
    assert layer.lora_A.shape == (5, 2, D_IN) and layer.lora_B.shape == (5, D_OUT, 2)
    assert layer.scaling == pytest.approx(2.0)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(D_IN)  # Kaiming-uniform(a=sqrt 5), as peft initialises lora_A
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound


def test_lora_preset_matches_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(D_IN, D_OUT))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    ours = CGCLoRALinear(nn.Linear(D_IN, D_OUT), AdapterConfig.lora(rank=4, alpha=8))
    with torch.no_grad():
        ours.base_layer.load_state_dict(peft_layer.base_layer.state_dict())
        ours.lora_A.copy_(peft_layer.lora_A["default"].weight[None])
        ours.lora_B.copy_(peft_layer.lora_B["default"].weight[None])
    x = torch.randn(6, 3, D_IN)
    assert ours.scaling == pytest.approx(peft_layer.scaling["default"])
    torch.testing.assert_close(ours(x), peft_layer(x), rtol=1e-5, atol=1e-5)


def test_gate_rows_sum_to_one_zero_outside_and_uniform_at_init():
    c = AdapterConfig.cgc_lora(rank=6, n_tasks=4, n_common=2, n_specific=1)
    layer = make_layer(c, fresh=True)
    ids = torch.arange(4)
    g = layer.gate_weights(ids)
    assert g.shape == (4, c.n_experts)
    torch.testing.assert_close(g.sum(-1), torch.ones(4))
    for t in range(4):
        allowed = c.allowed_experts(t)
        outside = [e for e in range(c.n_experts) if e not in allowed]
        assert torch.all(g[t, outside] == 0)
        torch.testing.assert_close(g[t, allowed], torch.full((3,), 1 / 3))
    with torch.no_grad():
        layer.gate.weight.normal_()
    g = layer.gate_weights(ids)
    torch.testing.assert_close(g.sum(-1), torch.ones(4))
    assert all(torch.all(g[t, [e for e in range(6) if e not in c.allowed_experts(t)]] == 0) for t in range(4))
    assert not torch.allclose(g[0, c.allowed_experts(0)], torch.full((3,), 1 / 3))


def test_uniform_gate_stays_uniform_after_training():
    c = AdapterConfig.cgc_lora(rank=6, n_tasks=3, gate="uniform")
    layer = make_layer(c, fresh=True)
    assert not any("gate" in n for n, _ in layer.named_parameters())
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(6, D_IN), torch.arange(6) % 3).pow(2).sum().backward()
        opt.step()
    g = layer.gate_weights(torch.arange(3))
    for t in range(3):
        torch.testing.assert_close(g[t, c.allowed_experts(t)], torch.full((3,), 1 / 3))


def test_independent_preset_touches_only_own_expert():
    layer = make_layer(AdapterConfig.independent(rank=4, n_tasks=3))
    x = torch.randn(5, D_IN)
    layer(x, torch.full((5,), 1)).sum().backward()
    grads = layer.lora_A.grad.abs().sum(dim=(1, 2))
    assert grads[1] > 0 and grads[0] == 0 and grads[2] == 0
    torch.testing.assert_close(layer.gate_weights(torch.tensor([2]))[0], torch.tensor([0.0, 0.0, 1.0]))


def test_mixed_batch_equals_each_task_alone():
    layer = make_layer(AdapterConfig.cgc_lora(rank=6, n_tasks=3))
    x = torch.randn(6, 4, D_IN)
    ids = torch.tensor([2, 0, 1, 1, 0, 2])
    mixed = layer(x, ids)
    for i in range(6):
        torch.testing.assert_close(mixed[i:i + 1], layer(x[i:i + 1], ids[i:i + 1]), rtol=1e-6, atol=1e-6)


def test_delta_weight_and_merge_roundtrip():
    layer = make_layer(AdapterConfig.cgc_lora(rank=6, n_tasks=3))
    x = torch.randn(4, D_IN)
    W0 = layer.base_layer.weight.detach().clone()
    want = layer(x, torch.full((4,), 2)).detach()
    torch.testing.assert_close(x @ (W0 + layer.delta_weight(2)).T + layer.base_layer.bias, want,
                               rtol=1e-5, atol=1e-5)
    layer.merge(2)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, W0, rtol=1e-5, atol=1e-6)
    assert layer.merged_task is None


def test_parameter_counts_match_budget_formulas():
    d_in, d_out, r, n_tasks = D_IN, D_OUT, 6, 4
    per_task = AdapterConfig.cgc_lora(rank=r, n_tasks=n_tasks, n_common=2, n_specific=1, gate="uniform")
    total = AdapterConfig.cgc_lora(rank=r, n_tasks=n_tasks, n_common=2, n_specific=1, gate="uniform",
                                   budget="total")
    count = lambda c: sum(p.numel() for p in make_layer(c).parameters() if p.requires_grad) - d_in * d_out - d_out
    E = 2 + n_tasks
    assert count(per_task) == E * (r // 3) * (d_in + d_out)
    assert count(total) == r * (d_in + d_out)  # exactly one LoRA of rank r
    gated = AdapterConfig.cgc_lora(rank=r, n_tasks=n_tasks, n_common=2, n_specific=1, budget="total")
    assert count(gated) - count(total) == n_tasks * gated.gate_dim + E * gated.gate_dim


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=7, n_common=2, n_specific=1, n_tasks=3), "rank=7 does not divide into 3 experts"),
    (dict(rank=6, n_common=2, n_specific=1, n_tasks=3, budget="total"), "rank=6 does not divide into 5"),
    (dict(rank=4, n_common=0, n_specific=0), "no expert"),
    (dict(rank=4, gate="softmax"), "gate='softmax'"),
    (dict(rank=4, budget="all"), "budget='all'"),
    (dict(rank=0), "rank=0"),
    (dict(rank=4, dropout=1.5), "dropout=1.5"),
])

def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)


def test_bad_task_ids_name_module_value_and_fix():
    layer = make_layer(AdapterConfig.cgc_lora(rank=6, n_tasks=3))
    layer.module_name = "block.q_proj"
    x = torch.randn(2, D_IN)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    cases = [
        (None, ValueError, r"block\.q_proj: task_ids missing.*task_context"),
        (torch.tensor([0, 3]), ValueError, r"block\.q_proj: task id 3 is out of range.*\[0, 2\]"),
        (torch.tensor([-1, 0]), ValueError, r"task id -1 is out of range"),
        (torch.tensor([0.0, 1.0]), TypeError, r"block\.q_proj: task_ids has dtype torch.float32.*LongTensor"),
        (torch.tensor([[0, 1]]), ValueError, r"shape \(1, 2\).*\(batch,\)"),
        (torch.tensor([0, 1, 2]), ValueError, r"got 3 task ids for a batch of 2"),
        ("0", TypeError, r"task_ids='0' is a str"),
    ]
    for ids, error, match in cases:
        with pytest.raises(error, match=match):
            layer(x, ids)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])


def test_lora_like_config_needs_no_task_ids():
    layer = make_layer(AdapterConfig.lora(rank=4, n_tasks=5))
    x = torch.randn(3, D_IN)
    torch.testing.assert_close(layer(x), layer(x, torch.tensor([4, 1, 0])))


def test_expert_labels():
    layer = make_layer(AdapterConfig.cgc_lora(rank=6, n_tasks=2, n_common=2, n_specific=1))
    assert layer.expert_labels(["add", "copy"]) == ["common 0", "common 1", "task add / 0", "task copy / 0"]
    with pytest.raises(ValueError, match="got 1 task names for 2 tasks"):
        layer.expert_labels(["add"])


@pytest.mark.parametrize("config", [
    AdapterConfig.cgc_lora(rank=6, n_tasks=8, n_common=2, n_specific=1),   # gate folded in B
    AdapterConfig.independent(rank=8, n_tasks=8),                          # one expert each
], ids=["cgc_lora", "independent"])

def test_training_repeats_bit_for_bit_with_two_threads(config):
    """Mixed-task training must repeat exactly (nbval compares notebooks that train)."""
    def run():
        torch.manual_seed(0)
        layer = CGCLoRALinear(nn.Linear(64, 64), config)
        opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            x, ids = torch.randn(64, 8, 64, generator=g), torch.randint(0, 8, (64,), generator=g)
            loss = (layer(x, ids) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in layer.parameters()])

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = run()
        assert all(torch.equal(first, run()) for _ in range(3))
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------- task t as one LoRA, one function

CGC = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)


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
