"""Save/load round trips, clear failures on bad files or bases, and export to peft."""
import json

import pytest
import torch
from peft import PeftModel

from cgc_edu import AdapterConfig, add_adapters, export_peft_lora, load_adapters, save_adapters
from cgc_edu.adapters.saving import CONFIG_NAME, WEIGHTS_NAME

from test_injection import TARGETS, adapted, assert_same_state, state
from tiny_models import tiny_llama  # tests/tiny_models.py
from cgc_edu.adapters.injection import adapter_config, adapter_layers
from cgc_edu.utils import relative_difference
from tiny_models import randomize, tiny_base  # tests/


@pytest.fixture

def x():
    torch.manual_seed(5)
    return torch.randint(1, 40, (3, 8)), torch.tensor([2, 0, 1])


@pytest.mark.parametrize("config", [
    AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=TARGETS),
    AdapterConfig.moe_lora(rank=4, n_tasks=3, shared_gate=True, target_modules=TARGETS),
    AdapterConfig.lora(rank=4),
], ids=["cgc", "moe-shared-gate", "lora"])

def test_save_then_load_gives_identical_outputs(tmp_path, x, config):
    tokens, ids = x
    ids = ids % config.n_tasks
    model = adapted(config)
    want = model(tokens, task_ids=ids).logits
    save_adapters(model, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([CONFIG_NAME, WEIGHTS_NAME])
    onto_base = load_adapters(tiny_llama(), tmp_path)           # bare base: adapters are added
    assert torch.equal(onto_base(tokens, task_ids=ids).logits, want)
    onto_adapted = load_adapters(add_adapters(tiny_llama(), config), tmp_path)
    assert torch.equal(onto_adapted(tokens, task_ids=ids).logits, want)


def test_load_onto_other_shapes_fails_clearly_and_leaves_model_unchanged(tmp_path):
    save_adapters(adapted(), tmp_path)
    other = tiny_llama(hidden=48)
    before = state(other)
    with pytest.raises(ValueError, match=r"module 'model\.layers\.0\.\S+' is \d+->\d+ in LlamaForCausalLM but \d+->\d+ in the saved"):
        load_adapters(other, tmp_path)
    assert_same_state(other, before)
    assert not hasattr(other, "_cgc")


def test_load_with_other_config_fails(tmp_path):
    save_adapters(adapted(), tmp_path)
    model = add_adapters(tiny_llama(), AdapterConfig.cgc_lora(rank=6, n_tasks=4, target_modules=TARGETS))
    before = state(model)
    with pytest.raises(ValueError, match="the model's adapters have config"):
        load_adapters(model, tmp_path)
    assert_same_state(model, before)


def test_corrupt_files_fail_clearly(tmp_path):
    save_adapters(adapted(), tmp_path)
    good = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(good[:len(good) // 2])
    model = tiny_llama()
    before = state(model)
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        load_adapters(model, tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(good)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["config"]["rank"] = 7
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a valid cgc_edu adapter config.*rank=7"):
        load_adapters(model, tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not a valid cgc_edu adapter config"):
        load_adapters(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="save_adapters"):
        load_adapters(model, tmp_path / "missing")
    assert_same_state(model, before)


def test_no_pickle_in_saved_files(tmp_path):
    save_adapters(adapted(), tmp_path)
    blob = (tmp_path / WEIGHTS_NAME).read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + header_len])         # a safetensors header: plain JSON
    assert "model.layers.0.self_attn.q_proj.lora_A" in header


@pytest.mark.parametrize("config", [
    AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, target_modules=TARGETS),
    AdapterConfig.cgc_lora(rank=10, n_tasks=3, n_specific=1, budget="total", target_modules=TARGETS),
], ids=["per_task", "total"])

def test_export_loads_in_peft_with_same_logits(tmp_path, x, config):
    tokens, _ = x
    model = adapted(config)
    for task in range(3):
        want = model(tokens, task_ids=torch.full((3,), task)).logits
        export_peft_lora(model, task, tmp_path / f"task{task}")
        peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path / f"task{task}").eval()
        torch.testing.assert_close(peft_model(input_ids=tokens).logits, want, rtol=1e-4, atol=1e-4)
    exported = json.loads((tmp_path / "task0" / "adapter_config.json").read_text())
    assert exported["r"] == config.experts_per_task * config.expert_rank


def test_export_bad_task_is_clear(tmp_path):
    with pytest.raises(ValueError, match="task id 7 is out of range"):
        export_peft_lora(adapted(), 7, tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_folder_is_not_peft_s_and_folders_of_the_old_name_still_load(tmp_path, x):
    from peft import PeftConfig

    from cgc_edu.adapters.saving import LEGACY_CONFIG_NAME

    tokens, ids = x
    model = adapted()
    save_adapters(model, tmp_path)
    assert not (tmp_path / LEGACY_CONFIG_NAME).exists()   # peft's name, peft's schema
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftConfig.from_pretrained(str(tmp_path))       # peft says so, misreads nothing
    # a folder written before issue 26, under peft's name, still loads
    (tmp_path / CONFIG_NAME).rename(tmp_path / LEGACY_CONFIG_NAME)
    loaded = load_adapters(tiny_llama(), tmp_path)
    want = model(tokens, task_ids=ids).logits
    assert torch.equal(loaded(tokens, task_ids=ids).logits, want)


# ------------------------------------------------------------------- rsLoRA


def test_rslora_is_a_config_option_saved_with_the_config(tmp_path):
    from cgc_edu import load_adapters, save_adapters

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, use_rslora=True)
    assert config.scaling == pytest.approx(12 / 6 ** 0.5)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in config.to_dict().items() if k != "use_rslora"}
    assert AdapterConfig.from_dict(legacy).use_rslora is False   # configs saved before
    with pytest.raises(ValueError, match="use_rslora"):
        AdapterConfig(use_rslora="yes")
    model = randomize(add_adapters(tiny_base(), config))
    assert {l.scaling for l in adapter_layers(model).values()} == {config.scaling}
    save_adapters(model, tmp_path)
    loaded = load_adapters(tiny_base(), tmp_path)
    assert adapter_config(loaded).use_rslora is True
    tokens, ids = torch.randint(4, 40, (3, 6)), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, task_ids=ids).logits,
                                   model(tokens, task_ids=ids).logits)


def test_rslora_exports_to_peft_with_the_same_logits(tmp_path):
    from peft import PeftModel

    config = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, use_rslora=True)
    model = randomize(add_adapters(tiny_base(), config)).eval()
    tokens = torch.randint(4, 40, (2, 6))
    export_peft_lora(model, 1, tmp_path)
    served = PeftModel.from_pretrained(tiny_base(), str(tmp_path)).eval()
    with torch.no_grad():
        want = model(tokens, task_ids=torch.tensor([1, 1])).logits
        assert relative_difference(served(tokens).logits, want) < 1e-5
