"""What the study compares, and with which settings: the methods (points of the one
CGC-LoRA space, plus the central model, independent LoRAs and 1+N), the learning-rate grid,
the seeds and every setting a run depends on.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..adapters.config import AdapterConfig, method_name

LR_GRID = (1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2)
SEEDS = (0, 1, 2, 3, 4)
PROMPT_SETTINGS = ("anonymous", "named")   # prompts that hide the task / that name it
#: joint warm-up steps the affinity study measures after (besides 1+N's own `Settings.affinity_warmup`)
AFFINITY_WARMUPS = (0, 60)
#: ways to cut an affinity into clusters: name -> (scipy linkage method, what is clustered)
CLUSTERINGS = {"average linkage of the affinity": ("average", "affinity"),
               "complete linkage of the profiles": ("complete", "profile")}


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    ``kind``: "central" (no adapter), "adapters" (one bank for all tasks, budget "total":
    the parameters of one LoRA of the study's rank), "separate" (one LoRA per task, each
    trained alone, at CGC-LoRA's per-task rank) or "one_plus_n" (one CGC-LoRA bank per
    cluster with CGC-LoRA's expert rank). ``tuned``: its learning rate is chosen from
    `LR_GRID`; otherwise it uses the rate chosen for ``lr_from``.
    """

    name: str
    label: str
    family: str            # "baseline", "ablation" or "sweep"
    kind: str = "adapters"
    n_common: int = 0
    n_specific: int = 0
    gate: str = "task"
    tuned: bool = False
    lr_from: str = "cgc_lora"   # whose chosen rate an untuned method uses

    def config(self, rank: int, n_tasks: int) -> AdapterConfig:
        """The AdapterConfig of an "adapters" method at total budget ``rank`` (scaling 2)."""
        return AdapterConfig(rank=rank, alpha=2.0 * rank, n_common=self.n_common,
                             n_specific=self.n_specific, n_tasks=n_tasks, gate=self.gate, budget="total")

    def task_rank(self, rank: int, n_tasks: int) -> int:
        """The rank one task sees: its allowed experts' ranks added up."""
        if self.kind == "central":
            return 0
        if self.kind == "separate":
            return METHODS["cgc_lora"].task_rank(rank, n_tasks)
        if self.kind == "one_plus_n":
            return expert_rank(rank, n_tasks) * (self.n_common + self.n_specific)
        config = self.config(rank, n_tasks)
        return config.expert_rank * config.experts_per_task


def expert_rank(rank: int, n_tasks: int) -> int:
    """CGC-LoRA's expert rank at total budget ``rank`` (1+N reuses it per cluster)."""
    return METHODS["cgc_lora"].config(rank, n_tasks).expert_rank


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("central", "central model (no adapter)", "baseline", kind="central"),
    Method("separate", "multiple independent models (one LoRA per task)", "baseline",
           kind="separate", tuned=True),
    Method("integrated", "integrated model (one LoRA, all tasks)", "baseline", n_common=1,
           gate="uniform", tuned=True),
    Method("moe_lora", "MoE-LoRA (4 experts)", "baseline", n_common=4, tuned=True),
    Method("cgc_lora", "CGC-LoRA (4 common + 1 specific)", "baseline", n_common=4, n_specific=1, tuned=True),
    Method("one_plus_n", "1+N: CGC-LoRA per measured cluster (2 + 1)", "baseline", kind="one_plus_n",
           n_common=2, n_specific=1, tuned=True),
    Method("one_plus_n_designed", "1+N: CGC-LoRA per designed cluster (2 + 1)", "ablation",
           kind="one_plus_n", n_common=2, n_specific=1, lr_from="one_plus_n"),
    Method("cgc_no_common", "CGC-LoRA without common experts (0 + 1)", "ablation", n_specific=1),
    Method("cgc_uniform", "CGC-LoRA with a uniform gate", "ablation", n_common=4, n_specific=1,
           gate="uniform"),
    Method("cgc_c8_s2", "CGC-LoRA 8 common + 2 specific", "sweep", n_common=8, n_specific=2),
    Method("cgc_c16_s1", "CGC-LoRA 16 common + 1 specific", "sweep", n_common=16, n_specific=1),
]}
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
    name_in_prompt: bool = True
    curve_points: int = 6            # validation exact match this many times per run
    min_separate_steps: int = 100    # each separately trained model gets at least this
    affinity: str = "transfer"       # how 1+N measures task affinity
    affinity_warmup: int = 0         # joint warm-up steps before measuring it (0: at the central model)
    base: Optional[str] = None       # central model folder; None: the shipped one
    threads: int = 1
    task_sampling: str = "uniform"   # every task an equal share of each batch ("data": by rows)
    grid_steps: Optional[int] = 600  # the learning-rate grid's runs: at most this many steps (None: ``steps``)
    suite: str = "tinytasks"         # the tasks (`cgc_edu.data.suites.suite`)

    @property
    def setting(self) -> str:
        return "named" if self.name_in_prompt else "anonymous"


def method_labels() -> dict[str, str]:
    """Each method's name -> its label in tables and figures."""
    return {m: s.label for m, s in METHODS.items()}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods by their one name (`method_name`: older names are read as the
    study's), checked: an unknown name fails with the list of known ones."""
    methods = [method_name(m) for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose among {list(METHODS)}.")
    return methods
