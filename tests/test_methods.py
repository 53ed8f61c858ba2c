"""The one table of methods (`cgc_edu.methods`): every reader takes its names, labels,
colours and presets from it, and no module keeps a second table of them."""
import ast
from pathlib import Path

import pytest
import torch
from tiny_models import randomize, tiny_base  # tests/

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.course import plots
from cgc_edu.methods import METHODS, MTL_MODELS, PRESETS, column, method, method_name, method_of
from cgc_edu.study.fair_map import ABLATIONS, METHODS_MAPPED
from cgc_edu.study.methods import method_labels
from cgc_edu.train.finetune import method_config

ROOT = Path(__file__).resolve().parent.parent
NAMES = set(METHODS) | {a for m in METHODS.values() for a in m.aliases}


def _constant(node) -> bool:
    """A literal: a string, a number, or a tuple / list of literals."""
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, (ast.Tuple, ast.List)) and all(map(_constant, node.elts))


def vocabulary_tables(path: Path, root: Path = ROOT) -> list[str]:
    """Dict literals keyed by two or more method names whose values are literals (labels,
    colours, short names, rates): a second table of the methods' vocabulary."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & NAMES) >= 2 and all(map(_constant, node.values)):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
        if isinstance(node, ast.ClassDef) and node.name == "Method" and path.name != "methods.py":
            found.append(f"{path.relative_to(root)}:{node.lineno} class Method")
    return found


def test_no_second_table_of_methods():
    files = [p for p in (ROOT / "cgc_edu").rglob("*.py") if p != ROOT / "cgc_edu" / "methods.py"]
    found = [hit for p in files for hit in vocabulary_tables(p)]
    assert not found, f"a second table of methods: {found}; read cgc_edu.methods instead"


def test_the_scan_finds_a_table_where_there_is_one(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text('NAMES = {"cgc_lora": "CGC", "moe_lora": "MoE"}\n'
                   'CONFIGS = {"cgc_lora": f(1), "moe_lora": f(2)}\n'
                   'class Method:\n    pass\n')
    assert sorted(vocabulary_tables(bad, tmp_path)) == ["probe.py:1", "probe.py:3 class Method"]


def test_every_row_is_complete_and_its_colour_its_own():
    for m in METHODS.values():
        assert m.label and m.short and m.color.startswith("#") and len(m.color) == 7
        assert m.kind in ("central", "adapters", "separate", "one_plus_n", "peft")
        assert m.family in ("baseline", "ablation", "sweep")
        assert m.lr_from in METHODS
        assert (m.per in ("task", "cluster", "all")) == (m.kind == "peft")
    colours = [m.color.lower() for m in METHODS.values()]
    assert len(set(colours)) == len(colours)


def test_readers_take_the_table():
    assert plots.method_style("cgc_lora") == (METHODS["cgc_lora"].color, "CGC-LoRA")
    assert plots.method_style("lora") == plots.method_style("integrated")
    assert plots.method_style("MMoE") == MTL_MODELS["mmoe"][::-1]
    assert method_labels() == column("label")
    assert set(METHODS_MAPPED) | set(ABLATIONS) <= set(METHODS)
    assert set(PRESETS) == {"integrated", "separate", "moe_lora", "cgc_lora"}
    for name in PRESETS:   # each preset builds its row's shape
        config = method_config(name, n_tasks=3, rank=12, n_common=2, n_specific=2)
        assert method_of(config) == METHODS[name].short


def test_older_names_and_unknown_ones():
    assert method_name("lora") == "integrated" and method_name("cgc_no_gate") == "cgc_uniform"
    assert method("independent") is METHODS["separate"]
    with pytest.raises(ValueError, match="'dora'.*cgc_lora"):
        method("dora")


def test_method_of_names_every_point_of_the_family():
    assert method_of(AdapterConfig.cgc_lora(rank=6, gate="uniform")) == "CGC-LoRA, uniform gate"
    assert method_of(AdapterConfig.moe_lora(gate="uniform")) == "MoE-LoRA, uniform gate"
    assert method_of(AdapterConfig(rank=4, n_common=0, n_specific=2, n_tasks=2)) == \
        "CGC-LoRA, no common experts"


def test_which_methods_need_a_task_id_with_each_request():
    """One bank without a gate (one LoRA) and peft's LoRA for all need no id; every method
    that routes by task does, so it merges per task, not once."""
    needs = {m: METHODS[m].needs_task_id for m in METHODS}
    assert {m for m, v in needs.items() if not v} == {"central", "integrated", "peft_all"}
    for m in ("separate", "moe_lora", "cgc_lora", "cgc_uniform", "one_plus_n", "peft_task",
              "peft_cluster", "cgc_no_common"):
        assert needs[m], m
    # the layer agrees: a task id changes the output exactly where one is needed
    for m in ("integrated", "moe_lora", "cgc_lora", "cgc_uniform"):
        model = randomize(add_adapters(tiny_base(), METHODS[m].config(20, 3, "per_task")))
        ids = torch.tensor([[5, 6, 7, 8]] * 3)
        with torch.no_grad():
            out = model(ids, task_ids=torch.tensor([0, 1, 2])).logits
        depends = not torch.allclose(out[0], out[1]) or not torch.allclose(out[0], out[2])
        assert depends == METHODS[m].needs_task_id, m
