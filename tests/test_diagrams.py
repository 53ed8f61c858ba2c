"""The diagrams draw what the config says: experts, ranks, the mask, the gate, the sets."""
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, CGCLoRALinear
from cgc_edu.course.diagrams import (MAX_WIDTH, cgc_lora_diagram, drawn_parts, lora_diagram,
                              one_plus_n_diagram)
from cgc_edu.methods import METHODS, method_of
from cgc_edu.course.plots import METHOD_COLORS, PART_COLORS, method_style


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _patch(fig, gid):
    return next(p for p in fig.axes[0].patches if p.get_gid() == gid)


def _same_colour(a, b):
    return mcolors.same_color(a, b)


def test_lora_diagram_shows_shapes_and_scaling():
    fig = lora_diagram(rank=4, alpha=8, d_in=32, d_out=24)
    texts = _texts(fig)
    assert "A\n4 × 32" in texts and "B\n24 × 4" in texts
    assert "W0  frozen,  24 × 32" in texts
    assert "× α/r\n= 2" in texts
    assert drawn_parts(fig, "lora:") == ["lora:A", "lora:B", "lora:scaling"]
    assert fig.get_figwidth() <= MAX_WIDTH


def test_lora_diagram_rslora_scales_by_the_root_of_the_rank():
    fig = lora_diagram(rank=16, alpha=16, rslora=True)
    assert "× α/√r\n= 4" in _texts(fig)
    assert "rsLoRA" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="rank=0"):
        lora_diagram(rank=0)


CONFIGS = [
    AdapterConfig.cgc_lora(rank=6, n_tasks=3, n_common=2, n_specific=1),
    AdapterConfig.cgc_lora(rank=10, n_tasks=8, budget="total"),
    AdapterConfig.cgc_lora(rank=12, n_tasks=2, n_common=1, n_specific=2, gate="uniform"),
    AdapterConfig.lora(rank=8),
    AdapterConfig.independent(rank=8, n_tasks=4),
    AdapterConfig.moe_lora(rank=8, n_tasks=4, n_experts=4),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: method_of(c))
def test_cgc_diagram_follows_the_config(config):
    task = config.n_tasks - 1
    fig = cgc_lora_diagram(config, task=task)
    experts = drawn_parts(fig, "expert:")
    assert len(experts) == config.n_experts
    assert sum(g.startswith("expert:common") for g in experts) == config.n_common
    assert sum(g.startswith("expert:specific") for g in experts) == config.n_tasks * config.n_specific
    allowed = set(config.allowed_experts(task))
    for gid in experts:
        kind, e = gid.split(":")[1], int(gid.split(":")[2])
        want = PART_COLORS[kind] if e in allowed else PART_COLORS["masked"]
        assert _same_colour(_patch(fig, gid).get_facecolor(), want), gid
    texts = _texts(fig)
    r_e = config.expert_rank
    assert sum(t.endswith(f"\nr={r_e}") for t in texts) == config.n_experts   # each expert's rank
    weights = [t for t in texts if t[:2] in ("0.", "1.")]
    assert weights == [f"{1 / len(allowed) if e in allowed else 0:.2f}"
                       for e in range(config.n_experts)]
    task_rank = [t for t in texts if t.startswith("S_t = ")][0]
    assert f"task rank |S_t|·r_e = {len(allowed) * r_e}" in task_rank
    assert f"budget '{config.budget}'" in task_rank
    title = fig.axes[0].get_title()
    assert title.startswith(method_of(config)) and f"r = {config.rank}" in title
    if config.n_tasks > 1 and config.n_specific:     # each task's block is labelled
        assert all(f"task {t}" in texts for t in range(config.n_tasks))
    gate = [t for t in texts if t.startswith(("gate (", "no gate"))][0]
    expected = ("no gate" if config.experts_per_task == 1 else
                "gate (fixed)" if config.gate == "uniform" else "gate (learned)")
    assert gate.startswith(expected)
    assert fig.get_figwidth() <= MAX_WIDTH


def test_cgc_diagram_prints_a_trained_gate_and_task_names():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3)
    layer = CGCLoRALinear(nn.Linear(8, 8), config)
    with torch.no_grad():
        layer.gate.weight.normal_()
    g = layer.gate_weights(torch.tensor([1]))[0].detach()
    fig = cgc_lora_diagram(config, task="sub", task_names=["add", "sub", "rev"], weights=g)
    texts = _texts(fig)
    assert [t for t in texts if t[:2] in ("0.", "1.")] == [f"{float(w):.2f}" for w in g]
    assert {"common", "add", "sub", "rev"} <= set(texts)
    assert "task id t = 1\n(sub)" in texts
    assert "S_t = {0, 1, 3}" in [t for t in texts if t.startswith("S_t")][0]


def test_cgc_diagram_rejects_bad_input():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3)
    with pytest.raises(ValueError, match=r"task=3.*\[0, 2\]"):
        cgc_lora_diagram(config, task=3)
    with pytest.raises(ValueError, match="2 task names for n_tasks=3"):
        cgc_lora_diagram(config, task_names=["a", "b"])
    with pytest.raises(ValueError, match="4 weights for 5 experts"):
        cgc_lora_diagram(config, weights=[0.25] * 4)
    with pytest.raises(TypeError, match="AdapterConfig"):
        cgc_lora_diagram({"rank": 6})


def test_method_names_of_the_presets():
    assert method_of(AdapterConfig.lora()) == "one LoRA"
    assert method_of(AdapterConfig.independent(n_tasks=3)) == "independent LoRAs"
    assert method_of(AdapterConfig.moe_lora()) == "MoE-LoRA"
    assert method_of(AdapterConfig.cgc_lora(rank=6)) == "CGC-LoRA"
    assert method_of(AdapterConfig.cgc_lora(rank=6, gate="uniform")) == "CGC-LoRA, uniform gate"


CLUSTERS = {"transform": ["reverse", "rotate", "shift"], "extract": ["first", "last"],
            "count": ["length"]}


def test_one_plus_n_diagram_has_one_set_per_cluster_and_one_central_model():
    fig = one_plus_n_diagram(CLUSTERS, request="last")
    assert drawn_parts(fig, "adapter set:") == [f"adapter set:{c}" for c in CLUSTERS]
    assert drawn_parts(fig, "central") == ["central"] and drawn_parts(fig, "router") == ["router"]
    texts = _texts(fig)
    assert "reverse, rotate, shift" in texts and "first, last" in texts
    widths = {c: _patch(fig, f"route:{c}").get_linewidth() for c in CLUSTERS}
    assert widths["extract"] > widths["transform"] == widths["count"]     # the request's route
    assert "local task id 1" in fig.axes[0].get_title()
    assert fig.get_figwidth() <= MAX_WIDTH
    framework_like = types.SimpleNamespace(clusters=CLUSTERS)             # e.g. a OnePlusN
    assert len(drawn_parts(one_plus_n_diagram(framework_like), "adapter set:")) == 3
    with pytest.raises(KeyError, match="'sort' is not a task"):
        one_plus_n_diagram(CLUSTERS, request="sort")
    with pytest.raises(ValueError, match="non-empty dict"):
        one_plus_n_diagram({})


def test_one_palette_for_methods_and_their_chapter_03_analogues():
    for key in ("integrated", "separate", "moe_lora", "cgc_lora", "one_plus_n", "cgc_uniform",
                "central"):
        assert key in METHODS and key in METHOD_COLORS          # the experiments' methods
    for name, older in [("integrated", "lora"), ("separate", "independent"),
                        ("cgc_uniform", "cgc_no_gate")]:    # older names read as one
        assert method_style(older) == method_style(name) and older not in METHOD_COLORS
    assert method_style("MMoE") == (METHOD_COLORS["moe_lora"], "MMoE")
    shared = method_style("shared-bottom")[0]
    assert shared == METHOD_COLORS["integrated"] == PART_COLORS["common"]
    assert method_style("cgc_lora") == (METHOD_COLORS["cgc_lora"], "CGC-LoRA")
    assert method_style("my_method")[1] == "my_method"
    distinct = [METHOD_COLORS[k] for k in ("central", "integrated", "separate",
                                           "moe_lora", "cgc_lora", "one_plus_n",
                                           "cgc_uniform")]
    assert len(set(distinct)) == len(distinct)
