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
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

GATES = ("task", "uniform")
BUDGETS = ("per_task", "total")


class ExpertBlock(NamedTuple):
    """A run of experts in the bank: the common block, or one task's specific experts."""
    kind: str             # "common" or "specific"
    task: Optional[int]   # the owning task (None for the common block)
    start: int
    stop: int             # exclusive


@dataclass(frozen=True)
class ExpertLayout:
    """Where each expert sits in the bank: the one definition every part of cgc_edu reads.

    Experts [0, n_common) are common to every task; then each task owns ``n_specific``
    experts in task order: task t owns n_common + t*n_specific ... n_common + (t+1)*n_specific - 1.
    Task t may use S_t = the common experts, then its own. Get one from
    ``AdapterConfig.layout`` (or, for a saved gate recording, ``GateRecording.layout``).
    """

    n_common: int
    n_specific: int
    n_tasks: int

    @property
    def n_experts(self) -> int:
        """E = n_common + n_tasks * n_specific."""
        return self.n_common + self.n_tasks * self.n_specific

    @property
    def experts_per_task(self) -> int:
        """|S_t| = n_common + n_specific, the same for every task."""
        return self.n_common + self.n_specific

    def common(self) -> range:
        """The common experts."""
        return range(self.n_common)

    def specific(self, task_id: int) -> range:
        """Task ``task_id``'s own experts."""
        self._check_task(task_id)
        start = self.n_common + task_id * self.n_specific
        return range(start, start + self.n_specific)

    def allowed(self, task_id: int) -> list[int]:
        """S_t: the common experts, then task t's own specific experts."""
        return list(self.common()) + list(self.specific(task_id))

    def allowed_table(self) -> np.ndarray:
        """(n_tasks, |S_t|) int64: row t lists S_t in order."""
        return np.array([self.allowed(t) for t in range(self.n_tasks)], dtype=np.int64).reshape(
            self.n_tasks, self.experts_per_task)

    def allowed_mask(self) -> np.ndarray:
        """(n_tasks, E) boolean: mask[t, e] is True when expert e is in S_t."""
        mask = np.zeros((self.n_tasks, self.n_experts), dtype=bool)
        np.put_along_axis(mask, self.allowed_table(), True, axis=1)
        return mask

    def blocks(self) -> list[ExpertBlock]:
        """The bank in order: the common block (if any), then one block per task (if n_specific)."""
        out = [ExpertBlock("common", None, 0, self.n_common)] if self.n_common else []
        if self.n_specific:
            out += [ExpertBlock("specific", t, r.start, r.stop)
                    for t, r in ((t, self.specific(t)) for t in range(self.n_tasks))]
        return out

    def labels(self, task_names: Optional[Sequence[str]] = None, where: str = "ExpertLayout") -> list[str]:
        """One label per expert, in order: "common 0", ..., "task <name> / 0", ..."""
        names = [str(t) for t in range(self.n_tasks)] if task_names is None else list(task_names)
        if len(names) != self.n_tasks:
            raise ValueError(f"{where}: got {len(names)} task names for {self.n_tasks} tasks; "
                             "pass one name per task.")
        labels = [f"common {i}" for i in self.common()]
        for t in range(self.n_tasks):
            labels += [f"task {names[t]} / {j}" for j in range(self.n_specific)]
        return labels

    def _check_task(self, task_id) -> None:
        if not isinstance(task_id, (int, np.integer)) or isinstance(task_id, bool) \
                or not 0 <= task_id < self.n_tasks:
            raise ValueError(f"ExpertLayout: task {task_id!r} is not a task index; pass an int in "
                             f"[0, {self.n_tasks - 1}].")


@dataclass(frozen=True)
class AdapterConfig:
    """Configuration of a bank of low-rank experts with a task-motivated gate.

    Args:
        rank: r, the rank one task sees. The scaling is alpha / r (alpha / sqrt(r) with
            ``use_rslora``).
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
        target_modules: names (or dotted-name suffixes) of the layers to adapt (``nn.Linear``
            or transformers' ``Conv1D``); None adapts every such layer except the output heads
            (``lm_head``, ``classifier``, ``score``) and the ``modules_to_save``.
        shared_gate: one gate shared by all adapted modules (MOELoRA) instead of one each.
        gate_dim: size of the task embedding that feeds the gate.
        modules_to_save: names (or dotted-name suffixes) of whole modules to train as they are
            and save with the adapters, as peft's ``modules_to_save`` (e.g. ``("classifier",)``,
            the new head of a sequence classifier). ``add_adapters`` makes them trainable,
            ``save_adapters`` / ``load_adapters`` carry their weights, ``export_peft_lora``
            exports them, and ``remove_adapters`` restores their original weights.
        use_rslora: scale by alpha / sqrt(r) instead of alpha / r (rsLoRA,
            Kalajdzievski 2023; peft's ``use_rslora``): the update's size then does
            not shrink as r grows.

    The config is frozen (``dataclasses.replace(config, rank=16)`` makes a changed copy): a
    model's adapters were built from it and ``save_adapters`` writes it, so it must not change
    behind their back.

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
    modules_to_save: Optional[Sequence[str]] = None
    use_rslora: bool = False

    def __post_init__(self):
        for name in ("target_modules", "modules_to_save"):
            names = getattr(self, name)
            if names is not None:
                names = [names] if isinstance(names, str) else names
                object.__setattr__(self, name, tuple(names))  # frozen: a tuple, not a list
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
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"AdapterConfig.use_rslora={self.use_rslora!r}: must be "
                             "True (scaling alpha / sqrt(r)) or False (alpha / r).")
        if self.gate not in GATES:
            raise ValueError(f"AdapterConfig.gate={self.gate!r}: choose one of {GATES}.")
        if self.budget not in BUDGETS:
            raise ValueError(f"AdapterConfig.budget={self.budget!r}: choose one of {BUDGETS}.")
        for name in ("target_modules", "modules_to_save"):
            names = getattr(self, name)
            if names is not None and (not names or not all(isinstance(n, str) and n for n in names)):
                raise ValueError(f"AdapterConfig.{name}={names!r}: give module names (non-empty "
                                 "strings), e.g. ('q_proj', 'v_proj'), or None for the default.")
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
    def layout(self) -> ExpertLayout:
        """The expert layout (which experts are common, which belong to each task)."""
        return ExpertLayout(self.n_common, self.n_specific, self.n_tasks)

    @property
    def n_experts(self) -> int:
        """E = n_common + n_tasks * n_specific."""
        return self.layout.n_experts

    @property
    def experts_per_task(self) -> int:
        """The number of experts one task may use, written |S_t| in the design."""
        return self.layout.experts_per_task

    @property
    def expert_rank(self) -> int:
        """r_e, the rank of one expert (set by the budget)."""
        divisor = self.experts_per_task if self.budget == "per_task" else self.n_experts
        return self.rank // divisor

    @property
    def scaling(self) -> float:
        """alpha / r, or rsLoRA's alpha / sqrt(r) with ``use_rslora`` (as peft)."""
        rank = math.sqrt(self.rank) if self.use_rslora else self.rank
        return float(self.alpha) / rank

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
        """S_t: the common experts, then task t's own specific experts (see `layout`)."""
        return self.layout.allowed(task_id)

    # ----------------------------------------------------------- task ids
    def check_task_ids(self, task_ids, batch: Optional[int] = None, where: str = "CGCLoRALinear",
                       device=None) -> Optional[torch.Tensor]:
        """Validate task ids for this adapter; return a LongTensor (batch,) on ``device``, or
        None when ids are missing and the adapter does not need them (LoRA-like configs).

        The one check of task ids: the model's router calls it once per forward, a standalone
        layer on its own ``task_ids=``. Raises a ValueError/TypeError that names ``where``
        (the module), the value and the fix. Costs one host synchronisation (the range check).
        """
        if task_ids is None:
            if self.needs_task_ids:
                raise ValueError(
                    f"{where}: task_ids missing: this adapter serves {self.n_tasks} tasks and its output "
                    "depends on the task; call model(..., task_ids=torch.tensor([...])) or run inside "
                    "`with task_context(model, task_ids):`.")
            return None
        if isinstance(task_ids, (list, tuple)):
            task_ids = torch.tensor(task_ids)
        if not isinstance(task_ids, torch.Tensor):
            raise TypeError(f"{where}: task_ids={task_ids!r} is a {type(task_ids).__name__}; "
                            "pass a LongTensor of shape (batch,), e.g. torch.tensor([0, 1]).")
        if task_ids.dtype.is_floating_point or task_ids.dtype == torch.bool or task_ids.is_complex():
            raise TypeError(f"{where}: task_ids has dtype {task_ids.dtype}; task ids are integers: "
                            "pass a LongTensor, e.g. task_ids.long().")
        if task_ids.dim() != 1:
            raise ValueError(f"{where}: task_ids has shape {tuple(task_ids.shape)}; it must be 1-D of "
                             "shape (batch,), one task id per sample (use .reshape(-1)).")
        if task_ids.numel() and task_ids.device.type != "meta":  # meta tensors hold no values
            lo, hi = (int(v) for v in torch.aminmax(task_ids))  # one host sync for both bounds
            if lo < 0 or hi >= self.n_tasks:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{where}: task id {bad} is out of range: this adapter has n_tasks="
                                 f"{self.n_tasks}, so ids must be in [0, {self.n_tasks - 1}].")
        if batch is not None and task_ids.shape[0] != batch:
            raise ValueError(f"{where}: got {task_ids.shape[0]} task ids for a batch of {batch} samples; "
                             "pass one task id per sample.")
        return task_ids.to(device=device, dtype=torch.long)

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
    def cgc_lora(cls, rank: int = 6, alpha: float = 16.0, n_tasks: int = 2, n_common: int = 2,
                 n_specific: int = 1, **kw) -> "AdapterConfig":
        """CGC-LoRA (Song et al. 2024): common plus task-specific experts, task gate.

        The defaults divide: 2 common + 1 specific expert per task share rank 6, so each
        expert has rank 2 (with budget="per_task"). Another rank must be a multiple of
        n_common + n_specific.
        """
        kw.setdefault("gate", "task")
        return cls(rank=rank, alpha=alpha, n_common=n_common, n_specific=n_specific,
                   n_tasks=n_tasks, **kw)

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ("target_modules", "modules_to_save"):
            if data[name] is not None:
                data[name] = list(data[name])  # as JSON writes it
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AdapterConfig.from_dict: unknown fields {unknown}; known fields are {sorted(known)}.")
        return cls(**data)


def adapter_parameter_count(config: AdapterConfig, d_in: int, d_out: int) -> dict:
    """Trainable numbers of one `CGCLoRALinear` of ``config`` on a d_out x d_in layer.

    Returns {"experts": E r_e (d_in + d_out), "gate": the task embedding and W_g
    when the gate is learned (else 0), "total": their sum}.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """
    experts = config.n_experts * config.expert_rank * (d_in + d_out)
    gate = (config.n_tasks + config.n_experts) * config.gate_dim
    gate = gate if config.has_learned_gate else 0
    return {"experts": experts, "gate": gate, "total": experts + gate}
