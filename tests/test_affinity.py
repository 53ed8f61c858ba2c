"""Task affinity and clustering (cgc_edu.framework.affinity): measures, hierarchical clustering, the Rand
and adjusted Rand indices, and the suite's own clusters."""
import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from cgc_edu.framework import affinity
from cgc_edu.framework.affinity import (AffinitySettings, adjusted_rand_index, cluster_tasks, clustering_agreement, measured_clusters,
                              prior_clusters, subset_tasks, task_affinity, task_linkage)
from cgc_edu.data import TASKS, make_tiny_tasks
from cgc_edu.framework import base_fingerprint
from cgc_edu.adapters.injection import adapter_layers

from tiny_models import TOK, tiny_base  # tests/tiny_models.py



@pytest.fixture(scope="module")
def tasks():
    return make_tiny_tasks(seed=0, n_train=24, n_low=8, n_validation=0, n_test=6)


def test_the_framework_package_exports_the_affinity_measures():
    from cgc_edu import framework
    for name in ["task_affinity", "cluster_tasks", "prior_clusters", "subset_tasks",
                 "clustering_agreement", "task_linkage"]:
        assert getattr(framework, name) is getattr(affinity, name), name


# ---------------------------------------------------------------- clustering
def block_affinity(names, labels, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    same = np.equal.outer(labels, labels)
    values = np.where(same, 0.8, -0.2) + noise * rng.standard_normal((len(names), len(names)))
    return pd.DataFrame(values, index=names, columns=names)


def test_cluster_tasks_recovers_planted_blocks():
    names = list("abcdefg")
    labels = np.array([0, 1, 0, 2, 1, 2, 0])
    clusters = cluster_tasks(block_affinity(names, labels), 3)
    assert sorted(map(sorted, clusters.values())) == [["a", "c", "g"], ["b", "e"], ["d", "f"]]
    assert list(clusters) == ["cluster 0", "cluster 1", "cluster 2"]
    assert clusters["cluster 0"][0] == "a"          # numbered by first task
    assert task_linkage(block_affinity(names, labels)).shape == (6, 4)


def test_cluster_tasks_rejects_bad_input():
    aff = block_affinity(list("abc"), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="n_clusters=4"):
        cluster_tasks(aff, 4)
    with pytest.raises(TypeError, match="pass the DataFrame"):
        cluster_tasks(aff.to_numpy(), 2)
    with pytest.raises(ValueError, match="square"):
        cluster_tasks(aff.iloc[:2], 2)


def test_clustering_agreement_is_rand_index():
    a = {"x": ["p", "q"], "y": ["r", "s"]}
    assert clustering_agreement(a, {"u": ["r", "s"], "v": ["q", "p"]}) == 1.0   # names do not matter
    # moving s to the other cluster changes 3 of the 6 pairs
    assert clustering_agreement(a, {"x": ["p", "q", "s"], "y": ["r"]}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different tasks"):
        clustering_agreement(a, {"x": ["p"]})


def test_adjusted_rand_index_hand_computed():
    # contingency of {pqr | st} vs {pq | rst}: n_ij = 2, 1, 0, 2 -> sum C(n_ij, 2) = 2;
    # rows 3, 2 -> C = 3 + 1 = 4; columns 2, 3 -> 4; C(5, 2) = 10; E = 4 * 4 / 10 = 1.6;
    # max = (4 + 4) / 2 = 4; ARI = (2 - 1.6) / (4 - 1.6) = 1/6
    a = {"x": ["p", "q", "r"], "y": ["s", "t"]}
    assert adjusted_rand_index(a, {"u": ["p", "q"], "v": ["r", "s", "t"]}) == pytest.approx(1 / 6)
    assert adjusted_rand_index(a, {"b": ["t", "s"], "a": ["r", "q", "p"]}) == pytest.approx(1.0)
    # the designed 4 + 4 split with one task in the wrong cluster: 1/8
    designed = {"t": list("abcd"), "e": list("efgh")}
    assert adjusted_rand_index(designed, {"1": list("abce"), "2": list("dfgh")}) == pytest.approx(0.125)
    # a crossed 2 + 2 split is below chance; the Rand index says 1/3
    crossed = {"1": ["a", "c"], "2": ["b", "d"]}
    assert adjusted_rand_index({"x": ["a", "b"], "y": ["c", "d"]}, crossed) == pytest.approx(-0.5)
    assert clustering_agreement({"x": ["a", "b"], "y": ["c", "d"]}, crossed) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="different tasks"):
        adjusted_rand_index(a, {"x": ["p"]})


def test_prior_clusters_and_subset(tasks):
    clusters = prior_clusters(tasks["train"])
    want = {}
    for spec in TASKS:
        want.setdefault(spec.cluster, []).append(spec.name)
    assert clusters == want and list(clusters) == ["transform", "extract"]
    part = subset_tasks(tasks["train"], ["last", "first"])
    assert set(part["task"]) == {"first", "last"}
    assert {t: i for t, i in zip(part["task"], part["task_id"])} == {"last": 0, "first": 1}
    with pytest.raises(KeyError, match="no rows"):
        subset_tasks(tasks["train"], ["nope"])


# ------------------------------------------------------------------ affinity
def test_gradient_affinity_is_a_cosine_matrix_and_leaves_model_alone(tasks):
    base = tiny_base()
    before = base_fingerprint(base)
    aff = task_affinity(base, tasks["train"], TOK, n_per_task=8)
    assert list(aff.index) == list(aff.columns) == list(prior_clusters(tasks["train"])["transform"]) + \
        prior_clusters(tasks["train"])["extract"]
    np.testing.assert_allclose(np.diag(aff), 1.0, atol=1e-5)
    np.testing.assert_allclose(aff, aff.T, atol=1e-6)
    assert (aff.abs() <= 1 + 1e-6).all().all()
    assert base_fingerprint(base) == before and not adapter_layers(base)
    again = task_affinity(base, tasks["train"], TOK, n_per_task=8)
    pd.testing.assert_frame_equal(aff, again)       # deterministic


def test_affinity_takes_its_knobs_as_settings_or_keywords(tasks):
    settings = AffinitySettings(n_per_task=8, seed=2)
    pd.testing.assert_frame_equal(task_affinity(tiny_base(), tasks["train"], TOK, settings=settings),
                                  task_affinity(tiny_base(), tasks["train"], TOK, n_per_task=8, seed=2))
    # keywords override the settings; the probe and a measure at it share them
    probe = affinity.affinity_probe(tiny_base(), tasks["train"], TOK, settings)
    pd.testing.assert_frame_equal(affinity.measure_affinity(probe, tasks["train"], TOK, "gradient", settings),
                                  task_affinity(tiny_base(), tasks["train"], TOK,
                                                settings=AffinitySettings(seed=2), n_per_task=8))
    with pytest.raises(TypeError, match=r"unknown knob\(s\) \['n_rows'\]; an AffinitySettings has \['n_per_task'"):
        task_affinity(tiny_base(), tasks["train"], TOK, n_rows=8)
    with pytest.raises(ValueError, match=r"task_affinity: no tokenizer; pass the central model's own"):
        task_affinity(tiny_base(), tasks["train"])
    with pytest.raises(ValueError, match="task_affinity: rank=0; pass a positive int"):
        task_affinity(tiny_base(), tasks["train"], TOK, settings=AffinitySettings(rank=0))


def test_lookahead_affinity_shape(tasks):
    aff = task_affinity(tiny_base(), tasks["train"], TOK, method="lookahead", n_per_task=4)
    assert aff.shape == (8, 8) and np.isfinite(aff.to_numpy()).all()
    assert (np.diag(aff) > 0).all()   # a step on a task lowers that task's own loss
    with pytest.raises(ValueError, match="method='nope'"):
        task_affinity(tiny_base(), tasks["train"], TOK, method="nope")


def test_warmup_changes_the_measure_not_the_model(tasks):
    base = tiny_base()
    before = base_fingerprint(base)
    cold = task_affinity(base, tasks["train"], TOK, n_per_task=8)
    warm = task_affinity(base, tasks["train"], TOK, n_per_task=8, warmup_steps=3, warmup_lr=1e-2)
    assert not np.allclose(cold, warm)
    np.testing.assert_allclose(np.diag(warm), 1.0, atol=1e-5)
    assert base_fingerprint(base) == before and not adapter_layers(base)


def test_update_affinity_is_a_cosine_matrix_of_weight_changes(tasks):
    base = tiny_base()
    aff = task_affinity(base, tasks["train"], TOK, method="update", update_steps=2, update_lr=1e-2)
    assert aff.shape == (8, 8)
    np.testing.assert_allclose(np.diag(aff), 1.0, atol=1e-5)
    np.testing.assert_allclose(aff, aff.T, atol=1e-6)
    assert not adapter_layers(base)
    again = task_affinity(base, tasks["train"], TOK, method="update", update_steps=2, update_lr=1e-2)
    pd.testing.assert_frame_equal(aff, again)
    with pytest.raises(ValueError, match="update_steps=0"):
        task_affinity(base, tasks["train"], TOK, method="update", update_steps=0)


def test_transfer_affinity_scores_what_training_one_task_does_to_the_others(tasks):
    # "a" and "b" are one task under two names (the rows of `first`); "r" (the rows of
    # `reverse`) wants another answer to the same prompts. Training on a or on b is the same
    # training, so it must help b exactly as much as a: rows and columns of a and b agree.
    rows = {t: [r for r in tasks["train"] if r["task"] == t] for t in ("first", "reverse")}
    twins = [dict(r, task=name, task_id=i) for i, name in enumerate("ab") for r in rows["first"]]
    other = [dict(r, task="r", task_id=2) for r in rows["reverse"]]
    suite = Dataset.from_list(twins + other)
    base = tiny_base()
    before = base_fingerprint(base)
    aff = task_affinity(base, suite, TOK, method="transfer", n_per_task=64, update_steps=20,
                        update_lr=2e-2)
    assert list(aff.index) == list(aff.columns) == ["a", "b", "r"]
    np.testing.assert_allclose(aff.loc["a"], aff.loc["b"], atol=1e-5)       # same training
    np.testing.assert_allclose(aff["a"], aff["b"], atol=1e-5)               # same loss
    assert (np.diag(aff) > 0.02).all()          # training on a task lowers its own loss
    assert aff.loc["a", "b"] > 2 * aff.loc["a", "r"]   # ... and its twin's, more than r's
    assert not np.allclose(aff, aff.T, atol=1e-3)   # not symmetric: a directed question
    assert base_fingerprint(base) == before and not adapter_layers(base)
    with pytest.raises(ValueError, match="update_steps=0"):
        task_affinity(base, suite, TOK, method="transfer", update_steps=0)


def test_measured_clusters_returns_a_partition_and_its_affinity(tasks):
    clusters, aff = measured_clusters(tiny_base(), tasks["train"], 2, TOK, method="gradient", n_per_task=4)
    assert sorted(t for ts in clusters.values() for t in ts) == sorted(aff.index) and len(clusters) == 2
