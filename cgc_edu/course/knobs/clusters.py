"""Chapter 06's knobs: cut the tasks' affinity tree into N clusters and see which tasks 1+N
would group.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from __future__ import annotations

from typing import Optional

import ipywidgets as widgets
from matplotlib.figure import Figure

from ...framework.affinity import cluster_tasks, clustering_agreement
from .. import plots
from .base import Knobs


class ClusterKnobs(Knobs):
    """Cut the tasks' affinity tree into N clusters and see which tasks 1+N would group.

    The tree is `cgc_edu.course.plots.task_tree` over a measured affinity (``task_affinity``
    or a stored one); nothing is trained when a control moves. With ``designed`` (a clustering
    of the same tasks, e.g. the suite's), the widget also shows how far the cut agrees with it
    (`clustering_agreement`, the Rand index).

    Controls: ``n_clusters`` (IntSlider), ``method`` (scipy's linkage: average, complete,
    single, weighted), ``on`` ("affinity" or "profile", see `task_linkage`). ``state``:
    n_clusters, method, on, clusters (name -> tasks, as `cluster_tasks` gives them), rand
    (None without ``designed``).

    Taught in: notebooks/06_one_plus_n.ipynb.
    """

    dpi = 80

    def __init__(self, affinity, designed: Optional[dict] = None, n_clusters: int = 2):
        tasks = list(affinity.index)
        if not 1 <= n_clusters <= len(tasks):
            raise ValueError(f"ClusterKnobs: n_clusters={n_clusters!r}; choose 1 to {len(tasks)} "
                             f"(the number of tasks).")
        if designed is not None and sorted(t for ts in designed.values() for t in ts) != sorted(tasks):
            raise ValueError("ClusterKnobs: designed must group exactly the affinity's tasks "
                             f"{tasks}; got {designed}.")
        self.affinity, self.designed = affinity, designed
        self.n_clusters = widgets.IntSlider(value=n_clusters, min=1, max=len(tasks),
                                            description="N clusters")
        self.method = widgets.Dropdown(options=["average", "complete", "single", "weighted"],
                                       value="average", description="linkage")
        self.on = widgets.ToggleButtons(options=["affinity", "profile"], value="affinity",
                                        description="distance")
        self._build([[self.n_clusters, self.method], [self.on]], (6.0, 3.2))

    def _compute(self) -> dict:
        clusters = cluster_tasks(self.affinity, self.n_clusters.value, self.method.value,
                                 self.on.value)
        rand = (clustering_agreement(clusters, self.designed)
                if self.designed is not None else None)
        groups = " | ".join(", ".join(ts) for ts in clusters.values())
        agree = f"; Rand index with the designed clusters {rand:.2f}" if rand is not None else ""
        return dict(n_clusters=self.n_clusters.value, method=self.method.value,
                    on=self.on.value, clusters=clusters, rand=rand,
                    summary=f"{len(clusters)} adapter sets: {groups}{agree}.")

    def _draw(self, fig: Figure, s: dict) -> None:
        plots.task_tree(self.affinity, s["n_clusters"], s["method"], s["on"], ax=fig.subplots())


__all__ = ["ClusterKnobs"]
