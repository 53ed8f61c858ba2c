"""The CGC-LoRA layer: a frozen linear layer plus a bank of low-rank experts and a task gate.

For a sample of task t (docs/design.md, "The layer family and its equation"):

    logits_t = W_g · emb(t)                       task-motivated gate: the input is the task id only
    g_t      = softmax(logits_t masked to S_t)    zero outside S_t, uniform at initialisation
    y        = W0 x + b + (alpha / r) * sum_e g_t,e * B_e A_e dropout(x)

LoRA, independent LoRAs and MoE-LoRA are special cases (see `AdapterConfig`). The bank is
computed in one pass for a mixed-task batch, never as a loop over experts: either as one LoRA
of rank E*r_e with a per-sample diagonal scaling ("dense"), or, when many tasks make E large,
as a per-sample gather of the |S_t|*r_e rows a task uses ("gather").

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
from torch.nn.modules import module as _hooks  # the global hook registries (see _no_hooks)

from .config import AdapterConfig


def _no_hooks(module: nn.Module) -> bool:
    """True when calling ``module`` would run its ``forward`` and nothing else."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _hooks._global_forward_hooks
                or _hooks._global_forward_pre_hooks or _hooks._global_backward_hooks
                or _hooks._global_backward_pre_hooks)


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


class ServingCache:
    """One kept value for one set of source tensors: each sample's LoRA (gate and scaling
    folded in), reused across the decode steps of one `generate` call. `get` returns it only
    for the very same sources (the ids tensor, A and B, held here so that their ids cannot be
    reused) and an equal key; a key of None never matches and is never stored."""

    __slots__ = ("sources", "key", "value")

    def __init__(self):
        self.sources, self.key, self.value = (), None, None

    def get(self, sources: tuple, key):
        if (key is not None and len(sources) == len(self.sources) and key == self.key
                and all(a is b for a, b in zip(sources, self.sources))):
            return self.value
        return None

    def put(self, sources: tuple, key, value) -> None:
        self.sources, self.key, self.value = sources, key, value


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

    #: Use the per-sample gather when the bank has more than this many times the experts one
    #: task uses (see benchmarks/bench_layer.py for the measurement behind the choice).
    gather_ratio: float = 2.0

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
        # allowed[t] = S_t (from the config's layout); rows[t] = the rows of the stacked A
        # (E*r_e, d_in) that task t uses, in S_t order.
        allowed = torch.from_numpy(config.layout.allowed_table())
        rows = (allowed[:, :, None] * r_e + torch.arange(r_e)).reshape(config.n_tasks, -1)
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("rows", rows, persistent=False)
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

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A as (E*r_e, d_in) and B as (d_out, E*r_e): the bank seen as one big LoRA."""
        A = self.lora_A.reshape(-1, self.in_features)
        B = self.lora_B.permute(1, 0, 2).reshape(self.out_features, -1)
        return A, B

    def delta_weight(self, task_id: int) -> torch.Tensor:
        """dW_t = (alpha/r) B_cat diag(g_t repeated r_e times) A_cat, shaped like W0 (d_out, d_in)."""
        ids = self.check_task_ids(torch.tensor([int(task_id)]))
        g = self.gate(ids)[0].to(self.lora_B.dtype).repeat_interleave(self.expert_rank)
        A, B = self._stacked()
        return self.scaling * (B * g) @ A

    def adapter_output(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """The adapter's term (alpha/r) sum_e g_e B_e A_e dropout(x), for x (batch, ..., d_in)."""
        batch, r_e = x.shape[0], self.expert_rank
        h_in = (self.dropout(x) if self.training else x).reshape(batch, -1, self.in_features)
        if self.rows.shape[1] == r_e:   # |S_t| = 1
            out = self._one_expert_output(h_in, task_ids)
        elif not torch.is_grad_enabled():
            # Serving: each sample's allowed experts as one LoRA of rank |S_t| r_e, its gate
            # and the scaling folded into B (kept while the ids and weights stay the same).
            A_t, Bt_t = self._per_sample_lora(task_ids)
            out = torch.bmm(torch.bmm(A_t, h_in.transpose(1, 2)).transpose(1, 2), Bt_t)
        elif self.n_experts > self.gather_ratio * self.config.experts_per_task:
            # Gather path: each sample uses only its task's |S_t| experts: the cost of a LoRA
            # of rank |S_t| r_e, however many tasks the bank serves. The scaling rides on the
            # (batch, E) gate, not on the (batch, tokens, d_out) output.
            g = self.gate(task_ids).to(h_in.dtype) * self.scaling        # (batch, E)
            experts = self.allowed[task_ids]                              # (batch, |S|)
            A = _select(self.lora_A, experts).reshape(batch, -1, self.in_features)  # (batch, |S| r_e, d_in)
            h = torch.bmm(h_in, A.transpose(1, 2))
            h = h.unflatten(-1, (-1, r_e)) * g.gather(1, experts)[:, None, :, None]
            out = torch.einsum("bnsr,bsor->bno", h, _select(self.lora_B, experts))
        else:
            # Dense path: one LoRA of rank E r_e, each sample's rows scaled by its gate.
            g = self.gate(task_ids).to(h_in.dtype) * self.scaling        # (batch, E)
            h = h_in @ self.lora_A.reshape(-1, self.in_features).T        # (batch, tokens, E r_e)
            h = h.unflatten(-1, (self.n_experts, r_e)) * g[:, None, :, None]
            out = torch.einsum("bner,eor->bno", h, self.lora_B)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _one_expert_output(self, h_in: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """|S_t| = 1 (LoRA, independent LoRAs): the gate is exactly 1 on the one expert, so
        there is no gate to compute: two matrix products, the fewest ops a LoRA can take
        (this is the serving path: per-op overhead, not arithmetic, dominates small models)."""
        if self.n_experts == 1:   # one LoRA for every sample
            h = h_in @ self.lora_A[0].T
            if self.scaling != 1.0:
                h = h * self.scaling
            return h @ self.lora_B[0].T
        # Task t's one expert is expert t (n_common = 0, n_specific = 1): each sample's A and
        # B, gathered, and the products batched over samples.
        # Computed as (A_t x^T)^T: with r_e rows per sample, BLAS runs the batched products
        # several times faster in this orientation (benchmarks/bench_serving.py).
        A_t, Bt_t = self._per_sample_lora(task_ids)
        h = torch.bmm(A_t, h_in.transpose(1, 2))                          # (batch, r_e, tokens)
        if self.scaling != 1.0:
            h = h * self.scaling
        return torch.bmm(h.transpose(1, 2), Bt_t)                         # (batch, tokens, d_out)

    def _per_sample_lora(self, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's experts as (A (batch, k, d_in), B^T (batch, k, d_out)), contiguous,
        k = |S_t| r_e; with several experts B^T carries the gate and the scaling.

        Gathered by index_select (its backward sums repeated ids in a fixed order). Without
        autograd (decoding) the result is kept in a `ServingCache` and reused while the very
        same ids tensor comes back (generate routes one tensor to every step) and nothing it
        depends on has changed (`_serving_key`): a decode step then costs two products per layer.
        """
        params = self._parameters          # direct: nn.Module.__getattr__ costs on every decode step
        A, B = params["lora_A"], params["lora_B"]
        key = None
        if not torch.is_grad_enabled():
            key = self._serving_key(task_ids, A, B)
            kept = self._serving_cache.get((task_ids, A, B), key)
            if kept is not None:
                return kept
        if self.rows.shape[1] == self.expert_rank:   # one expert per task (LoRA: all expert 0)
            # B^T gathered from the transposed view comes out contiguous: the second product
            # runs several times faster on it than on a strided B^T.
            experts = task_ids if self.n_experts == self.config.n_tasks else \
                self.allowed.index_select(0, task_ids)[:, 0]
            pair = (A.index_select(0, experts), B.transpose(1, 2).index_select(0, experts))
        else:   # |S_t| experts stacked, B^T's rows scaled by the gate and the scaling
            rows = self.rows.index_select(0, task_ids)                        # (batch, k)
            A_rows = A.reshape(-1, self.in_features).index_select(0, rows.flatten())
            Bt_rows = B.transpose(1, 2).reshape(-1, self.out_features).index_select(0, rows.flatten())
            g = self.gate(task_ids).gather(1, self.allowed.index_select(0, task_ids))
            g = (g * self.scaling).to(B.dtype).repeat_interleave(self.expert_rank, dim=1)
            batch = task_ids.shape[0]
            pair = (A_rows.view(batch, -1, self.in_features),
                    Bt_rows.view(batch, -1, self.out_features) * g[:, :, None])
        if key is not None:
            self._serving_cache.put((task_ids, A, B), key, pair)
        return pair

    def _serving_key(self, task_ids: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
        """Everything the kept per-sample LoRA depends on, or None where it cannot be told
        (a hook on the gate may change its weights, as `override_gate` does; inference tensors
        keep no version counter): in-place changes bump ``_version``, ``model.to(...)`` swaps
        the data (``data_ptr``), and the scaling is a plain attribute (rsLoRA sets it)."""
        gate = self._modules["gate"]
        if not _no_hooks(gate):
            return None
        try:
            return (task_ids._version, A._version, B._version, A.data_ptr(), B.data_ptr(),
                    self.scaling, *[(p._version, p.data_ptr()) for p in gate._parameters.values()])
        except RuntimeError:
            return None

    def forward(self, x: torch.Tensor, task_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        base = self.base_layer
        # What nn.Module.__call__ does itself when a module has no hooks, minus two Python
        # frames: 28 adapted projections per decode step make that overhead visible.
        result = base.forward(x) if _no_hooks(base) else base(x)
        if self.merged_task is not None:
            if task_ids is not None:  # routed ids were checked against the merge by the router
                self._check_merged(task_ids)
            return result
        ids = self._task_ids(task_ids, x.shape[0])
        if not torch.is_grad_enabled() and not self.training:
            return self._serve(x, ids, result)
        # In place: the base's output is not saved for its own backward.
        return result.add_(self.adapter_output(x.to(self.lora_A.dtype), ids).to(result.dtype))

    def _serve(self, x: torch.Tensor, task_ids: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Inference: result += each sample's LoRA (gate and scaling folded, `_per_sample_lora`),
        the second product accumulated into the base's output in place (one ``baddbmm_``).
        A decode step of a small model is per-op overhead, not arithmetic: this path takes
        the fewest ops and no allocation of the output's size."""
        A_t, Bt_t = self._per_sample_lora(task_ids)
        batch, d_in, d_out = x.shape[0], A_t.shape[2], Bt_t.shape[2]
        if x.dtype != A_t.dtype:
            x = x.to(A_t.dtype)
        unscaled = self.scaling != 1.0 and self.rows.shape[1] == self.expert_rank   # not folded in B^T
        if batch == 1 and result.dtype == A_t.dtype:
            # One request (the latency case): plain matrix products on the kept 2-D views.
            single = self.__dict__.get("_single")
            if single is None or single[0] is not A_t:
                single = self.__dict__["_single"] = (A_t, A_t[0].t(), Bt_t[0])
            h = torch.mm(x.reshape(-1, d_in), single[1])                    # (tokens, k)
            if unscaled:
                h = h * self.scaling
            result.view(-1, d_out).addmm_(h, single[2])
            return result
        h = torch.bmm(A_t, x.reshape(batch, -1, d_in).transpose(1, 2))    # (batch, k, tokens)
        if unscaled:
            h = h * self.scaling
        if result.dtype == A_t.dtype:
            result.view(batch, -1, d_out).baddbmm_(h.transpose(1, 2), Bt_t)
            return result
        return result.add_(torch.bmm(h.transpose(1, 2), Bt_t).view(result.shape).to(result.dtype))

    # ------------------------------------------------------------------ merging
    def _check_merged(self, task_ids) -> None:
        check_merged(self.merged_task, task_ids, self.module_name)

    def _add_to_base(self, delta: torch.Tensor, sign: int) -> None:
        add_delta(self.base_layer.weight, delta, sign, self.fan_in_fan_out)

    @torch.no_grad()
    def merge(self, task_id: int) -> None:
        """Fold task ``task_id``'s adapter into W0: the layer then runs at the base layer's speed."""
        if self.shared_base is not None:
            raise ValueError(f"{self.module_name}: {self.shared_base}")
        if self.merged_task is not None:
            raise ValueError(f"{self.module_name}: task {self.merged_task} is already merged; "
                             "call unmerge(model) first.")
        self._add_to_base(self.delta_weight(task_id), +1)
        self.merged_task = int(task_id)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged task's adapter from W0 again: exact up to rounding in W0's dtype
        (in bfloat16 each merge + unmerge may move a weight by one unit in its last place)."""
        if self.merged_task is None:
            return
        self._add_to_base(self.delta_weight(self.merged_task), -1)
        self.merged_task = None
