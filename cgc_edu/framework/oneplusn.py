"""The 1+N framework: one central model, N adapter sets, one per cluster of tasks.

Three steps, as in Song et al. 2024:

1. measure how tasks relate (`task_affinity`): the cosine similarity of each task's
   gradient on a fresh LoRA at the central model (tasks that pull the weights the same way
   can share experts), or the lookahead affinity of Fifty et al. 2021 (how much a step on
   task i lowers task j's loss);
2. group them (`cluster_tasks`, scipy's hierarchical clustering; or `prior_clusters`, the
   suite's own labels);
3. `OnePlusN`: one CGC-LoRA adapter set per cluster over the one frozen central model. A
   request names its task; it is routed to its cluster's set and local task id. The sets are
   views that share the base's weight tensors, so serving holds one base plus N small sets.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import pandas as pd
import torch
from torch import nn

from ..adapters.config import AdapterConfig
from ..adapters.injection import adapter_layers, add_adapters, check_finite_merge, merged_copy
from ..adapters.layer import add_delta
from ..adapters.serving import ServingCache
from ..adapters.serving import adapter_state as layer_state
from ..adapters.saving import export_peft_lora, load_adapters, read_adapter_config, save_adapters
from ..train.loop import greedy_decode, score_items
from ..train.loop import train as train_adapters
from ..utils import PLAIN_TORCH, read_manifest, training_seed
from .affinity import subset_tasks, task_order

FORMAT = "cgc_edu-one-plus-n"
MANIFEST = "one_plus_n.json"


# ---------------------------------------------------------------------- 1+N
def _shared_view(base: nn.Module) -> nn.Module:
    """A copy of ``base`` whose modules are new but whose parameters and buffers ARE the base's.

    deepcopy consults its memo before copying, so every tensor listed there is reused as is.
    """
    memo = {id(t): t for t in list(base.parameters()) + list(base.buffers())}
    return copy.deepcopy(base, memo)


def adapter_state(layers) -> Optional[tuple[tuple, tuple]]:
    """(tensors, key) of several adapted layers together (`cgc_edu.adapters.serving.
    adapter_state`), for a `ServingCache`; None when one cannot tell (a gate hook)."""
    states = [layer_state(layer) for layer in layers]
    if any(state is None for state in states):
        return None
    return (tuple(t for tensors, _ in states for t in tensors),
            tuple(key for _, key in states))


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights (names, shapes and values): is this the same base?
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def unique_parameter_bytes(*models: nn.Module) -> int:
    """Bytes of the distinct tensor storages behind the models' parameters (shared ones once).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """
    seen, total = set(), 0
    for model in models:
        for p in model.parameters():
            storage = p.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


class OnePlusN:
    """One frozen central model plus N CGC-LoRA adapter sets, one per cluster of tasks.

    Args:
        base_model: the central model (kept frozen, never copied: every adapter set is a view
            that shares its weight tensors; see `unique_parameter_bytes`).
        clusters: ``{cluster name: [task names]}``; each task in exactly one cluster.
        config: an AdapterConfig template (its ``n_tasks`` is set per cluster), or one
            AdapterConfig per cluster name.
        tokenizer: the central model's tokenizer, which `train`, `generate`, `score_items`
            and `evaluate` need (TinyTasks: ``cgc_edu.data.build_tokenizer()``); without
            one, they raise. Building, merging, serving by model and export need none.
        base_reference: where the base can be loaded from (saved by `save`); default the
            base's ``name_or_path``.
        seed: seeds the adapters' initialisation (cluster k uses seed + k).
        hot_merge: serve a batch whose requests all ask one task (a lone request, say)
            through a *hot copy*: the base's modules over its own tensors, except that every
            adapted weight is a private tensor W0 + dW of that task, refilled when the task
            or a weight changes. A merged model's speed, at the memory of one more copy of
            the adapted weights; the shared base is never written; mixed batches still take
            `serving_model`.

    The sets share the base's tensors, so nothing done to one set may write into them.
    ``merge_task`` on a set (the one public operation that writes W0) raises a clear error
    and changes nothing; `merged_model` gives a merged private copy instead. Raising was
    chosen over merging into a silent private copy: a copy costs a whole base model, which
    is what 1+N exists to avoid, so it is made only when asked for by name. Training a set,
    ``unmerge``, ``load_adapters`` and export only touch the set's own adapter tensors.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """

    def __init__(self, base_model: nn.Module, clusters: Mapping[str, Sequence[str]],
                 config: Union[AdapterConfig, Mapping[str, AdapterConfig]], tokenizer=None,
                 base_reference: Optional[str] = None, seed: int = 0, hot_merge: bool = False):
        self.hot_merge = bool(hot_merge)
        self._hot = None   # built by _hot_model() when first needed
        self._hot_cache, self._served_cache = ServingCache(), ServingCache()
        self.clusters = self._check_clusters(clusters)
        if adapter_layers(base_model):
            raise ValueError(f"OnePlusN: {type(base_model).__name__} already has adapters; pass the bare "
                             "central model (OnePlusN adds one adapter set per cluster).")
        configs = self._configs(config)
        self.base = base_model
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.base_reference = base_reference if base_reference is not None else (
            getattr(base_model, "name_or_path", None) or None)
        self.routes = {t: (c, i) for c, tasks in self.clusters.items() for i, t in enumerate(tasks)}
        self.sets: dict[str, nn.Module] = {}
        with torch.random.fork_rng():
            for k, (name, cfg) in enumerate(configs.items()):
                torch.manual_seed(training_seed(seed + k))
                self.sets[name] = add_adapters(_shared_view(base_model), cfg).eval()
        self._shared_message = (
            f"this layer's weights are the central model's, shared by the {len(self.sets)} adapter "
            "sets of a OnePlusN, so merging into them would change the central model and every "
            "set; use framework.merged_model(task) for a merged copy.")
        # Each set's adapted layers, by module name: fixed from here on (loading and training
        # change their tensors in place, never the modules), so collected once.
        self._set_layers = {c: adapter_layers(s) for c, s in self.sets.items()}
        for layers in self._set_layers.values():
            for layer in layers.values():
                layer.shared_base = self._shared_message

    # ------------------------------------------------------------ validation
    @staticmethod
    def _check_clusters(clusters) -> dict[str, list[str]]:
        if not isinstance(clusters, Mapping) or not clusters:
            raise TypeError(f"OnePlusN: clusters={clusters!r}; pass a non-empty dict "
                            "{cluster name: [task names]}, e.g. from prior_clusters or cluster_tasks.")
        out, seen = {}, {}
        for name, tasks in clusters.items():
            if isinstance(tasks, str) or not tasks:
                raise ValueError(f"OnePlusN: cluster {name!r} has tasks {tasks!r}; give each cluster "
                                 "a non-empty list of task names.")
            for t in tasks:
                if t in seen:
                    raise ValueError(f"OnePlusN: task {t!r} is in clusters {seen[t]!r} and {name!r}; "
                                     "put each task in exactly one cluster.")
                seen[t] = name
            out[str(name)] = list(tasks)
        return out

    def _configs(self, config) -> dict[str, AdapterConfig]:
        if isinstance(config, AdapterConfig):
            configs = {c: dataclasses.replace(config, n_tasks=len(t)) for c, t in self.clusters.items()}
        elif isinstance(config, Mapping) and set(config) == set(self.clusters):
            for c, cfg in config.items():
                if not isinstance(cfg, AdapterConfig) or cfg.n_tasks != len(self.clusters[c]):
                    raise ValueError(f"OnePlusN: config of cluster {c!r} is {cfg!r}; it must be an "
                                     f"AdapterConfig with n_tasks={len(self.clusters[c])}.")
            configs = {c: config[c] for c in self.clusters}
        else:
            configs = None
        if configs is not None:
            for c, cfg in configs.items():
                # A module to save is trained whole: in a set that shares the central model it
                # would be the central model's own module, changed for every set.
                if cfg.modules_to_save:
                    raise ValueError(
                        f"OnePlusN: the config of cluster {c!r} has modules_to_save="
                        f"{list(cfg.modules_to_save)}; the sets share the central model's modules, "
                        "so none can be trained whole: drop modules_to_save (or train a separate "
                        "model with add_adapters).")
            return configs
        raise TypeError(f"OnePlusN: config={config!r}; pass one AdapterConfig (a template) or a dict "
                        f"with one AdapterConfig per cluster {list(self.clusters)}.")

    # --------------------------------------------------------------- routing
    @property
    def tasks(self) -> list[str]:
        """Every task the framework serves, cluster by cluster."""
        return list(self.routes)

    def route(self, task: str) -> tuple[str, int]:
        """(cluster name, local task id) of ``task``; a KeyError lists the known tasks."""
        try:
            return self.routes[task]
        except (KeyError, TypeError):
            raise KeyError(f"OnePlusN: unknown task {task!r}; known tasks are {self.tasks}.") from None

    def _tokenizer(self, caller: str):
        """The framework's tokenizer; a ValueError naming the fix when it was built without one."""
        if self.tokenizer is None:
            raise ValueError(f"OnePlusN.{caller}: this OnePlusN has no tokenizer; pass the central "
                             "model's own, OnePlusN(base, clusters, config, tokenizer=...) or "
                             "OnePlusN.load(path, tokenizer=...) (TinyTasks' is "
                             "cgc_edu.data.build_tokenizer()), or set framework.tokenizer.")
        return self.tokenizer

    # ----------------------------------------------------------- train / use
    def train(self, dataset, steps: int = 300, progress: bool = True, **train_kwargs) -> dict[str, list[float]]:
        """Train the N adapter sets cluster by cluster on their tasks' rows of ``dataset``.

        ``steps`` is the total; each cluster gets a share proportional to its rows, so every
        example is seen about as often as in one joint run. ``train_kwargs`` go to
        `cgc_edu.train.train` (lr, batch_size, seed, ...). Returns each cluster's losses.

        Taught in: notebooks/06_one_plus_n.ipynb.
        """

        tokenizer = self._tokenizer("train")
        unknown = sorted(set(dataset["task"]) - set(self.routes))
        if unknown:
            raise KeyError(f"OnePlusN.train: the dataset has tasks {unknown} that no cluster serves; "
                           f"known tasks are {self.tasks}.")
        parts = {c: subset_tasks(dataset, [t for t in tasks if t in set(dataset["task"])])
                 for c, tasks in self.clusters.items()}
        total = sum(len(p) for p in parts.values())
        losses = {}
        for cluster, part in parts.items():
            n = max(1, round(steps * len(part) / total))
            losses[cluster] = train_adapters(self.sets[cluster], part, tokenizer, steps=n,
                                             progress=progress, **train_kwargs)
        return losses

    @torch.no_grad()
    def generate(self, prompts: Union[str, Sequence[str]],
                 tasks: Union[str, None, Sequence[Optional[str]]],
                 max_new_tokens: int = 8) -> Union[str, list[str]]:
        """Greedy answers, each request answered by its task's adapter (cluster set, local id).

        ``prompts`` and ``tasks``: one string each, or equal-length lists. A mixed batch is
        decoded in one pass, whatever clusters its tasks belong to (`serving_model`), answers
        in request order. A request whose task is None names no task: the untouched central
        model answers it, with its general skills (the "1" of 1+N).

        Taught in: notebooks/06_one_plus_n.ipynb.
        """

        tokenizer = self._tokenizer("generate")
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if tasks is None or isinstance(tasks, str):
            tasks = [tasks] * len(prompts)
        tasks = list(tasks)
        if len(tasks) != len(prompts):
            raise ValueError(f"OnePlusN.generate: {len(prompts)} prompts but {len(tasks)} tasks; "
                             "name one task per prompt (or one task for all).")
        routes = [None if t is None else self.route(t) for t in tasks]  # every task checked
        answers: list = [None] * len(prompts)
        general = [i for i, r in enumerate(routes) if r is None]
        if general:                               # no task: the central model, as it is
            for i, a in zip(general, greedy_decode(self.base, tokenizer,
                                                   [prompts[i] for i in general],
                                                   max_new_tokens=max_new_tokens)):
                answers[i] = a
        asked = [i for i, r in enumerate(routes) if r is not None]
        if asked:
            named = {tasks[i] for i in asked}
            if self.hot_merge and len(named) == 1:
                model, ids = self._hot_model(tasks[asked[0]]), None
            else:
                model, ids = self.serving_model(), [self._serving_ids[routes[i]] for i in asked]
            for i, a in zip(asked, greedy_decode(model, tokenizer,
                                                 [prompts[i] for i in asked], task_ids=ids,
                                                 max_new_tokens=max_new_tokens)):
                answers[i] = a
        return answers[0] if single else answers

    @torch.no_grad()
    def _hot_model(self, task: str) -> nn.Module:
        """The hot copy for ``task`` (see ``hot_merge``): refilled only when the task, an
        adapter of its set (`adapter_state`: weights, scaling, gate hooks) or the base's
        adapted weights changed. A merge like any other: NaN or inf weights are refused
        (`check_finite_merge`) before anything is written, the hot copy kept as it was."""
        cluster, local = self.route(task)
        layers = self._set_layers[cluster]
        state = adapter_state(layers.values())
        names = sorted({n for per_set in self._set_layers.values() for n in per_set})
        bases = tuple(self.base.get_submodule(name).weight for name in names)
        if state is not None:
            sources = (*state[0], *bases)
            key = (task, state[1], tuple((w0._version, w0.data_ptr()) for w0 in bases))
            if self._hot is not None and self._hot_cache.get(sources, key) is not None:
                return self._hot
        check_finite_merge(layers, local, f"OnePlusN hot_merge of task {task!r} (local id {local} "
                                          f"in cluster {cluster!r})")
        if self._hot is None:
            self._hot = _shared_view(self.base).eval()
            self._hot_weights = {}
            for name in names:   # private tensors for the adapted weights only
                module = self._hot.get_submodule(name)
                module.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)
                self._hot_weights[name] = (module.weight, self.base.get_submodule(name).weight)
        for name, (private, w0) in self._hot_weights.items():
            private.copy_(w0)
            if name in layers:
                add_delta(private, layers[name].delta_weight(local), +1, layers[name].fan_in_fan_out)
        # refilled in place: what the cache held is gone (a None key never matches)
        self._hot_cache.put(sources, key, True) if state is not None else \
            self._hot_cache.put((), None, None)
        return self._hot

    @torch.no_grad()
    def serving_model(self) -> nn.Module:
        """One model that serves every task of every cluster in one pass over a mixed batch.

        Because a task's gate depends on its id only, task t's adapter in its cluster's set is
        one plain LoRA, B_t A_t with B_t = (alpha/r) [g_t,e B_e] and A_t = [A_e] over its
        experts e in S_t (rank |S_t| r_e). The serving model holds these as the independent
        preset (one expert per task, task ids global in the order of `tasks`) over a view of
        the same shared base, so a mixed batch costs one LoRA of that rank per sample, with no
        gate and no loop over clusters. It is rebuilt when an adapter of a set has changed
        (training, ``load_adapters``), so it always answers like the sets.
        """
        layers = self._set_layers
        state = adapter_state(l for per in layers.values() for l in per.values())
        if state is not None:
            kept = self._served_cache.get(*state)
            if kept is not None:
                return kept
        names = sorted({n for per_set in layers.values() for n in per_set})
        rank = max(l.config.experts_per_task * l.expert_rank
                   for per_set in layers.values() for l in per_set.values())
        config = AdapterConfig.independent(rank=rank, alpha=rank, n_tasks=len(self.routes),
                                           target_modules=names)   # scaling 1: it is folded in B
        with torch.random.fork_rng():   # building it must not move the caller's RNG
            served = add_adapters(_shared_view(self.base), config).eval().requires_grad_(False)
        ids = {}
        for name, layer in adapter_layers(served).items():
            layer.shared_base = self._shared_message
            layer.lora_A.zero_()        # a cluster that does not adapt this module adds nothing
            for cluster, per_set in layers.items():
                source = per_set.get(name)
                for local, task in enumerate(self.clusters[cluster]):
                    ids[(cluster, local)] = gid = self.tasks.index(task)
                    if source is not None:
                        one = torch.tensor([local], device=source.allowed.device)
                        A, Bt = source.task_lora(one)     # gate and scaling in B
                        k = A.shape[1]
                        layer.lora_A[gid, :k] = A[0].to(layer.lora_A.dtype)
                        layer.lora_B[gid, :, :k] = Bt[0].T.to(layer.lora_B.dtype)
        self._serving_ids = ids
        if state is not None:
            self._served_cache.put(*state, served)
        return served

    def score_items(self, dataset, batch_size: int = 256) -> pd.DataFrame:
        """Every item answered by its cluster's set and scored, as `cgc_edu.train.loop.score_items`
        (cluster by cluster; column ``cluster`` names the set).
        """
        tokenizer = self._tokenizer("score_items")
        present = set(dataset["task"])
        for t in sorted(present):
            self.route(t)
        frames = [score_items(self.sets[cluster], subset_tasks(dataset, mine), tokenizer,
                              batch_size=batch_size).assign(cluster=cluster)
                  for cluster, tasks in self.clusters.items()
                  for mine in [[t for t in tasks if t in present]] if mine]
        return pd.concat(frames, ignore_index=True)

    def evaluate(self, dataset, batch_size: int = 256) -> pd.DataFrame:
        """Exact match per task (and "average"), like `cgc_edu.train.evaluate`, each task
        answered by its cluster's set; column ``cluster`` names it.

        Taught in: notebooks/06_one_plus_n.ipynb.
        """
        self._tokenizer("evaluate")
        items = self.score_items(dataset, batch_size)
        table = items.groupby("task").agg(exact_match=("exact_match", "mean"),
                                          n=("exact_match", "size"), cluster=("cluster", "first"))
        table = table.reindex([t for t in task_order(dataset)])
        table.loc["average"] = [table["exact_match"].mean(), int(table["n"].sum()), ""]
        table["n"] = table["n"].astype(int)
        table.index.name = "task"
        return table

    # --------------------------------------------------------------- serving
    @torch.no_grad()
    def merged_model(self, task: str) -> nn.Module:
        """A separate copy of the base with ``task``'s adapter folded into its weights: a plain
        model (no adapter code) that runs at the base model's speed and serves that task only.

        Taught in: notebooks/06_one_plus_n.ipynb.
        """
        cluster, local = self.route(task)
        return merged_copy(self.sets[cluster], local).eval()   # a copy of the base

    def export_peft(self, task: str, path: Union[str, Path]) -> Path:
        """Write ``task``'s adapter as a plain peft LoRA (see `cgc_edu.adapters.saving.export_peft_lora`).

        Taught in: notebooks/06_one_plus_n.ipynb.
        """
        cluster, local = self.route(task)
        return export_peft_lora(self.sets[cluster], local, path,
                                base_model_name_or_path=self.base_reference)

    def memory(self) -> dict[str, int]:
        """Parameter bytes: the base, the adapter sets, and all of it counted once; with
        ``hot_merge``, the hot copy's private weights (0 until a request has built it)."""
        base = unique_parameter_bytes(self.base)
        total = unique_parameter_bytes(self.base, *self.sets.values())
        hot = sum(p.nbytes for p, _ in self._hot_weights.values()) if self._hot is not None else 0
        return {"base_bytes": base, "adapter_bytes": total - base, "total_bytes": total,
                "hot_bytes": hot}

    # ------------------------------------------------------------ save / load
    def save(self, path: Union[str, Path]) -> Path:
        """Write the base reference (and fingerprint), the clusters and the N adapter sets.

        Layout: ``one_plus_n.json`` and one `save_adapters` folder per cluster (``set_0``, ...).

        Taught in: notebooks/06_one_plus_n.ipynb.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        folders = {c: f"set_{k}" for k, c in enumerate(self.clusters)}
        for cluster, folder in folders.items():
            save_adapters(self.sets[cluster], path / folder)
        manifest = {"format": FORMAT, "version": 1, "base_reference": self.base_reference,
                    "base_fingerprint": base_fingerprint(self.base), "clusters": self.clusters,
                    "folders": folders}
        (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, path: Union[str, Path], base_model: Optional[nn.Module] = None,
             tokenizer=None) -> "OnePlusN":
        """Rebuild a saved OnePlusN over ``base_model`` (default: load the saved base reference
        with ``AutoModelForCausalLM.from_pretrained``). The base must be the one it was trained
        on (its fingerprint is checked). ``tokenizer``: the base's, for `train`, `generate`
        and `evaluate` (not saved with the sets).

        Taught in: notebooks/06_one_plus_n.ipynb.
        """
        path = Path(path)
        manifest, clusters, folders, fingerprint = read_manifest(
            path / MANIFEST, FORMAT,
            lambda m: (m, dict(m["clusters"]), dict(m["folders"]), str(m["base_fingerprint"])),
            caller="OnePlusN.load", kind="OnePlusN manifest", writer="OnePlusN.save(path)",
            fix="pass a folder written by OnePlusN.save")
        if base_model is None:
            reference = manifest.get("base_reference")
            if not reference:
                raise ValueError("OnePlusN.load: the saved framework names no base model; pass "
                                 "base_model=<the central model it was trained on>.")
            from transformers import AutoModelForCausalLM
            base_model = AutoModelForCausalLM.from_pretrained(reference, **PLAIN_TORCH).eval()
        found = base_fingerprint(base_model)
        if found != fingerprint:
            raise ValueError(f"OnePlusN.load: the base model's fingerprint is {found} but the adapter "
                             f"sets were trained on {fingerprint}; pass the central "
                             "model they were trained on.")
        # Each set's config is read and checked by load_adapters' own reader (same errors).
        configs = {cluster: read_adapter_config(path / folder, caller="OnePlusN.load")[0]
                   for cluster, folder in folders.items()}
        framework = cls(base_model, clusters, configs, tokenizer=tokenizer,
                        base_reference=manifest.get("base_reference"))
        for cluster, folder in folders.items():
            load_adapters(framework.sets[cluster], path / folder)
        return framework

    def __repr__(self) -> str:
        sets = ", ".join(f"{c}: {len(t)} tasks" for c, t in self.clusters.items())
        return f"OnePlusN(base={type(self.base).__name__}, {len(self.sets)} adapter sets [{sets}])"
