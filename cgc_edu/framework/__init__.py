"""The 1+N framework: task affinity and clustering (`affinity`), and `OnePlusN` (`oneplusn`):
one central model, one CGC-LoRA set per cluster, requests routed by task, served mixed or
merged, exported to peft.

Taught in: notebooks/06_one_plus_n.ipynb.
"""
from .affinity import (
                       AffinitySettings,
                       adjusted_rand_index,
                       cluster_tasks,
                       clustering_agreement,
                       measured_clusters,
                       prior_clusters,
                       subset_tasks,
                       task_affinity,
                       task_linkage,
                       task_order,
)
from .oneplusn import OnePlusN, base_fingerprint, unique_parameter_bytes

__all__ = ["AffinitySettings", "OnePlusN", "adjusted_rand_index", "base_fingerprint", "cluster_tasks",
           "clustering_agreement", "measured_clusters", "prior_clusters", "subset_tasks",
           "task_affinity", "task_linkage", "task_order", "unique_parameter_bytes"]
from .task_router import NO_TASK, TaskClassifier, prompt_features

__all__ += ["NO_TASK", "TaskClassifier", "prompt_features"]
