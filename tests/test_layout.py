"""The expert layout has one source (AdapterConfig.layout) that the layer, recorder, plots and widget read.

And the library's core reads like its method: in the core packages (everything but the course
and the study, which sit on top) no function is over 60 lines or takes over 8 parameters, and
nothing imports from ``cgc_edu.course`` or ``cgc_edu.study``."""
import ast
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from cgc_edu import AdapterConfig, CGCLoRALinear, ExpertLayout
from cgc_edu.course import plots
from cgc_edu.course.recording import GateRecorder
from cgc_edu.course.widgets import GateInspector
from fixtures.gate_data import tiny_model


def design_mask(n_common, n_specific, n_tasks):
    """The design's rule written out: common experts first, then n_specific per task."""
    E = n_common + n_tasks * n_specific
    return np.array([[e < n_common or n_common + t * n_specific <= e < n_common + (t + 1) * n_specific
                      for e in range(E)] for t in range(n_tasks)])


@pytest.mark.parametrize("c,k,n", [(2, 1, 4), (0, 3, 2), (4, 0, 3), (1, 0, 1), (0, 1, 5), (3, 2, 3)])
def test_layout_matches_the_design_rule(c, k, n):
    layout = AdapterConfig(rank=12 * (c + k), n_common=c, n_specific=k, n_tasks=n).layout
    assert layout == ExpertLayout(c, k, n)
    assert layout.n_experts == c + n * k and layout.experts_per_task == c + k
    mask = design_mask(c, k, n)
    np.testing.assert_array_equal(layout.allowed_mask(), mask)
    for t in range(n):
        assert layout.allowed(t) == np.flatnonzero(mask[t]).tolist()
        assert list(layout.common()) + list(layout.specific(t)) == layout.allowed(t)
    np.testing.assert_array_equal(layout.allowed_table(), [layout.allowed(t) for t in range(n)])
    blocks = layout.blocks()
    assert [(b.start, b.stop) for b in blocks] == (
        ([(0, c)] if c else []) + ([(c + t * k, c + (t + 1) * k) for t in range(n)] if k else []))
    assert [b.task for b in blocks if b.kind == "specific"] == (list(range(n)) if k else [])


def test_labels_and_bad_task():
    layout = ExpertLayout(2, 1, 2)
    assert layout.labels(["add", "copy"]) == ["common 0", "common 1", "task add / 0", "task copy / 0"]
    with pytest.raises(ValueError, match=r"layer\.q: got 1 task names for 2 tasks"):
        layout.labels(["add"], where="layer.q")
    with pytest.raises(ValueError, match=r"task 2 is not a task index.*\[0, 1\]"):
        layout.specific(2)


def test_layer_recorder_and_plots_read_the_configs_layout():
    config = AdapterConfig.cgc_lora(rank=6, alpha=6, n_tasks=3, n_common=2, n_specific=1)
    mask = config.layout.allowed_mask()
    layer = CGCLoRALinear(nn.Linear(4, 4), config)
    np.testing.assert_array_equal(layer.gate.mask.numpy(), mask)
    np.testing.assert_array_equal(layer.allowed.numpy(), config.layout.allowed_table())
    # task t's one LoRA stacks the rows of S_t's experts, expert by expert
    A_t, _ = layer.task_lora(torch.tensor([2]))
    want = layer.lora_A[config.allowed_experts(2)].reshape(-1, 4)
    torch.testing.assert_close(A_t[0], want)
    np.testing.assert_array_equal((layer.gate_weights(torch.arange(3)) > 0).numpy(), mask)

    model = tiny_model(config)
    recorder = GateRecorder(model, task_names=["a", "b", "c"])
    recorder.record(0)
    rec = recorder.recording
    assert rec.layout == config.layout
    np.testing.assert_array_equal(rec.allowed_mask(), mask)
    assert rec.expert_labels == config.layout.labels(["a", "b", "c"])
    fig = plots.gate_heatmap(rec, 0)
    widths = {round(line.get_xdata()[0], 2): line.get_linewidth() for line in fig.axes[0].lines}
    assert widths == {1.5: 3, 2.5: 1, 3.5: 1}  # thick after the common block, thin between tasks
    plt.close("all")


def test_widget_reads_the_layout_for_single_expert_adapters():
    model = tiny_model(AdapterConfig.independent(rank=4, n_tasks=3))
    inspector = GateInspector(model)
    assert "every task uses a single expert (n_common=0, n_specific=1" in inspector.note
    assert "No gates to inspect" in GateInspector(tiny_model(AdapterConfig.lora(rank=4))).note
    assert "No gates" not in GateInspector(tiny_model()).note


def test_config_is_frozen_and_replace_gives_a_checked_copy():
    config = AdapterConfig.cgc_lora(rank=6, n_tasks=3, target_modules=["q_proj", "v_proj"])
    assert config.target_modules == ("q_proj", "v_proj")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 8
    bigger = dataclasses.replace(config, n_tasks=5)
    assert bigger.n_experts == 7 and config.n_experts == 5
    with pytest.raises(ValueError, match="rank=7 does not divide"):
        dataclasses.replace(config, rank=7)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["target_modules"] == ["q_proj", "v_proj"]


# ------------------------------------------------------------- the core reads like its method
PKG = Path(__file__).resolve().parent.parent / "cgc_edu"
#: The core: what a model, its adapters, data, training and 1+N need. The course (notebook
#: widgets, exercises) and the study (experiments) are built on top of it, never under it.
CORE = ("adapters", "data", "framework", "models", "train", "methods.py", "moe.py", "mtl.py", "utils.py")
ON_TOP = ("cgc_edu.course", "cgc_edu.study")
MAX_LINES, MAX_PARAMS = 60, 8


def core_files() -> list[Path]:
    files = []
    for name in CORE:
        path = PKG / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement imports (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _parameters(node) -> list[str]:
    """Named parameters, self / cls not counted; ``*args`` / ``**knobs`` (a pass-through whose
    names a settings dataclass checks, as `train` takes a `Recipe`'s fields) are not counted."""
    args = node.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    if names[:1] in (["self"], ["cls"]):
        names = names[1:]
    return names


def offences(source: str, module: str, is_package: bool = False, where: str = "") -> list[str]:
    """What breaks the core's rules in one module's source: each long function, each function
    with too many parameters (by qualified name), each import from the course or the study."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{where}:{child.lineno} {name} has {lines} lines (at most {MAX_LINES})")
                params = _parameters(child)
                if len(params) > MAX_PARAMS:
                    found.append(f"{where}:{child.lineno} {name} has {len(params)} parameters "
                                 f"(at most {MAX_PARAMS}): {params}")
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    above = [target for target in _imported(child, module, is_package)
                             if any(target == top or target.startswith(top + ".") for top in ON_TOP)]
                    if above:
                        found.append(f"{where}:{child.lineno} {module} imports {above[0]}")
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_core_has_short_functions_few_parameters_and_no_import_from_above():
    files = core_files()
    assert len(files) > 20 and PKG / "train" / "loop.py" in files
    found = [offence for path in files
             for offence in offences(path.read_text(), _module_name(path), path.name == "__init__.py",
                                     str(path.relative_to(PKG.parent)))]
    assert not found, ("the core must read like its method: split long functions into named "
                       "steps, group threaded knobs into a settings dataclass, and import "
                       "nothing from the course or the study:\n" + "\n".join(found))


def test_the_layout_check_names_what_it_finds():
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    source = ("from ..study import runner\n"
              "from .. import course\n"
              "import cgc_edu.course.plots\n"
              "from ..data import tinytasks\n"
              f"def long(a):\n    \"\"\"Doc.\"\"\"\n{body}\n"                    # 61 lines
              f"def short(a):\n{body}\n"                                      # 60 lines
              "class Knobs:\n"
              "    def many(self, a, b, c, d, e, f, g, h, i, **more):\n        pass\n"
              "    @classmethod\n"
              "    def fine(cls, a, b, c, d, e, f, g, h, *rest, **more):\n        pass\n")
    found = offences(source, "cgc_edu.framework.demo", where="demo.py")
    many = 5 + 61 + 60 + 1
    assert found == [
        "demo.py:1 cgc_edu.framework.demo imports cgc_edu.study",
        "demo.py:2 cgc_edu.framework.demo imports cgc_edu.course",
        "demo.py:3 cgc_edu.framework.demo imports cgc_edu.course.plots",
        "demo.py:5 long has 61 lines (at most 60)",
        f"demo.py:{many} Knobs.many has 9 parameters (at most 8): {list('abcdefghi')}",
    ]
