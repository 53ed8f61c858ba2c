"""The experiment runner: method configs at equal budget, one tiny run end to end, tables."""
import json

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from cgc_edu import add_adapters, trainable_parameters
from cgc_edu import experiments
from cgc_edu.experiments import (ALIASES, METHODS, SWEEP, Settings, main, markdown_tables,
                                 summary, within_spread)
from cgc_edu.models import central_config


def test_every_adapter_method_has_the_same_budget():
    base = LlamaForCausalLM(central_config())
    lora = trainable_parameters(add_adapters(LlamaForCausalLM(central_config()), METHODS["lora"].config(24, 8)))
    for name, method in METHODS.items():
        if method.kind != "adapters":
            continue
        model = add_adapters(LlamaForCausalLM(central_config()), method.config(24, 8))
        gates = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".gate." in n)
        assert trainable_parameters(model) - gates == lora, name
    # 1+N: two clusters of 4 tasks, each at half the rank: the same expert parameters again
    one_plus_n = METHODS["one_plus_n"]
    total = 0
    for _ in range(2):
        model = add_adapters(LlamaForCausalLM(central_config()), one_plus_n.config(12, 4))
        total += sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".gate." not in n)
    assert total == lora
    assert sum(p.numel() for p in base.parameters()) > 0
    assert set(SWEEP) <= set(METHODS) and all(run in METHODS for _, run in ALIASES.values())


def fake_results():
    rows = []
    for m, level in [("lora", 0.2), ("cgc_lora", 0.6), ("independent", 0.5), ("moe_lora", 0.3)]:
        for seed in range(3):
            for t, task in enumerate(["a", "b"]):
                rows.append({"method": m, "seed": seed, "task": task, "exact_match": level + 0.1 * t + 0.01 * seed,
                             "trainable_params": 100, "rank": 24})
    return pd.DataFrame(rows)


def test_summary_and_markdown():
    res = fake_results()
    stats = summary(res).set_index(["method", "task"])
    assert stats.loc[("cgc_lora", "a"), "mean"] == pytest.approx(0.61)
    assert stats.loc[("cgc_lora", "a"), "std"] == pytest.approx(0.01)
    assert stats.loc[("cgc_lora", "average"), "mean"] == pytest.approx(0.66)
    text = markdown_tables(res)
    assert "| CGC-LoRA (4 common + 1 specific) | 61.0 ± 1.0 | 71.0 ± 1.0 | 66.0 ± 1.0 | 100 |" in text
    assert "(= MoE-LoRA) | 31.0 ± 1.0" in text     # ablation alias reuses the MoE-LoRA run


def test_within_spread():
    res = fake_results()
    rerun = res[(res.method == "cgc_lora") & (res.seed == 1)]
    check = within_spread(rerun, res)
    assert check["ok"].all() and check["rerun"].iloc[0] == pytest.approx(0.66)
    off = rerun.assign(exact_match=rerun.exact_match + 0.2)
    assert not within_spread(off, res)["ok"].any()


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]; choose among"):
        experiments.run_study(["nope"], [0])


def test_cli_runs_a_tiny_study(tmp_path):
    # a tiny central model stands in for the shipped one (same architecture, random weights)
    torch.manual_seed(0)
    LlamaForCausalLM(central_config()).save_pretrained(tmp_path / "base")
    frame = main(["--methods", "central,cgc_lora,one_plus_n", "--seeds", "0", "--steps", "2",
                  "--n-test", "3", "--n-train", "16", "--n-low", "8", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "out"),
                  "--no-progress", "--threads", "1"])
    assert set(frame["method"]) == {"central", "cgc_lora", "one_plus_n"}
    assert len(frame) == 3 * 8 and frame["exact_match"].between(0, 1).all()
    params = frame.groupby("method")["trainable_params"].first()
    assert params["central"] == 0 and params["cgc_lora"] > 0
    stored = pd.read_csv(tmp_path / "out" / "results.csv")
    pd.testing.assert_frame_equal(stored, frame, check_dtype=False)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["settings"]["steps"] == 2 and config["seeds"] == [0]
    assert "--steps 2" in config["command"]
    assert "| central model (no adapter) |" in (tmp_path / "out" / "results.md").read_text()
