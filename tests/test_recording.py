"""GateRecorder / GateRecording: what is recorded, when, and that it survives a file."""
import numpy as np
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, adapter_layers
from cgc_edu.course.recording import GateRecorder, GateRecording
from cgc_edu.utils import seed_everything
from fixtures.gate_data import TASKS, TinyBlocks, synthetic_recording, tiny_model


def _scramble_gates(model, seed):
    seed_everything(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.gate.weight.normal_()


def test_records_every_module_task_and_expert():
    model = tiny_model()
    recorder = GateRecorder(model, task_names=TASKS)
    expected = []
    for step in (0, 5, 9):
        _scramble_gates(model, step)
        recorder.record(step)
        expected.append([layer.gate_weights(torch.arange(3)).detach().numpy()
                         for layer in adapter_layers(model).values()])
    rec = recorder.recording
    layers = adapter_layers(model)
    assert rec.gates.shape == (3, len(layers), 3, 5)
    assert rec.steps.tolist() == [0, 5, 9]
    assert rec.module_names == list(layers)
    assert rec.task_names == TASKS
    assert rec.expert_labels == ["common 0", "common 1", "task add / 0", "task sub / 0",
                                 "task rev / 0"]
    np.testing.assert_allclose(rec.gates, np.array(expected), rtol=1e-6, atol=1e-7)
    # the gates changed between records, so the snapshots are copies, not views
    assert not np.allclose(rec.gates[0], rec.gates[1])


def test_gates_outside_the_allowed_set_are_zero_and_rows_sum_to_one():
    model = tiny_model()
    _scramble_gates(model, 1)
    recorder = GateRecorder(model, task_names=TASKS)
    recorder.record(0)
    rec = recorder.recording
    np.testing.assert_array_equal(rec.gates[0][:, ~rec.allowed_mask()], 0.0)
    np.testing.assert_allclose(rec.gates.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rec.common_share(), rec.gates[..., :2].sum(-1), rtol=1e-6)


@pytest.mark.slow
def test_as_training_callback_records_every_k_steps_and_follows_learning():
    seed_everything(0)
    model = tiny_model()
    recorder = GateRecorder(model, task_names=TASKS, every=3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, task_ids = torch.randn(12, 8), torch.arange(12) % 3
    target = torch.randn(12, 8)
    for step in range(10):
        loss = nn.functional.mse_loss(model(x, task_ids=task_ids), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recorder(step, model)          # the hook train(callback=..., callback_every=1) calls
    rec = recorder.recording
    assert rec.steps.tolist() == [0, 3, 6, 9]
    assert np.abs(rec.gates[-1] - rec.gates[0]).max() > 1e-3   # training moved the gates


@pytest.mark.slow
def test_with_the_library_training_loop():
    from cgc_edu import add_adapters
    from cgc_edu.data import make_tiny_tasks
    from cgc_edu.train import train
    from tiny_models import TOK as tokenizer
    from tiny_models import tiny_base

    seed_everything(0)
    model = tiny_base()
    add_adapters(model, AdapterConfig.cgc_lora(rank=3, n_tasks=2, n_common=2, n_specific=1,
                                               target_modules=["q_proj", "v_proj"]))
    data = make_tiny_tasks(seed=0, tasks=["reverse", "first"], n_train=16, n_low=4,
                           n_validation=0, n_test=0)
    recorder = GateRecorder(model, task_names=["reverse", "first"])
    train(model, data["train"], tokenizer, steps=5, lr=0.05, batch_size=8, callback=recorder,
          callback_every=2, progress=False)
    rec = recorder.recording
    assert rec.steps.tolist() == [0, 2, 4, 5]          # start, every 2 steps, and the last
    assert rec.module_names == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert np.abs(rec.gates[-1] - rec.gates[0]).max() > 1e-4


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    recorder = GateRecorder(model, task_names=TASKS)
    for step in (0, 1):
        _scramble_gates(model, step)
        recorder.record(step)
    path = recorder.save(tmp_path / "gates.npz")
    loaded = GateRecording.load(path)
    original = recorder.recording
    np.testing.assert_array_equal(loaded.gates, original.gates)
    np.testing.assert_array_equal(loaded.steps, original.steps)
    for name in ("module_names", "task_names", "expert_labels", "n_common", "n_specific", "gate"):
        assert getattr(loaded, name) == getattr(original, name)


def test_loading_a_file_that_is_no_recording_fails_clearly(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a gate recording"):
        GateRecording.load(tmp_path / "other.npz")


def test_bad_arguments_fail_clearly():
    model = tiny_model()
    with pytest.raises(ValueError, match="2 task names"):
        GateRecorder(model, task_names=["a", "b"])
    with pytest.raises(ValueError, match="every=0"):
        GateRecorder(model, every=0)
    with pytest.raises(ValueError, match="no adapters"):
        GateRecorder(TinyBlocks())
    recorder = GateRecorder(model)
    with pytest.raises(ValueError, match="nothing recorded"):
        recorder.recording
    recorder.record(4)
    with pytest.raises(ValueError, match="step 2 comes before"):
        recorder.record(2)
    assert recorder.steps == [4]
    with pytest.raises(ValueError, match="another model"):
        recorder(4, tiny_model())


def test_re_recording_the_last_step_replaces_it():
    model = tiny_model()
    recorder = GateRecorder(model)
    recorder.record(3)
    _scramble_gates(model, 7)
    recorder.record(3)
    rec = recorder.recording
    assert rec.steps.tolist() == [3]
    np.testing.assert_allclose(rec.gates[0], recorder.snapshot(), rtol=1e-6)


def test_default_task_names_and_lora_preset():
    recorder = GateRecorder(tiny_model(AdapterConfig.lora(rank=4)))
    recorder.record(0)
    rec = recorder.recording
    assert rec.task_names == ["0"] and rec.expert_labels == ["common 0"]
    np.testing.assert_allclose(rec.gates, 1.0)


def test_recording_checks_shapes_and_lookups():
    rec = synthetic_recording()
    with pytest.raises(ValueError, match="shape"):
        GateRecording(steps=[0], gates=rec.gates, module_names=rec.module_names,
                      task_names=rec.task_names, expert_labels=rec.expert_labels,
                      n_common=2, n_specific=1)
    assert rec.task_index("sub") == 1 and rec.module_index(-1) == 3
    assert rec.step_index(20) == 2 and rec.step_index(-1) == 3
    with pytest.raises(KeyError, match="recorded steps are"):
        rec.step_index(7)
    with pytest.raises(KeyError, match="choose one of"):
        rec.task_index("mul")
