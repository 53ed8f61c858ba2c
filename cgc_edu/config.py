"""AdapterConfig: one configuration for the whole layer family (LoRA ... CGC-LoRA).

Every method of the course is a point of one space (n_common, n_specific, gate):

    LoRA                     n_common=1, n_specific=0  (one adapter for all tasks)
    independent LoRA         n_common=0, n_specific=1  ("N separate models")
    MoE-LoRA (MOELoRA)       n_common=k, n_specific=0, task gate
    CGC-LoRA                 n_common=k, n_specific=m, task gate

Taught in: notebooks/04_moe_lora.ipynb and notebooks/05_cgc_lora.ipynb.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

GATES = ("task", "uniform")
BUDGETS = ("per_task", "total")


@dataclass
class AdapterConfig:
    """Configuration of a bank of low-rank experts with a task-motivated gate.

    Args:
        rank: r, the rank one task sees. The scaling is alpha / r.
        alpha: LoRA's alpha.
        n_common: experts shared by every task (indices [0, n_common)).
        n_specific: experts owned by each task (task t owns
            n_common + t*n_specific ... n_common + (t+1)*n_specific - 1).
        n_tasks: number of tasks the adapter serves.
        dropout: dropout on the adapter's input (not on the frozen path).
        gate: "task" (learned softmax over the task's allowed experts, input is the task id
            only) or "uniform" (equal weights over the allowed experts; the ablation).
        budget: "per_task": each expert has rank r / (n_common + n_specific), so a task sees
            rank r (MOELoRA's split); "total": each expert has rank r / E, so the whole bank
            has the trainable parameters of one LoRA of rank r (gate aside).
        target_modules: names (or dotted-name suffixes) of the nn.Linear modules to adapt;
            None adapts every nn.Linear except the output head (``lm_head``).
        shared_gate: one gate shared by all adapted modules (MOELoRA) instead of one each.
        gate_dim: size of the task embedding that feeds the gate.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """

    rank: int = 8
    alpha: float = 16.0
    n_common: int = 1
    n_specific: int = 0
    n_tasks: int = 1
    dropout: float = 0.0
    gate: str = "task"
    budget: str = "per_task"
    target_modules: Optional[Sequence[str]] = None
    shared_gate: bool = False
    gate_dim: int = 8

    def __post_init__(self):
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            self.target_modules = list(self.target_modules)
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise a ValueError naming the bad field and the fix."""
        for name in ("rank", "n_tasks", "gate_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdapterConfig.{name}={value!r}: must be a positive integer.")
        for name in ("n_common", "n_specific"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"AdapterConfig.{name}={value!r}: must be an integer >= 0.")
        if self.n_common + self.n_specific == 0:
            raise ValueError(
                "AdapterConfig: n_common=0 and n_specific=0 leaves a task with no expert; "
                "set n_common >= 1 or n_specific >= 1.")
        if self.gate not in GATES:
            raise ValueError(f"AdapterConfig.gate={self.gate!r}: choose one of {GATES}.")
        if self.budget not in BUDGETS:
            raise ValueError(f"AdapterConfig.budget={self.budget!r}: choose one of {BUDGETS}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"AdapterConfig.dropout={self.dropout!r}: must be in [0, 1).")
        divisor = self.experts_per_task if self.budget == "per_task" else self.n_experts
        if self.rank % divisor:
            ok = [k * divisor for k in range(1, 5)]
            raise ValueError(
                f"AdapterConfig: rank={self.rank} does not divide into {divisor} experts "
                f"(budget={self.budget!r}, n_common={self.n_common}, n_specific={self.n_specific}, "
                f"n_tasks={self.n_tasks}); use a rank that is a multiple of {divisor}, "
                f"e.g. one of {ok}. Ranks are never rounded.")

    # ---------------------------------------------------------- derived sizes
    @property
    def n_experts(self) -> int:
        """E = n_common + n_tasks * n_specific."""
        return self.n_common + self.n_tasks * self.n_specific

    @property
    def experts_per_task(self) -> int:
        """The number of experts one task may use, written |S_t| in the design."""
        return self.n_common + self.n_specific

    @property
    def expert_rank(self) -> int:
        """r_e, the rank of one expert (set by the budget)."""
        divisor = self.experts_per_task if self.budget == "per_task" else self.n_experts
        return self.rank // divisor

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def has_learned_gate(self) -> bool:
        """A gate has parameters only when it is learned and has a choice to make."""
        return self.gate == "task" and self.experts_per_task > 1

    @property
    def needs_task_ids(self) -> bool:
        """Whether a forward pass depends on the task (LoRA-like configs do not)."""
        if self.n_tasks == 1:
            return False
        return self.n_specific > 0 or self.has_learned_gate

    def allowed_experts(self, task_id: int) -> list[int]:
        """S_t: the common experts, then task t's own specific experts."""
        start = self.n_common + task_id * self.n_specific
        return list(range(self.n_common)) + list(range(start, start + self.n_specific))

    # ---------------------------------------------------------------- presets
    @classmethod
    def lora(cls, rank: int = 8, alpha: float = 16.0, n_tasks: int = 1, **kw) -> "AdapterConfig":
        """One LoRA shared by every task."""
        return cls(rank=rank, alpha=alpha, n_common=1, n_specific=0, n_tasks=n_tasks,
                   gate="uniform", **kw)

    @classmethod
    def independent(cls, rank: int = 8, alpha: float = 16.0, n_tasks: int = 2, **kw) -> "AdapterConfig":
        """One private LoRA per task: N separate models over one frozen base.

        With budget="total" each task's LoRA has rank r / n_tasks, so the bank matches one LoRA of rank r.
        """
        return cls(rank=rank, alpha=alpha, n_common=0, n_specific=1, n_tasks=n_tasks,
                   gate="uniform", **kw)

    @classmethod
    def moe_lora(cls, rank: int = 8, alpha: float = 16.0, n_tasks: int = 2, n_experts: int = 4,
                 **kw) -> "AdapterConfig":
        """MOELoRA (Liu et al. 2023): shared experts mixed by a task-motivated gate."""
        kw.setdefault("gate", "task")
        return cls(rank=rank, alpha=alpha, n_common=n_experts, n_specific=0, n_tasks=n_tasks, **kw)

    @classmethod
    def cgc_lora(cls, rank: int = 8, alpha: float = 16.0, n_tasks: int = 2, n_common: int = 2,
                 n_specific: int = 1, **kw) -> "AdapterConfig":
        """CGC-LoRA (Song et al. 2024): common plus task-specific experts, task gate."""
        kw.setdefault("gate", "task")
        return cls(rank=rank, alpha=alpha, n_common=n_common, n_specific=n_specific,
                   n_tasks=n_tasks, **kw)

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AdapterConfig.from_dict: unknown fields {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
