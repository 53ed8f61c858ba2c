"""Chapter 06's exercises: 1+N's routing on a cluster cut of your own, a task's rank when
exported to peft, what 1+N keeps in memory, and the clustering written by hand.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ...adapters.config import AdapterConfig
from ...data.tinytasks import TASKS, make_tiny_tasks
from ...framework.affinity import adjusted_rand_index, cluster_tasks, prior_clusters
from .checks import ChapterChecks, close, exercise, run_theirs


def designed_clusters() -> dict[str, list[str]]:
    """TinyTasks' designed clusters (`prior_clusters` of the suite)."""
    return prior_clusters(make_tiny_tasks(seed=0, n_train=1, n_low=1, n_validation=0,
                                          n_test=0)["train"])


class Checks(ChapterChecks):
    """The self-checks of chapter 06: ``Checks().ex2(answer)`` prints right / not yet and
    why, and returns True or False.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """

    chapter = "06"

    @exercise
    def ex1(answer, clusters=None):
        """Cut the transfer affinity into 3 clusters with ClusterKnobs (set
        knobs.n_clusters.value = 3, any linkage). Where would 1+N route a request for `ends`
        with your cut? Answer (cluster name, local task id), and pass the cut:
        check.ex1(answer, knobs.state["clusters"])."""
        if not isinstance(clusters, dict):
            return False, ("pass your cut as well: check.ex1(answer, "
                           "knobs.state['clusters']).")
        if len(clusters) != 3:
            return False, f"your cut has {len(clusters)} clusters; set N clusters to 3."
        home = [c for c, tasks in clusters.items() if "ends" in list(tasks)]
        if len(home) != 1:
            return False, "every task must be in exactly one cluster of the cut."
        want = (home[0], list(clusters[home[0]]).index("ends"))
        if isinstance(answer, (tuple, list)) and tuple(answer) == want:
            return True, ("the cluster that holds `ends` in your cut, and the task's position "
                          "inside it.")
        return False, (f"the router looks up the cluster that holds `ends` ({home[0]}: "
                       f"{list(clusters[home[0]])}) and numbers its tasks from 0, in that "
                       "order.")

    @exercise
    def ex2(answer):
        """A cluster of 3 tasks served with cgc_lora(rank=12, n_common=3, n_specific=1,
        budget="total"): what rank does export_peft give one task's LoRA?"""

        config = AdapterConfig.cgc_lora(rank=12, alpha=24, n_tasks=3, n_common=3, n_specific=1,
                                        budget="total")
        want = config.experts_per_task * config.expert_rank
        if answer == want:
            return True, f"|S_t| r_e = {config.experts_per_task} x {config.expert_rank} = {want}."
        return False, (f"a task uses its |S_t| = {config.experts_per_task} experts of rank "
                       f"{config.expert_rank} (12 / E with E = {config.n_experts}): rank {want}.")

    @exercise
    def ex3(answer):
        """A ninth task joins the `extract` cluster. How many more copies of the central model's
        weights does 1+N then keep in memory, and how many more would one merged model per task
        need? Answer (1+N, merged)."""
        clusters = designed_clusters()
        grown = {c: tasks + (["ninth"] if c == "extract" else []) for c, tasks in clusters.items()}

        def copies(cl):     # 1+N: one base for every set; merged: one base per task
            return np.array([1, sum(len(t) for t in cl.values())])

        want = tuple(int(v) for v in copies(grown) - copies(clusters))
        if close(answer, want):
            return True, (f"{want}: 1+N grows only the extract set's adapters; merged serving "
                          "copies the whole base once more.")
        return False, ("the sets share one base's tensors, so 1+N needs no new copy of it; merged "
                       f"serving needs one copy per task: {want}.")

    @exercise
    def ex4(answer):
        """Build the clustering: write clusters_of(affinity, n) that groups the tasks of an
        affinity matrix (a DataFrame, tasks x tasks, 1 on the diagonal) into n clusters by scipy's
        average linkage on the distance 1 - affinity; answer {name: [tasks]}."""

        tasks = [f"task {k}" for k in range(len(TASKS))]   # generic: the matrices are random
        gen = np.random.default_rng(3)
        for n in (2, 3):
            raw = gen.uniform(-1, 1, (len(tasks), len(tasks)))
            matrix = (raw + raw.T) / 2
            np.fill_diagonal(matrix, 1.0)
            affinity = pd.DataFrame(matrix, index=tasks, columns=tasks)
            want = cluster_tasks(affinity, n)
            got, why = run_theirs(answer, affinity.copy(), n)
            if why:
                return False, why
            try:
                same = (sorted(len(v) for v in got.values()) == sorted(len(v) for v in want.values())
                        and adjusted_rand_index(got, want) > 1 - 1e-9)
            except (AttributeError, TypeError, ValueError):
                same = False
            if not same:
                return False, (f"{n} clusters: yours {got!r}, cluster_tasks gives {want}; "
                               "scipy.spatial.distance.squareform(1 - affinity) feeds linkage, "
                               "fcluster(..., criterion='maxclust') cuts it.")
        return True, "the same groups as cluster_tasks for 2 and 3 clusters."
