"""What the study compares, and with which settings: the methods (rows of the one table,
`cgc_edu.methods`), the learning-rate grid, the seeds and every setting a run depends on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..data.tinytasks import PROMPT_SETTINGS as PROMPTS
from ..methods import METHODS, column, method_name

LR_GRID = (1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2)
SEEDS = (0, 1, 2, 3, 4)
#: the prompt settings the first study runs (rows of `tinytasks.PROMPT_SETTINGS`)
STUDY_PROMPTS = ("anonymous", "named")
#: joint warm-up steps the affinity study measures after (besides 1+N's own `Settings.affinity_warmup`)
AFFINITY_WARMUPS = (0, 60)
#: ways to cut an affinity into clusters: name -> (scipy linkage method, what is clustered)
CLUSTERINGS = {"average linkage of the affinity": ("average", "affinity"),
               "complete linkage of the profiles": ("complete", "profile")}


#: Points of the (n_common, n_specific) sweep. Without specific experts, at the same total
#: budget, CGC-LoRA IS MoE-LoRA (4 + 0): that point is the MoE-LoRA row.
SWEEP = ["cgc_no_common", "moe_lora", "cgc_lora", "cgc_c8_s2", "cgc_c16_s1"]
#: Methods of the second table (anonymous prompts): what a task id adds.
ANONYMOUS = ["integrated", "moe_lora", "cgc_lora"]


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides the method, the seed and the learning rate.
    """

    steps: int = 1200
    batch_size: int = 32
    rank: int = 24
    n_train: int = 2000
    n_low: int = 20                  # 1/100 of a data-rich task: too few to learn alone
    n_validation: int = 50
    n_test: int = 100
    name_in_prompt: bool | str = True  # `make_tiny_tasks`: False, True (":") or " " (a space)
    curve_points: int = 6            # validation exact match this many times per run
    min_separate_steps: int = 100    # each separately trained model gets at least this
    affinity: str = "transfer"       # how 1+N measures task affinity
    affinity_warmup: int = 0         # joint warm-up steps before measuring it (0: at the central model)
    base: Optional[str] = None       # central model folder; None: the shipped one
    threads: int = 1
    task_sampling: str = "uniform"   # every task an equal share of each batch ("data": by rows)
    grid_steps: Optional[int] = 600  # the learning-rate grid's runs: at most this many steps (None: ``steps``)
    suite: str = "tinytasks"         # the tasks (`cgc_edu.data.suites.suite`)
    # the fair protocol's knobs (`cgc_edu.study.protocol`); the defaults are the study's
    # first recipe, so its stored runs keep their keys
    budget: str = "total"            # "total", "params" (every method within one LoRA's
    #                                  parameters) or "per_task" (every task sees rank ``rank``)
    alpha: Optional[float] = None    # None: 2 x rank (scaling 2 at every rank)
    rslora: bool = False             # scaling alpha / sqrt(r)
    warmup: float = 0.0              # share of the steps of linear warm-up
    clip: Optional[float] = None     # gradient-norm clipping
    best_checkpoint: bool = False    # test the best validation checkpoint
    items: bool = False              # store every test item's score

    @property
    def setting(self) -> str:
        return {v: k for k, v in PROMPTS.items()}[self.name_in_prompt]


def method_labels() -> dict[str, str]:
    """Each method's name -> its label in tables (the table's ``label`` column)."""
    return column("label")


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods by their one name (`method_name`: older names are read as the
    study's), checked: an unknown name fails with the list of known ones."""
    methods = [method_name(m) for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose among {list(METHODS)}.")
    return methods
