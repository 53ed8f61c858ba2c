"""The real-model study's bookkeeping: one budget for every method, resumable runs, tables."""
import json

import pytest

from cgc_edu.data.english import ENGLISH_TASK_NAMES, english_clusters
from cgc_edu.study import real_model
from cgc_edu.utils import training_seed
from test_smollm2 import needs_wheel


def test_every_method_has_the_same_budget():
    """Rank 16 in all (8 rank-2 experts' worth of A and B) per adapted projection, whatever
    the method."""
    configs = real_model.configs()
    n = len(ENGLISH_TASK_NAMES)
    units = {"integrated": configs["integrated"].rank}
    units["cgc_lora"] = configs["cgc_lora"].n_experts * configs["cgc_lora"].expert_rank
    one = configs["one_plus_n"]
    units["one_plus_n"] = sum(
        (one.n_common + one.n_specific * len(tasks)) * one.expert_rank
        for tasks in english_clusters().values())
    assert units == {"integrated": 16, "cgc_lora": 16, "one_plus_n": 16}
    assert {c.alpha / c.rank for c in configs.values()} == {2.0}
    assert configs["cgc_lora"].n_tasks == n


def fake_run(method, seed, base, tokenizer, data, settings):
    return {"method": method, "seed": seed, "training_seed": training_seed(seed),
            "settings": settings,
            "exact_match": {t: 0.5 for t in ENGLISH_TASK_NAMES} | {"average": 0.5},
            "probe": [{"question": "q", "answer": "a", "right": True}],
            "trainable_parameters": 1, "seconds": 1.0}


@needs_wheel
def test_the_study_resumes_and_reruns_what_changed(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(real_model, "run_one",
                        lambda *a: calls.append(a[:2]) or fake_run(*a))
    monkeypatch.setattr(real_model, "central_record", lambda *a: {
        "method": "central", "seed": None, "exact_match": {"average": 0.0},
        "probe": [{"question": "q", "answer": "a", "right": True}]})
    records = real_model.run_study(tmp_path, [0, 1], ["integrated", "cgc_lora"])
    assert calls == [("integrated", 0), ("cgc_lora", 0), ("integrated", 1), ("cgc_lora", 1)]
    real_model.run_study(tmp_path, [0, 1], ["integrated", "cgc_lora"])
    assert len(calls) == 4                                  # everything read back
    real_model.run_study(tmp_path, [0], ["integrated"], {"steps": 7})
    assert calls[-1] == ("integrated", 0)                   # other settings: run again
    scores, probe = real_model.tables(records)
    assert set(scores["method"]) == {"central", "integrated", "cgc_lora"}
    assert len(probe) == 5 and probe["right"].all()
    stored = json.loads((tmp_path / "runs" / "cgc_lora_seed1.json").read_text())
    assert stored["settings"]["steps"] == real_model.DEFAULTS["steps"]
    with pytest.raises(ValueError, match="unknown method"):
        real_model.run_study(tmp_path, [0], ["lora"])
