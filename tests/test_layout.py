"""The expert layout has one source (AdapterConfig.layout) that the layer, recorder, plots and widget read."""
import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, CGCLoRALinear, ExpertLayout
from cgc_edu.course import plots
from cgc_edu.course.recording import GateRecorder
from cgc_edu.course.widgets import GateInspector
from fixtures.gate_data import tiny_model


def design_mask(n_common, n_specific, n_tasks):
    """The design's rule written out: common experts first, then n_specific per task."""
    E = n_common + n_tasks * n_specific
    return np.array([[e < n_common or n_common + t * n_specific <= e < n_common + (t + 1) * n_specific
                      for e in range(E)] for t in range(n_tasks)])


@pytest.mark.parametrize("c,k,n", [(2, 1, 4), (0, 3, 2), (4, 0, 3), (1, 0, 1), (0, 1, 5), (3, 2, 3)])
def test_layout_matches_the_design_rule(c, k, n):
    layout = AdapterConfig(rank=12 * (c + k), n_common=c, n_specific=k, n_tasks=n).layout
    assert layout == ExpertLayout(c, k, n)
    assert layout.n_experts == c + n * k and layout.experts_per_task == c + k
    mask = design_mask(c, k, n)
    np.testing.assert_array_equal(layout.allowed_mask(), mask)
    for t in range(n):
        assert layout.allowed(t) == np.flatnonzero(mask[t]).tolist()
        assert list(layout.common()) + list(layout.specific(t)) == layout.allowed(t)
    np.testing.assert_array_equal(layout.allowed_table(), [layout.allowed(t) for t in range(n)])
    blocks = layout.blocks()
    assert [(b.start, b.stop) for b in blocks] == (
        ([(0, c)] if c else []) + ([(c + t * k, c + (t + 1) * k) for t in range(n)] if k else []))
    assert [b.task for b in blocks if b.kind == "specific"] == (list(range(n)) if k else [])


def test_labels_and_bad_task():
    layout = ExpertLayout(2, 1, 2)
    assert layout.labels(["add", "copy"]) == ["common 0", "common 1", "task add / 0", "task copy / 0"]
    with pytest.raises(ValueError, match=r"layer\.q: got 1 task names for 2 tasks"):
        layout.labels(["add"], where="layer.q")
    with pytest.raises(ValueError, match=r"task 2 is not a task index.*\[0, 1\]"):
        layout.specific(2)


def test_layer_recorder_and_plots_read_the_configs_layout():
    config = AdapterConfig.cgc_lora(rank=6, alpha=6, n_tasks=3, n_common=2, n_specific=1)
    mask = config.layout.allowed_mask()
    layer = CGCLoRALinear(nn.Linear(4, 4), config)
    np.testing.assert_array_equal(layer.gate.mask.numpy(), mask)
    np.testing.assert_array_equal(layer.allowed.numpy(), config.layout.allowed_table())
    # task t's one LoRA stacks the rows of S_t's experts, expert by expert
    A_t, _ = layer.task_lora(torch.tensor([2]))
    want = layer.lora_A[config.allowed_experts(2)].reshape(-1, 4)
    torch.testing.assert_close(A_t[0], want)
    np.testing.assert_array_equal((layer.gate_weights(torch.arange(3)) > 0).numpy(), mask)

    model = tiny_model(config)
    recorder = GateRecorder(model, task_names=["a", "b", "c"])
    recorder.record(0)
    rec = recorder.recording
    assert rec.layout == config.layout
    np.testing.assert_array_equal(rec.allowed_mask(), mask)
    assert rec.expert_labels == config.layout.labels(["a", "b", "c"])
    fig = plots.gate_heatmap(rec, 0)
    widths = {round(line.get_xdata()[0], 2): line.get_linewidth() for line in fig.axes[0].lines}
    assert widths == {1.5: 3, 2.5: 1, 3.5: 1}  # thick after the common block, thin between tasks
    plt.close("all")


def test_widget_reads_the_layout_for_single_expert_adapters():
    model = tiny_model(AdapterConfig.independent(rank=4, n_tasks=3))
    inspector = GateInspector(model)
    assert "every task uses a single expert (n_common=0, n_specific=1" in inspector.note
    assert "No gates to inspect" in GateInspector(tiny_model(AdapterConfig.lora(rank=4))).note
    assert "No gates" not in GateInspector(tiny_model()).note


def test_config_is_frozen_and_replace_gives_a_checked_copy():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=["q_proj", "v_proj"])
    assert config.target_modules == ("q_proj", "v_proj")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 8
    bigger = dataclasses.replace(config, n_tasks=5)
    assert bigger.n_experts == 7 and config.n_experts == 5
    with pytest.raises(ValueError, match="rank=7 does not divide"):
        dataclasses.replace(config, rank=7)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["target_modules"] == ["q_proj", "v_proj"]
