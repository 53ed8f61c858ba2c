"""Bring your own model and data: cgc_edu.train.finetune on the central model saved as a local folder."""
import json
import warnings

import pytest
import torch
from datasets import Dataset

from cgc_edu import AdapterConfig
from cgc_edu.data import TinyTasksCollator, build_tokenizer, make_tiny_tasks
from cgc_edu.train.finetune import (DataError, FinetuneSettings, check_fits_context, context_length,
                              finetune, load_model_and_tokenizer, load_task_data, main, method_config,
                              split_per_task)
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.models import load_central_model

TASKS = ["first", "last"]  # same prompts, different answers: only the task ids separate them


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("central")
    load_central_model().save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    data = make_tiny_tasks(seed=0, tasks=TASKS, n_train=300, n_validation=0, n_test=40)
    keep = lambda split: [{k: r[k] for k in ("prompt", "target", "task")} for r in data[split]]
    return _write_jsonl(folder / "train.jsonl", keep("train")), _write_jsonl(folder / "test.jsonl", keep("test"))


def test_cli_trains_evaluates_per_task_and_exports_peft_adapters(model_dir, files, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    torch.manual_seed(0)
    run = main(["--model", str(model_dir), "--data", str(files[0]), "--eval-data", str(files[1]),
                "--tasks-column", "task", "--method", "cgc_lora", "--rank", "6", "--alpha", "12", "--n-specific", "1",
                "--steps", "60", "--batch-size", "32", "--lr", "1e-2", "--device", "cpu",
                "--output-dir", str(out), "--no-progress"])
    assert run.tasks == TASKS  # sorted names -> ids 0, 1
    assert run.losses[-1] < 0.5 * run.losses[0]
    assert list(run.table.index) == TASKS + ["average"] and (run.table.loc[TASKS, "n"] == 40).all()
    assert (run.table.loc[TASKS, "exact_match"] > 0.8).all()
    saved = json.loads((out / "run.json").read_text())
    assert saved["tasks"] == {"first": 0, "last": 1} and saved["config"]["n_specific"] == 1
    assert (out / "eval.csv").is_file() and (out / "adapters" / "adapters.safetensors").is_file()

    ids = TinyTasksCollator(build_tokenizer())([{"prompt": "cab=", "target": "c", "task_id": 0},
                                                 {"prompt": "hello=", "target": "o", "task_id": 0}])
    for task_id, task in enumerate(TASKS):
        base, _ = load_model_and_tokenizer(str(model_dir))
        peft_model = PeftModel.from_pretrained(base, str(run.exports[task])).eval()
        with torch.no_grad():
            ours = run.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                             task_ids=torch.full((2,), task_id)).logits
            theirs = peft_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_cli_trains_a_bfloat16_model_with_float32_adapters(model_dir, files, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    few = _write_jsonl(tmp_path / "few.jsonl", [json.loads(line) for line in files[1].read_text().splitlines()[:8]])
    torch.manual_seed(0)
    run = main(["--model", str(model_dir), "--data", str(files[0]), "--eval-data", str(few),
                "--method", "cgc_lora", "--rank", "6", "--alpha", "12", "--n-specific", "1",
                "--steps", "15", "--batch-size", "16", "--lr", "1e-2", "--device", "cpu",
                "--dtype", "bfloat16", "--output-dir", str(out), "--no-progress"])
    layer = next(iter(adapter_layers(run.model).values()))
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    assert run.model.lm_head.weight.dtype == torch.bfloat16
    assert run.losses[-1] < 0.7 * run.losses[0]
    assert json.loads((out / "run.json").read_text())["dtype"] == "bfloat16"
    assert list(run.table.index) == TASKS + ["average"]

    ids = TinyTasksCollator(build_tokenizer())([{"prompt": "cab=", "target": "c", "task_id": 0}])
    base, _ = load_model_and_tokenizer(str(model_dir), dtype="bfloat16")
    peft_model = PeftModel.from_pretrained(base, str(run.exports["last"])).eval()
    with torch.no_grad():
        ours = run.model(input_ids=ids["input_ids"], task_ids=torch.tensor([1])).logits
        theirs = peft_model(input_ids=ids["input_ids"]).logits
    assert theirs.dtype == torch.bfloat16
    # bfloat16 keeps ~3 significant digits; the logits of this model reach ~10.
    torch.testing.assert_close(theirs.float(), ours.float(), atol=0.15, rtol=0.02)
    with pytest.raises(ValueError, match=r"dtype='half'.*bfloat16"):
        load_model_and_tokenizer(str(model_dir), dtype="half")


@pytest.mark.parametrize("method, experts", [("integrated", 1), ("separate", 3),
                                             ("moe_lora", 4), ("cgc_lora", 8),
                                             ("lora", 1), ("independent", 3)])  # older
def test_every_preset_by_name(method, experts):
    config = method_config(method, n_tasks=3, rank=8, alpha=16)  # the defaults divide evenly
    assert config.n_experts == experts and config.n_tasks == 3 and config.scaling == 2.0


def test_the_cgc_lora_preset_defaults_divide():
    config = AdapterConfig.cgc_lora()
    assert (config.rank, config.n_common, config.n_specific, config.expert_rank) == (6, 2, 1, 2)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="'dora'.*cgc_lora"):
        method_config("dora", n_tasks=2)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['n_shared'\].*'n_common'"):
        method_config("cgc_lora", n_tasks=2, n_shared=2)
    # the expert counts a preset has no use for are ignored, as the command line passes them all
    assert method_config("moe_lora", n_tasks=2, n_common=3, n_experts=2).n_experts == 2


def test_finetune_takes_its_knobs_as_settings_or_keywords(model_dir, files, tmp_path):
    data = load_task_data(files[0])
    config = method_config("integrated", n_tasks=2, rank=4, alpha=8)
    runs = []
    for how, kwargs in [("keywords", dict(steps=3, batch_size=8, seed=1, progress=False,
                                          base_model_name_or_path="mine")),
                        ("settings", dict(settings=FinetuneSettings(steps=3, batch_size=8, seed=1, progress=False,
                                                                     base_model_name_or_path="mine")))]:
        model, tok = load_model_and_tokenizer(str(model_dir))
        torch.manual_seed(0)
        runs.append(finetune(model, tok, data, None, config, tmp_path / how, **kwargs))
        saved = json.loads((tmp_path / how / "run.json").read_text())
        assert (saved["steps"], saved["batch_size"], saved["seed"], saved["lr"], saved["base_model"]) == \
            (3, 8, 1, 3e-3, "mine")
    assert runs[0].losses == runs[1].losses and runs[0].table is None
    model, tok = load_model_and_tokenizer(str(model_dir))
    with pytest.raises(TypeError, match=r"unknown knob\(s\) \['step'\]; a FinetuneSettings has"):
        finetune(model, tok, data, None, config, tmp_path / "typo", step=3)
    assert not adapter_layers(model)


def test_jsonl_csv_and_datasets_folders_read_the_same(files, tmp_path):
    from_jsonl = load_task_data(files[0])
    rows = from_jsonl.to_list()
    assert set(from_jsonl.column_names) == {"prompt", "target", "task", "task_id", "where"}
    assert {(r["task"], r["task_id"]) for r in rows} == {("first", 0), ("last", 1)}
    assert rows[4]["where"] == f"{files[0]} line 5"
    # Other column names, in a CSV, named on the command line.
    csv_path = tmp_path / "train.csv"
    Dataset.from_list([{"question": r["prompt"], "answer": r["target"], "kind": r["task"]}
                       for r in rows]).to_csv(str(csv_path), index=False)
    from_csv = load_task_data(csv_path, prompt_column="question", target_column="answer", task_column="kind")
    assert from_csv["prompt"][:] == from_jsonl["prompt"][:] and from_csv["task_id"][:] == from_jsonl["task_id"][:]
    assert from_csv["where"][0] == f"{csv_path} line 2"  # line 1 is the header
    # A folder saved with save_to_disk, and a folder of data files read by datasets.load_dataset.
    Dataset.from_list([{k: r[k] for k in ("prompt", "target", "task")} for r in rows]).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "hubstyle").mkdir()
    (tmp_path / "hubstyle" / "train.jsonl").write_text(files[0].read_text())
    for source in (tmp_path / "saved", tmp_path / "hubstyle"):
        loaded = load_task_data(str(source))
        assert loaded["target"][:] == from_jsonl["target"][:] and loaded["where"][3] == f"{source}[train] row 3"


def test_split_per_task_holds_out_each_task():
    data = Dataset.from_list([{"prompt": f"{i}=", "target": "a", "task": t, "task_id": k, "where": ""}
                              for k, (t, n) in enumerate([("big", 50), ("small", 2), ("one", 1)])
                              for i in range(n)])
    train_part, held = split_per_task(data, eval_fraction=0.1, seed=0)
    assert sorted(held["task"][:]) == ["big"] * 5 + ["small"]  # at least one, never a task's last row
    assert len(train_part) + len(held) == len(data)
    assert not set(zip(train_part["task"][:], train_part["prompt"][:])) & set(zip(held["task"][:], held["prompt"][:]))
    with pytest.raises(ValueError, match="eval_fraction=1.0"):
        split_per_task(data, eval_fraction=1.0)


GOOD = '{"prompt": "cab=", "target": "c", "task": "first"}\n'


@pytest.mark.parametrize("name, text, kwargs, words", [
    ("missing.jsonl", GOOD + '{"prompt": "ab=", "target": "a"}\n', {}, r"line 2: no 'task' column.*--tasks-column"),
    ("notask.jsonl", GOOD + '{"prompt": "ab=", "target": "a", "task": " "}\n', {}, r"line 2: the task \('task'\) is empty"),
    ("unknown.jsonl", GOOD + GOOD.replace("first", "frist"), {"tasks": ["first"]}, r"line 2: unknown task 'frist'.*\['first'\]"),
    ("empty.jsonl", "\n\n", {}, r"empty.*no rows"),
    ("broken.jsonl", GOOD + GOOD + '{"prompt": "ab=", "target": \n', {}, r"line 3: invalid JSON"),
    ("number.jsonl", '{"prompt": "ab=", "target": 2, "task": "length"}\n', {}, r"line 1: the target \('target'\) is 2, not a string"),
    ("blank.jsonl", '{"prompt": "", "target": "a", "task": "first"}\n', {}, r"line 1: the prompt \('prompt'\) is empty"),
    ("header.csv", "prompt,answer,task\ncab=,c,first\n", {}, r"line 1: the header .* no column 'target'.*--target-column"),
    ("nofile.jsonl", None, {}, r"no such file"),
])
def test_bad_data_names_the_file_the_row_and_the_fix(tmp_path, name, text, kwargs, words):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=words) as caught:
        load_task_data(path, **kwargs)
    assert str(path) in str(caught.value)


def test_a_row_longer_than_the_context_is_refused_before_training(model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(str(model_dir))
    assert context_length(model, tok) == 64
    path = _write_jsonl(tmp_path / "long.jsonl", [{"prompt": "ab=", "target": "a", "task": "first"},
                                                  {"prompt": "a" * 70 + "=", "target": "b", "task": "first"}])
    data = load_task_data(path)
    with pytest.raises(DataError, match=r"long.jsonl line 2: prompt \+ target \+ eos is 74 tokens.*context of 64"):
        check_fits_context(data, tok, context_length(model, tok))
    config = method_config("integrated", n_tasks=1, rank=4, alpha=8)
    with pytest.raises(DataError, match="line 2"):
        finetune(model, tok, data.select([0]), data, config, tmp_path / "out", steps=1, progress=False)
    assert not adapter_layers(model) and not (tmp_path / "out").exists()  # nothing changed


def test_a_tokenizer_without_pad_gets_eos_and_the_same_loss(model_dir, tmp_path):
    tok = build_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    load_central_model().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no pad token; using its eos token '<eos>'"):
        model, no_pad = load_model_and_tokenizer(str(tmp_path))
    assert no_pad.pad_token_id == no_pad.eos_token_id
    rows = [{"prompt": "cab=", "target": "bac", "task_id": 0}, {"prompt": "hello=", "target": "o", "task_id": 0}]
    with torch.no_grad():  # padding is masked by position: which id pads does not matter
        with_eos = model(**{k: v for k, v in TinyTasksCollator(no_pad)(rows).items() if k != "task_ids"}).loss
        with_pad = model(**{k: v for k, v in TinyTasksCollator(build_tokenizer())(rows).items() if k != "task_ids"}).loss
    torch.testing.assert_close(with_eos, with_pad)


def test_a_model_that_is_not_there(tmp_path):
    with pytest.raises(OSError, match="cannot load the model .*nowhere.*no such folder.*save_pretrained"):
        load_model_and_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(OSError, match=r"(?s)cannot load the model 'no-such-org/no-such-model'.*download"):
        load_model_and_tokenizer("no-such-org/no-such-model")  # offline, and not in the cache
