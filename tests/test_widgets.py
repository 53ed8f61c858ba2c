"""GateInspector, headless: the controls drive `state`, the figure and the picture."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, adapter_layers
from cgc_edu.course.widgets import ALL_TASKS, VIEWS, GateInspector
from fixtures.gate_data import TASKS, TinyBlocks, synthetic_recording, tiny_model


@pytest.fixture
def rec():
    return synthetic_recording()


def _heatmap_data(inspector):
    return inspector.figure.axes[0].images[0].get_array().data


def test_starts_on_the_last_step_of_the_first_module_for_all_tasks(rec):
    inspector = GateInspector(rec)
    state = inspector.state
    assert (state["module"], state["task"], state["step"], state["view"]) == \
        (rec.module_names[0], ALL_TASKS, 30, "heatmap")
    np.testing.assert_allclose(state["values"], rec.gates[-1, 0], rtol=1e-6)
    np.testing.assert_allclose(_heatmap_data(inspector), state["values"], rtol=1e-6)
    assert state["rows"] == TASKS and state["columns"] == rec.expert_labels
    png = inspector.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width_px = round(inspector.figure.get_figwidth() * inspector.dpi)
    assert abs(int(inspector.image.width) - width_px) <= 1        # shown at its own size


def test_dropdowns_and_slider_drive_state_figure_and_picture(rec):
    inspector = GateInspector(rec)
    picture = inspector.image.value
    inspector.module_dropdown.value = rec.module_names[2]
    np.testing.assert_allclose(inspector.state["values"], rec.gates[-1, 2], rtol=1e-6)
    inspector.task_dropdown.value = "sub"
    assert inspector.state["task"] == "sub"
    np.testing.assert_allclose(inspector.state["values"], rec.gates[-1, 2, [1]], rtol=1e-6)
    np.testing.assert_allclose(_heatmap_data(inspector), rec.gates[-1, 2, [1]], rtol=1e-6)
    inspector.step_slider.value = 10
    assert inspector.state["step"] == 10 and inspector.play.value == 1   # slider and play linked
    np.testing.assert_allclose(inspector.state["values"], rec.gates[1, 2, [1]], rtol=1e-6)
    inspector.play.value = 0                                               # the play button moves it
    assert inspector.state["step"] == 0
    np.testing.assert_allclose(_heatmap_data(inspector), rec.gates[0, 2, [1]], rtol=1e-6)
    assert inspector.image.value != picture


def test_views(rec):
    inspector = GateInspector(rec)
    inspector.view_buttons.value = "all modules"
    np.testing.assert_allclose(inspector.state["values"], rec.gates[-1], rtol=1e-6)
    panels = [ax for ax in inspector.figure.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    inspector.view_buttons.value = "evolution"
    np.testing.assert_allclose(inspector.state["values"], rec.gates[:, 0, :, :2].sum(-1).T,
                               rtol=1e-6)
    assert inspector.state["columns"] == [0, 10, 20, 30]
    inspector.task_dropdown.value = "rev"
    np.testing.assert_allclose(inspector.state["values"], rec.gates[:, 0, 2][:, [0, 1, 4]].T,
                               rtol=1e-6)
    lines = [line for line in inspector.figure.axes[0].lines if len(line.get_xdata()) == 4]
    np.testing.assert_allclose(lines[-1].get_ydata(), rec.gates[:, 0, 2, 4], rtol=1e-6)
    inspector.view_buttons.value = "common share"
    share = rec.gates[-1, :, 2, :2].sum(-1)
    np.testing.assert_allclose(inspector.state["values"], [[share[:2].mean(), share[2:].mean()]],
                               rtol=1e-6)
    assert inspector.state["columns"] == ["layer 0", "layer 1"]


def test_select_changes_everything_at_once(rec):
    inspector = GateInspector(rec)
    state = inspector.select(module=rec.module_names[1], task="add", step=20, view="heatmap")
    assert (state["module"], state["task"], state["step"]) == (rec.module_names[1], "add", 20)
    assert inspector.task_dropdown.value == "add" and inspector.step_slider.value == 20
    np.testing.assert_allclose(state["values"], rec.gates[2, 1, [0]], rtol=1e-6)
    assert inspector.select(step=-1)["step"] == 30
    assert inspector.select(task=ALL_TASKS)["values"].shape == (3, 5)


@pytest.mark.parametrize("bad, offending, listed", [
    (dict(module="layers.9.q_proj"), "'layers.9.q_proj'", "model.layers.0.self_attn.q_proj"),
    (dict(task="mul"), "'mul'", "'all tasks', 'add', 'sub', 'rev'"),
    (dict(step=15), "15", "[0, 10, 20, 30]"),
    (dict(view="pie"), "'pie'", str(list(VIEWS))),
    (dict(task="sub", view="pie"), "'pie'", str(list(VIEWS))),   # nothing half-applied
])
def test_bad_selection_lists_the_choices_and_changes_nothing(rec, bad, offending, listed):
    inspector = GateInspector(rec)
    before, picture = inspector.state, inspector.image.value
    with pytest.raises(ValueError) as error:
        inspector.select(**bad)
    assert offending in str(error.value) and listed in str(error.value)
    after = inspector.state
    assert {k: v for k, v in after.items() if k != "values"} == \
        {k: v for k, v in before.items() if k != "values"}
    np.testing.assert_array_equal(after["values"], before["values"])
    assert inspector.image.value == picture


def test_redraws_in_place_without_growing(rec):
    inspector = GateInspector(rec)
    children, image, figure = inspector.children, inspector.image, inspector.figure
    for view in VIEWS * 2:
        inspector.select(view=view)
    assert inspector.children == children and inspector.image is image
    assert inspector.figure is figure
    assert len(figure.axes) == 2            # the common-share panel and its colour bar only


def test_one_step_and_one_task_recordings():
    one_step = GateInspector(synthetic_recording(n_steps=1))
    assert one_step.step_slider.disabled and one_step.play.disabled
    assert one_step.select(view="evolution")["values"].shape == (3, 1)
    one_task = GateInspector(synthetic_recording(tasks=["only"]))
    assert one_task.task_dropdown.options == (ALL_TASKS, "only")
    np.testing.assert_allclose(one_task.select(task="only")["values"].sum(), 1.0, rtol=1e-6)


def test_from_a_model_shows_its_gates_now():
    model = tiny_model()
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.gate.weight.normal_()
    inspector = GateInspector(model, task_names=TASKS)
    layer = adapter_layers(model)["layers.1.v_proj"]
    state = inspector.select(module="layers.1.v_proj")
    np.testing.assert_allclose(state["values"], layer.gate_weights(torch.arange(3)).detach(),
                               rtol=1e-6)
    assert "snapshot" in inspector.message.value


@pytest.mark.parametrize("model, words", [
    (lambda: tiny_model(AdapterConfig.lora(rank=4)), "single expert"),
    (lambda: TinyBlocks(), "no adapters"),
])
def test_models_without_gates_get_a_message_not_a_crash(model, words):
    inspector = GateInspector(model())
    assert words in inspector.message.value and words in inspector.state["message"]
    assert inspector.state["values"] is None
    with pytest.raises(ValueError, match=words):
        inspector.select(task="0")


def test_uniform_gate_is_shown_with_a_note():
    config = AdapterConfig.cgc_lora(rank=6, alpha=6, n_tasks=3, gate="uniform")
    inspector = GateInspector(tiny_model(config), task_names=TASKS)
    assert "fixed" in inspector.message.value and "gate='uniform'" in inspector.note
    np.testing.assert_allclose(inspector.state["values"][0, :3], 1 / 3, rtol=1e-6)


def test_bad_source():
    with pytest.raises(TypeError, match="GateRecording"):
        GateInspector(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="view='pie'"):
        GateInspector(synthetic_recording(), view="pie")
