"""The one table of methods: every method the course, the study, the map, the real-model
study, ``finetune``, the plots and the diagrams name, with everything they say of it.

A method is a point of the one layer family (`cgc_edu.adapters.AdapterConfig`: how many
common and specific experts, which gate), or one of the ways of serving several tasks that
sit around it (no adapter, one model per task, one CGC-LoRA set per cluster). Each row says:

* ``name``: the one key (``"cgc_lora"``); older names are read through ``aliases``;
* ``label``: its line in a table, with the study's sizes ("CGC-LoRA (4 common + 1 specific)");
* ``short``: its name in figures and prose ("CGC-LoRA");
* ``color``: its colour in every figure (Okabe-Ito, colour-blind safe);
* ``kind``: "central" (no adapter), "adapters" (one bank for all tasks), "separate" (one LoRA
  per task, each trained alone), "one_plus_n" (one CGC-LoRA bank per cluster) or "peft"
  (peft's own LoRAs, one per ``per``: "task", "cluster" or "all", served with
  ``adapter_names``);
* ``preset``: the `AdapterConfig` preset that builds it (``finetune --method`` offers these);
* the study's defaults: ``n_common``, ``n_specific``, ``gate``, its ``family`` ("baseline",
  "ablation" or "sweep"), whether its learning rate is ``tuned`` (else it takes that of
  ``lr_from``), and ``lr``, the centre of its rate grid under the fair protocol (the first
  study's choice at budget 24).

Nothing else in cgc_edu keeps a table keyed by method (a test checks it): read a row with
`method`, or a column with `column`.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .adapters.config import AdapterConfig


@dataclass(frozen=True)
class Method:
    """One row of the table of methods (see the module's docstring for each field)."""

    name: str
    label: str
    short: str
    color: str
    family: str = "baseline"
    kind: str = "adapters"
    n_common: int = 0
    n_specific: int = 0
    gate: str = "task"
    tuned: bool = False
    lr_from: str = "cgc_lora"
    lr: float = 1.2e-2
    per: Optional[str] = None
    preset: Optional[str] = None
    aliases: tuple = ()

    @property
    def needs_task_id(self) -> bool:
        """Whether each request must bring its task's id: every method that routes by task
        does; one LoRA for all tasks (one bank, no gate), peft's LoRA for all and the bare
        central model do not. A method that needs no id merges into W0 once; the others merge
        per task (or are served unmerged with their ids)."""
        if self.kind == "central":
            return False
        if self.kind == "peft":
            return self.per != "all"
        if self.kind == "adapters":     # the layer's own rule, on the bank's shape
            return AdapterConfig(rank=self.n_common + self.n_specific, n_common=self.n_common,
                                 n_specific=self.n_specific, gate=self.gate,
                                 n_tasks=2).needs_task_ids
        return True

    def config(self, rank: int, n_tasks: int, budget: str = "total", alpha: Optional[float] = None,
               use_rslora: bool = False) -> AdapterConfig:
        """The AdapterConfig of an "adapters" method: ``budget`` "total" or "params" (rank is
        the whole bank's: the parameters of one LoRA of that rank) or "per_task" (rank is what
        one task sees). ``alpha`` defaults to 2 x rank (scaling 2 at every rank)."""
        if self.kind != "adapters":
            raise ValueError(f"method {self.name!r} is of kind {self.kind!r}: it is not one bank "
                             "of adapters; build it with the study's runner.")
        return AdapterConfig(rank=rank, alpha=2.0 * rank if alpha is None else alpha,
                             n_common=self.n_common, n_specific=self.n_specific, n_tasks=n_tasks,
                             gate=self.gate, budget="per_task" if budget == "per_task" else "total",
                             use_rslora=use_rslora)

    def task_rank(self, rank: int, n_tasks: int, budget: str = "total") -> int:
        """The rank one task sees at budget ``rank``: its allowed experts' ranks added up.

        Budget "total": independent LoRAs take CGC-LoRA's (the paper's "N separate models" at
        the rank a task sees there); "params": the largest rank whose N LoRAs stay within one
        LoRA of rank ``rank``; "per_task": every method's task sees rank ``rank``. 1+N keeps
        CGC-LoRA's expert rank in each cluster's bank."""
        if budget not in ("total", "params", "per_task"):
            raise ValueError(f"budget={budget!r}: choose 'total', 'params' or 'per_task'.")
        if self.kind == "central":
            return 0
        if budget == "per_task":
            if self.kind == "adapters":
                self.config(rank, n_tasks, budget)   # a rank its experts cannot split fails here
            return rank
        if self.kind == "peft":       # peft's LoRAs share the budget, one per unit
            if self.per == "all":
                return rank
            if self.per == "cluster":
                raise ValueError(f"{self.name}: the rank a task sees depends on the number of "
                                 "clusters (each cluster's LoRA gets rank // n_clusters); "
                                 "see cgc_edu.study.real_fair.PeftServed.")
            budget = "params"
        if self.kind in ("separate", "peft") and budget == "params":
            if rank < n_tasks:
                raise ValueError(f"rank {rank} is below one rank per task for {n_tasks} "
                                 f"independent LoRAs; use a rank of at least {n_tasks}.")
            return rank // n_tasks
        if self.kind == "separate":
            return METHODS["cgc_lora"].task_rank(rank, n_tasks)
        if self.kind == "one_plus_n":
            return expert_rank(rank, n_tasks) * (self.n_common + self.n_specific)
        config = self.config(rank, n_tasks)
        return config.expert_rank * config.experts_per_task


def expert_rank(rank: int, n_tasks: int) -> int:
    """CGC-LoRA's expert rank at total budget ``rank`` (1+N reuses it per cluster)."""
    return METHODS["cgc_lora"].config(rank, n_tasks).expert_rank


#: The table. Colours: the Okabe-Ito palette, one per method shown side by side.
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("central", "central model (no adapter)", "central model", "#7f7f7f", kind="central"),
    Method("separate", "multiple independent models (one LoRA per task)", "independent LoRAs",
           "#E69F00", kind="separate", tuned=True, lr=6e-3,
           preset="independent", aliases=("independent",)),
    Method("integrated", "integrated model (one LoRA, all tasks)", "one LoRA", "#0072B2",
           n_common=1, gate="uniform", tuned=True, lr=3e-3, preset="lora", aliases=("lora",)),
    Method("moe_lora", "MoE-LoRA (4 experts)", "MoE-LoRA", "#009E73", n_common=4, tuned=True,
           lr=6e-3, preset="moe_lora"),
    Method("cgc_lora", "CGC-LoRA (4 common + 1 specific)", "CGC-LoRA", "#D55E00", n_common=4,
           n_specific=1, tuned=True, preset="cgc_lora"),
    Method("one_plus_n", "1+N: CGC-LoRA per measured cluster (2 + 1)", "1+N", "#CC79A7",
           kind="one_plus_n", n_common=2, n_specific=1, tuned=True),
    Method("one_plus_n_designed", "1+N: CGC-LoRA per designed cluster (2 + 1)",
           "1+N, designed clusters", "#F0E442", family="ablation", kind="one_plus_n",
           n_common=2, n_specific=1, lr_from="one_plus_n"),
    Method("cgc_no_common", "CGC-LoRA without common experts (0 + 1)",
           "CGC-LoRA, no common experts", "#999999", family="ablation", n_specific=1),
    Method("cgc_uniform", "CGC-LoRA with a uniform gate", "CGC-LoRA, uniform gate", "#56B4E9",
           family="ablation", n_common=4, n_specific=1, gate="uniform", aliases=("cgc_no_gate",)),
    Method("cgc_c8_s2", "CGC-LoRA 8 common + 2 specific", "CGC-LoRA 8 + 2", "#a6611a",
           family="sweep", n_common=8, n_specific=2),
    Method("peft_task", "peft: one LoRA per task, served with adapter_names",
           "peft LoRA per task", "#b15928", kind="peft", tuned=True, lr=6e-3, per="task"),
    Method("peft_cluster", "peft: one LoRA per cluster, served with adapter_names",
           "peft LoRA per cluster", "#6a3d9a", kind="peft", tuned=True, lr=6e-3,
           per="cluster"),
    Method("peft_all", "peft: one LoRA for every task", "peft LoRA for all", "#1f78b4",
           kind="peft", tuned=True, lr=3e-3, per="all"),
    Method("cgc_c16_s1", "CGC-LoRA 16 common + 1 specific", "CGC-LoRA 16 + 1", "#dfc27d",
           family="sweep", n_common=16, n_specific=1),
]}

#: Chapter 03's classic multi-task models: another vocabulary, another table.
MTL_MODELS: dict[str, tuple[str, str]] = {
    "shared_bottom": ("shared-bottom", "#0072B2"), "mmoe": ("MMoE", "#009E73"),
    "cgc": ("CGC", "#D55E00"), "ple": ("PLE", "#CC79A7")}

_ALIASES = {alias: m.name for m in METHODS.values() for alias in m.aliases}
#: the names ``finetune --method`` takes: the methods an `AdapterConfig` preset builds
PRESETS = tuple(m.name for m in METHODS.values() if m.preset)


def method_name(name: str) -> str:
    """A method's one name: ``name``, or what an older name meant ("lora" -> "integrated",
    "independent" -> "separate", "cgc_no_gate" -> "cgc_uniform")."""
    return _ALIASES.get(name, name)


def method(name: str) -> Method:
    """The row of ``name`` (or of an older name); an unknown name fails with the known ones.

    Taught in: notebooks/07_experiments.ipynb.
    """
    key = method_name(name)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose among {list(METHODS)}.")
    return METHODS[key]


def column(field: str, names: Optional[Sequence[str]] = None) -> dict:
    """One column of the table: {name: value of ``field``} for ``names`` (default: all)."""
    return {n: getattr(method(n), field) for n in (names if names is not None else METHODS)}


def method_of(config: AdapterConfig) -> str:
    """The course's name for the point of the layer family a config is ("MoE-LoRA",
    "CGC-LoRA, uniform gate", ...): the short name of the table's row with its shape.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    c = config
    if c.n_specific == 0:
        key = "integrated" if c.n_common == 1 else "moe_lora"
    elif c.n_common == 0:
        key = "separate" if c.n_specific == 1 else "cgc_no_common"
    else:
        key = "cgc_uniform" if c.gate == "uniform" else "cgc_lora"
    name = METHODS[key].short
    if c.gate == "uniform" and c.experts_per_task > 1 and key != "cgc_uniform":
        name += ", uniform gate"
    return name
