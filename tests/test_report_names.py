"""`report.method_table` names its rows by the labels with the study's sizes, or by the names
a chapter passes (chapter 12 passes the short ones)."""
import pandas as pd

from cgc_edu.study.report import method_table


def _runs():
    return pd.DataFrame([{"setting": "named", "method": m, "seed": s, "task": "a",
                          "low_data": False, "exact_match": 0.5, "trainable_params": 100,
                          "task_rank": 10, "lr": 3e-3}
                         for m in ("integrated", "cgc_lora") for s in range(3)])


def test_method_table_takes_the_names_it_is_given():
    default = method_table(_runs(), ["integrated", "cgc_lora"])
    assert "| integrated model (one LoRA, all tasks) |" in default
    named = method_table(_runs(), ["integrated", "cgc_lora"],
                         names={"integrated": "one LoRA", "cgc_lora": "CGC-LoRA"})
    rows = [line.split(" | ")[0] for line in named.splitlines()[2:]]
    assert rows == ["| one LoRA", "| CGC-LoRA"]
    # a method the names leave out keeps its label
    partial = method_table(_runs(), ["integrated", "cgc_lora"], names={"integrated": "one LoRA"})
    assert "| CGC-LoRA (4 common + 1 specific) |" in partial
