"""The real-model study under the fair protocol (`cgc_edu.study.real_fair`), on the tiny
central model and TinyTasks: every method trains and is scored item by item at equal
parameters, peft's baselines serve a mixed batch with adapter_names, the study tunes on
a seed it never reports and resumes, and a malformed --data file gets a clear error."""
import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.models import load_central_model
from cgc_edu.study import real_fair
from cgc_edu.study.protocol import Protocol
from cgc_edu.train.finetune import DataError

SETTINGS = real_fair.RealSettings(steps=4, grid_steps=2, batch_size=8, rank=24, min_part_steps=2,
                                  curve_points=2)


@pytest.fixture(scope="module")
def tiny():
    raw = make_tiny_tasks(seed=0, n_train=32, n_low=16, n_validation=2, n_test=3)
    tasks = [n for _, n in sorted(set(zip(raw["train"]["task_id"], raw["train"]["task"])))]
    clusters = {}
    for task in tasks:
        clusters.setdefault(raw["train"]["cluster"][raw["train"]["task"].index(task)], []).append(task)
    return load_central_model(), build_tokenizer(), real_fair.Suite(raw, tasks, clusters)


@pytest.mark.parametrize("method", real_fair.STUDIED)
def test_every_method_trains_at_equal_parameters_and_is_scored_by_item(tiny, method):
    base, tok, suite = tiny
    before = [p.clone() for p in base.parameters()]
    run = real_fair.run_one(base, tok, suite, method, seed=0, lr=1e-2, settings=SETTINGS)
    assert set(run["items"]) == set(suite.tasks)
    assert all(len(v) == 3 and set(v) <= {0, 1} for v in run["items"].values())
    assert run["test"] == pytest.approx({t: sum(v) / 3 for t, v in run["items"].items()})
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))   # the base untouched
    one_lora = sum(24 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if n.split(".")[-1] in SETTINGS.target_modules)
    # within one LoRA of rank 24 (1+N: CGC-LoRA's expert rank per cluster set, a little more)
    assert run["trainable_params"] <= 1.3 * one_lora + 10_000


def test_peft_serves_a_mixed_batch_with_adapter_names(tiny):
    base, tok, suite = tiny
    served = real_fair.build(base, "peft_task", suite, SETTINGS, seed=0)
    for name, _, model in served.parts(suite):      # make every adapter non-zero
        with torch.no_grad():
            for n, p in model.named_parameters():
                if f"lora_B.{name}." in n:
                    p.normal_(0, 0.05)
    ids = torch.randint(3, 20, (3, 6))
    tasks = [suite.tasks[0], suite.tasks[1], None]
    mixed = served.mixed_logits(ids, tasks)
    for row, task in enumerate(tasks):
        if task is None:
            with served.model.disable_adapter():
                alone = served.model(input_ids=ids[row:row + 1]).logits
        else:
            model, _ = served.scorer(task)
            alone = model(input_ids=ids[row:row + 1]).logits
        torch.testing.assert_close(mixed[row:row + 1], alone, rtol=1e-4, atol=1e-5)


def test_the_study_tunes_on_a_seed_it_does_not_report_and_resumes(tiny, tmp_path, monkeypatch):
    base, tok, suite = tiny
    calls = []
    real = real_fair.run_one
    monkeypatch.setattr(real_fair, "run_one", lambda *a, **k: calls.append(a[3:6]) or real(*a, **k))
    protocol = Protocol(seeds=(0, 1), grid_max=3)
    study = real_fair.run_study(tmp_path, base, tok, suite, ["peft_all", "cgc_lora"], SETTINGS, protocol)
    assert {r["seed"] for r in study["grid"]} == {protocol.tuning_seed}
    assert {r["seed"] for r in study["runs"]} == {0, 1} and len(calls) == 2 * 3 + 2 * 2
    frames = real_fair.tables(study, protocol)
    assert len(frames["comparisons"]) == 1
    assert frames["comparisons"]["verdict"].iloc[0] in ("ahead", "behind", "equivalent", "inconclusive")
    assert len(frames["items"]) == 2 * 2 * len(suite.tasks) * 3
    real_fair.run_study(tmp_path, base, tok, suite, ["peft_all", "cgc_lora"], SETTINGS, protocol)
    assert len(calls) == 10                                       # all read back
    real_fair.run_study(tmp_path, base, tok, suite, ["peft_all"], replace(SETTINGS, steps=5), protocol)
    assert len(calls) == 10 + 3 + 2                               # other settings: run again


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_your_tasks_from_jsonl(tmp_path):
    rows = [{"task": t, "prompt": f"{t} {i}", "target": str(i), "cluster": c}
            for t, c in (("a", "x"), ("b", "x"), ("c", "y")) for i in range(10)]
    data = real_fair.read_tasks(_write(tmp_path / "mine.jsonl", rows))
    assert [len(data[s]) for s in ("train", "validation", "test")] == [21, 3, 6]
    assert set(data["test"]["cluster"]) == {"x", "y"}
    train_prompts = set(data["train"]["prompt"])
    assert not train_prompts & set(data["test"]["prompt"])


@pytest.mark.parametrize("rows, message", [
    ([{"task": "a", "prompt": "p"}], "no 'target' column"),
    ([{"task": "", "prompt": "p", "target": "t"}], "the task .* is empty"),
    ([{"task": "a", "prompt": f"p{i}", "target": "t"} for i in range(2)], "task 'a' has 2 row"),
])
def test_a_malformed_file_is_a_clear_error(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        real_fair.read_tasks(_write(tmp_path / "bad.jsonl", rows))


def test_the_command_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="'dora'.*peft_task"):
        real_fair.main(["--methods", "dora"])


def test_end_to_end_through_the_router_answers_a_misrouted_item_with_its_adapter(tiny, monkeypatch):
    """A test item the router sends to another task is answered by that task's adapter (or
    by the bare model when sent to none); the others keep their scores."""
    base, tok, suite = tiny
    monkeypatch.setattr(real_fair, "general_probe",   # the tiny tokenizer has no chat template
                        lambda model, tokenizer, task_ids=None: pd.DataFrame({"right": [True, False]}))
    served = real_fair.build(base, "cgc_lora", suite, SETTINGS, seed=0)
    with torch.no_grad():
        for name, p in served.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    first, second = suite.tasks[:2]
    routes = {t: [t] * 3 for t in suite.tasks}
    routes[first] = [second, None, first]
    texts = ["cab=bac", "abc=cba"]
    extras = {"texts": texts, "base": base, "routes": {"test": routes}}
    items = {t: [0, 0, 0] for t in suite.tasks}
    out = real_fair._general(served, tok, suite, extras, items)
    rows = suite.data["test"].filter(lambda r: r["task"] == first)
    as_second = rows.select([0]).map(lambda r: {"task_id": suite.tasks.index(second)})
    want = int(real_fair.score_items(served.model, as_second, tok)["exact_match"].iloc[0])
    bare = int(real_fair.score_items(base, rows.select([1]), tok)["exact_match"].iloc[0])
    assert out["routed_items"][first][:2] == [want, bare]
    assert all(out["routed_items"][t] == items[t] for t in suite.tasks[1:])
    assert set(out["misrouted_probe"]) == set(suite.tasks)
    assert all(v > 0 for v in out["text_loss"].values())


def test_the_router_learns_general_questions_and_is_read_back_on_a_rerun(tiny, tmp_path, monkeypatch):
    """Two routers are fitted (passages alone, for the record; passages and short questions,
    used); a rerun on the same data reads router.json back instead of fitting again."""
    base, tok, suite = tiny
    fitted = []

    class Router:                 # stands in for TaskClassifier: records what it was given
        def fit(self, model, tokenizer, prompts, tasks, general=()):
            fitted.append(list(general))
            self.questions = any("HTML entity" in g or "Python keyword" in g for g in general)
            return self

        def predict(self, prompts):
            return [None if self.questions else "x" for _ in prompts]

        def error_rate(self, prompts, tasks):
            return 0.0

    class Chat:                   # the tiny tokenizer has no chat template
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "user: " + messages[0]["content"]

    monkeypatch.setattr(real_fair, "TaskClassifier", Router)
    monkeypatch.setattr(real_fair, "probe_prompts", lambda tokenizer: ["q1", "q2", "q3"])
    monkeypatch.setattr(real_fair, "general_probe",
                        lambda model, tokenizer: pd.DataFrame({"right": [True, True, False]}))
    extras = real_fair.router_extras(base, Chat(), suite, tmp_path, n_texts=4)
    record = json.loads((tmp_path / "router.json").read_text())
    assert len(fitted) == 2 and len(fitted[1]) == len(fitted[0]) + 64
    assert record["passages_only_probe_sent_to_an_adapter"] == 1.0
    assert record["probe_sent_to_an_adapter"] == 0.0 and record["central_probe"] == [1, 1, 0]
    again = real_fair.router_extras(base, Chat(), suite, tmp_path, n_texts=4)
    assert len(fitted) == 2 and again["routes"] == extras["routes"]      # read back
    monkeypatch.setattr(real_fair, "probe_prompts", lambda tokenizer: ["q1", "q2"])
    real_fair.router_extras(base, Chat(), suite, tmp_path, n_texts=4)    # other requests: refit
    assert len(fitted) == 4
