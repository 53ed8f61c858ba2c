"""The CGC-LoRA layer: a frozen linear layer plus a bank of low-rank experts and a task gate.

For a sample of task t (docs/design.md, "The layer family and its equation"):

    logits_t = W_g · emb(t)                       task-motivated gate: the input is the task id only
    g_t      = softmax(logits_t masked to S_t)    zero outside S_t, uniform at initialisation
    y        = W0 x + b + (alpha / r) * sum_e g_t,e * B_e A_e dropout(x)

LoRA, independent LoRAs and MoE-LoRA are special cases (see `AdapterConfig`). As g_t
depends on the task id only, each sample's adapter is one plain LoRA B_t A_t of rank
|S_t|*r_e with the gate and the scaling folded into B_t (`CGCLoRALinear.task_lora`):
a mixed-task batch is two batched products through them, never a loop over experts
(`CGCLoRALinear.forward`; `reference_forward` is the loop, for reading and checking).
Training gathers them with autograd; serving keeps them while ids and weights stay
(`cgc_edu.adapters.serving`).

The frozen layer is an ``nn.Linear`` (weight (d_out, d_in)) or transformers' ``Conv1D``
(GPT-2; weight stored transposed, (d_in, d_out): peft's ``fan_in_fan_out``). Half-precision
bases (bfloat16, float16) keep their dtype; the adapter's weights are float32 (as peft's
``autocast_adapter_dtype`` does), so they train well, and its output is cast back.

Taught in: notebooks/01_lora_from_scratch.ipynb (LoRA), notebooks/04_moe_lora.ipynb (gate),
notebooks/05_cgc_lora.ipynb (common and specific experts).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from .config import AdapterConfig
from .serving import ServingCache, call, serve


def _select(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` through ``index_select``: the same values, but on CPU its backward
    (index_add_) sums the gradients of repeated indices in a fixed order, while advanced
    indexing's backward accumulates them in a thread-dependent order, so mixed-task training
    would not repeat bit for bit (tests/test_layer.py checks that it does)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


def _conv1d_type() -> Optional[type]:
    """transformers' ``Conv1D`` class (GPT-2's projections), or None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _adaptable_shape(module: nn.Module) -> Optional[tuple[int, int]]:
    """(d_out, d_in) of a layer cgc_edu can adapt (``nn.Linear`` or transformers' ``Conv1D``),
    else None. Conv1D stores its weight transposed, (d_in, d_out)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    conv1d = _conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        d_in, d_out = module.weight.shape
        return d_out, d_in
    return None


def _adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype of new adapter weights over a base of ``base_dtype``: float32 for float16,
    bfloat16 and float32 bases (half-precision adapters lose small updates), float64 for float64."""
    return torch.promote_types(base_dtype, torch.float32)


@torch.no_grad()
def add_delta(weight: torch.Tensor, delta: torch.Tensor, sign: int, fan_in_fan_out: bool) -> None:
    """W0 += sign * dW in place, in W0's layout: ``delta`` is (d_out, d_in), as
    `CGCLoRALinear.delta_weight` gives it, and is transposed for a Conv1D weight (d_in, d_out).
    A half-precision W0 is updated in the delta's dtype and rounded once (not the delta
    rounded, then the sum). The one place W0 changes: merge, unmerge, 1+N's merged model and
    its hot copy all call it."""
    if fan_in_fan_out:
        delta = delta.T
    if weight.dtype == delta.dtype:  # float32: in place, as it always was
        weight.add_(delta, alpha=sign)
    else:
        weight.copy_(weight.to(delta.dtype).add_(delta, alpha=sign))


def check_merged(merged_task: Optional[int], task_ids, where: str) -> None:
    """Raise when ids other than the merged task reach weights that hold that task's adapter."""
    if merged_task is None or task_ids is None:
        return
    ids = torch.as_tensor(task_ids).reshape(-1)
    if ids.numel() and bool((ids != merged_task).any()):
        other = sorted(set(ids.tolist()) - {merged_task})
        raise ValueError(
            f"{where}: task {merged_task} is merged into the weights, but task ids {other} were "
            "given; call unmerge(model) to serve several tasks, or merge_task(model, t) for another task.")


class TaskGate(nn.Module):
    """The task-motivated gate: softmax over a task's allowed experts, from the task id alone.

    W_g starts at zero, so every task starts with uniform weights over S_t (as LoRA's B starts
    at zero, the gate starts neutral). With ``config.gate == "uniform"`` (or a single allowed
    expert) the gate has no parameters and stays uniform. The gate computes in float32 and
    returns float32 weights whatever the dtype of its parameters (a model cast to bfloat16
    keeps an exact softmax); the layer casts them to its adapter's dtype.
    """

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.n_tasks, self.n_experts = config.n_tasks, config.n_experts
        self.register_buffer("mask", torch.from_numpy(config.layout.allowed_mask()), persistent=False)
        self.learned = config.has_learned_gate
        if self.learned:
            self.task_embedding = nn.Parameter(torch.randn(config.n_tasks, config.gate_dim))
            self.weight = nn.Parameter(torch.zeros(config.n_experts, config.gate_dim))

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) task ids -> (batch, E) weights; rows sum to 1, zero outside S_t."""
        allowed = self.mask[task_ids]
        if not self.learned:
            return allowed.float() / allowed.sum(-1, keepdim=True)
        # .float() is a no-op on float32 parameters: the float32 path is unchanged bit for bit.
        logits = _select(self.task_embedding, task_ids).float() @ self.weight.float().T
        return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


class CGCLoRALinear(nn.Module):
    """A frozen linear layer adapted by a bank of E low-rank experts and a task gate.

    Parameters ``lora_A`` (E, r_e, d_in), Kaiming-uniform like LoRA, and ``lora_B``
    (E, d_out, r_e), zero, so a fresh layer equals its base layer. ``scaling`` = alpha / r.

    dtypes: the adapter's weights are float32 over a float16 / bfloat16 / float32 base
    (float64 over float64); the forward casts the input to the adapter's dtype, the gate's weights
    (computed in float32) too, and the adapter's output back to the base's dtype. A model cast
    after `add_adapters` (``model.to(torch.bfloat16)``) runs its adapters in bfloat16 the same way.

    Args:
        base_layer: the frozen ``nn.Linear``, or transformers' ``Conv1D`` (GPT-2), whose
            weight is stored transposed (``fan_in_fan_out`` is then True); kept as ``self.base_layer``.
        config: the AdapterConfig.
        gate: a TaskGate to share with other layers (MOELoRA's shared gate); a new one if None.
        name: the module's name in its model, used in error messages.

    Taught in: notebooks/05_cgc_lora.ipynb.
    """

    def __init__(self, base_layer: nn.Module, config: AdapterConfig,
                 gate: Optional[TaskGate] = None, name: str = "CGCLoRALinear"):
        super().__init__()
        shape = _adaptable_shape(base_layer)
        if shape is None:
            raise TypeError(f"{name}: CGCLoRALinear wraps an nn.Linear or transformers' Conv1D, got "
                            f"{type(base_layer).__name__}; choose target_modules that name such layers.")
        self.base_layer = base_layer
        self.config = config
        self.module_name = name
        self.out_features, self.in_features = shape
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # Conv1D: weight is (d_in, d_out)
        E, r_e = config.n_experts, config.expert_rank
        self.n_experts, self.expert_rank = E, r_e
        self.scaling = config.scaling
        weight = base_layer.weight
        dtype = _adapter_dtype(weight.dtype)
        # Kaiming-uniform with a=sqrt(5), per expert, as peft initialises lora_A: bound 1/sqrt(d_in).
        bound = 1.0 / math.sqrt(self.in_features)
        self.lora_A = nn.Parameter(torch.empty(E, r_e, self.in_features, dtype=dtype,
                                               device=weight.device).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(E, self.out_features, r_e, dtype=dtype,
                                               device=weight.device))
        self.gate = gate if gate is not None else TaskGate(config).to(weight.device)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # allowed[t] = S_t (from the config's layout): the experts task t uses.
        allowed = torch.from_numpy(config.layout.allowed_table())
        self.register_buffer("allowed", allowed, persistent=False)
        self.merged_task: Optional[int] = None
        # Set by OnePlusN: base_layer's weight is the central model's, shared by every adapter
        # set, so this layer must never write into it (see `merge`).
        self.shared_base: Optional[str] = None
        self.router = None  # set by add_adapters: holds the ids the model's forward resolved
        self._serving_cache = ServingCache()

    # ------------------------------------------------------------------ helpers
    def extra_repr(self) -> str:
        c = self.config
        return (f"in={self.in_features}, out={self.out_features}, experts={self.n_experts} "
                f"(common={c.n_common}, specific={c.n_specific} x {c.n_tasks} tasks), "
                f"expert_rank={self.expert_rank}, scaling={self.scaling:g}, gate={c.gate!r}")

    def expert_labels(self, task_names: Optional[Sequence[str]] = None) -> list[str]:
        """Labels in expert order: "common 0", ..., "task <name> / 0", ... (see `ExpertLayout.labels`)."""
        return self.config.layout.labels(task_names, where=self.module_name)

    def check_task_ids(self, task_ids, batch: Optional[int] = None) -> Optional[torch.Tensor]:
        """Validate task ids given to this layer (`AdapterConfig.check_task_ids`, naming this
        module); return a LongTensor (batch,) on the layer's device, or None."""
        return self.config.check_task_ids(task_ids, batch, where=self.module_name,
                                          device=self.lora_A.device)

    def _task_ids(self, task_ids, batch: int) -> torch.Tensor:
        """The ids for this forward: the layer's own argument (standalone use, checked here),
        else the ready tensor the model's router resolved and checked once for the whole
        model, else task 0 where the adapter needs no ids."""
        if task_ids is None and self.router is not None:
            routed = self.router.ids_on(self._parameters["lora_A"].device)
            if routed is not None:
                if routed.shape[0] != batch:  # metadata only: no host sync
                    raise ValueError(
                        f"{self.module_name}: the model's forward routed {routed.shape[0]} task ids "
                        f"but this layer sees a batch of {batch}; pass one task id per sample.")
                return routed
        ids = self.check_task_ids(task_ids, batch)
        if ids is None:
            ids = torch.zeros(batch, dtype=torch.long, device=self.lora_A.device)
        return ids

    # --------------------------------------------------------------------- math
    def gate_weights(self, task_ids) -> torch.Tensor:
        """(batch,) task ids -> (batch, E) gate weights g_t (zero outside S_t, rows sum to 1)."""
        ids = self.check_task_ids(task_ids if task_ids is not None else torch.zeros(1, dtype=torch.long))
        return self.gate(ids)

    def task_lora(self, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's adapter as one plain LoRA, gate and scaling folded into B:
        (A_t (batch, k, d_in), B_t^T (batch, k, d_out)), k = |S_t| r_e, so that

            B_t A_t = dW_t = (alpha / r) sum_{e in S_t} g_t,e B_e A_e.

        The one place "task t as one LoRA" is written: the training and serving
        paths, `delta_weight` (merging), 1+N's serving bank and `export_peft_lora`
        read it. ``task_ids``: checked ids (LongTensor (batch,)) on the layer's
        device. Rows are gathered by index_select: on CPU its backward sums repeated
        ids in a fixed order, so training repeats bit for bit.
        """
        params = self._parameters   # direct: __getattr__ costs on every decode step
        A, B = params["lora_A"], params["lora_B"]
        batch, experts = task_ids.shape[0], self.allowed.index_select(0, task_ids)
        rows = experts.reshape(-1)                                  # batch * |S_t|
        A_t = A.index_select(0, rows).view(batch, -1, self.in_features)
        # B^T gathered from the transposed bank comes out contiguous: the second
        # product runs several times faster on it (benchmarks/bench_serving.py).
        Bt_t = B.transpose(1, 2).index_select(0, rows)
        Bt_t = Bt_t.view(batch, -1, self.out_features)
        if experts.shape[1] == 1:   # one expert: its gate weight is exactly 1
            return A_t, (Bt_t * self.scaling if self.scaling != 1.0 else Bt_t)
        g = self._modules["gate"](task_ids).gather(1, experts) * self.scaling
        g = g.to(B.dtype).repeat_interleave(self.expert_rank, dim=1)    # (batch, k)
        return A_t, Bt_t * g[:, :, None]

    def delta_weight(self, task_id: int) -> torch.Tensor:
        """dW_t = B_t A_t (`task_lora`), (d_out, d_in) whatever W0's storage
        (`add_delta` puts it in W0's layout)."""
        A_t, Bt_t = self.task_lora(self.check_task_ids(torch.tensor([int(task_id)])))
        return Bt_t[0].T @ A_t[0]

    def forward(self, x: torch.Tensor, task_ids: Optional[torch.Tensor] = None):
        """y = W0 x + b + (alpha / r) sum_e g_t,e B_e A_e dropout(x), t each sample's task."""
        result = call(self.base_layer, x)                   # W0 x + b
        if self.router is not None and self.router.disabled: return result  # disable_adapters
        if self.merged_task is not None:                    # dW_t is in W0 already
            if task_ids is not None:                        # (routed ids were checked)
                check_merged(self.merged_task, task_ids, self.module_name)
            return result
        ids = self._task_ids(task_ids, x.shape[0])          # t, one per sample
        if not torch.is_grad_enabled() and not self.training:
            return serve(self, x, ids, result)              # the same, kept between decode steps
        A_t, Bt_t = self.task_lora(ids)                     # each sample's B_t A_t = dW_t
        h = self.dropout(x.to(A_t.dtype)).reshape(x.shape[0], -1, self.in_features)
        h = torch.bmm(A_t, h.transpose(1, 2)).transpose(1, 2)          # A_t x
        out = torch.bmm(h, Bt_t).reshape(*x.shape[:-1], self.out_features)  # B_t A_t x
        return result.add_(out.to(result.dtype))   # in place: W0 x is not saved for backward

    def reference_forward(self, x: torch.Tensor, task_ids=None) -> torch.Tensor:
        """The equation term by term, a loop over the experts (slow; for reading and
        checking): y = W0 x + b + (alpha / r) sum_e g_t,e B_e A_e dropout(x). `forward`
        gives the same through `task_lora`'s two batched products."""
        ids = self.check_task_ids(task_ids, x.shape[0])
        ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if ids is None else ids
        g = self.gate(ids).to(self.lora_A.dtype)                   # (batch, E), zero outside S_t
        h = self.dropout(x.to(self.lora_A.dtype))
        y = self.base_layer(x).to(self.lora_A.dtype)
        for e in range(self.n_experts):
            g_e = g[:, e].reshape(-1, *[1] * (x.dim() - 1))        # one weight per sample
            y = y + self.scaling * g_e * (h @ self.lora_A[e].T @ self.lora_B[e].T)
        return y.to(x.dtype)

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def merge(self, task_id: int) -> None:
        """Fold task ``task_id``'s adapter into W0: the layer then runs at the base layer's speed."""
        if self.shared_base is not None:
            raise ValueError(f"{self.module_name}: {self.shared_base}")
        if self.merged_task is not None:
            raise ValueError(f"{self.module_name}: task {self.merged_task} is already merged; "
                             "call unmerge(model) first.")
        add_delta(self.base_layer.weight, self.delta_weight(task_id), +1, self.fan_in_fan_out)
        self.merged_task = int(task_id)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged task's adapter from W0 again: exact up to rounding in W0's dtype
        (in bfloat16 each merge + unmerge may move a weight by one unit in its last place)."""
        if self.merged_task is None:
            return
        add_delta(self.base_layer.weight, self.delta_weight(self.merged_task), -1, self.fan_in_fan_out)
        self.merged_task = None
