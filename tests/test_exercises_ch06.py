"""Chapter 06's exercises: a ninth task's cost in copies of the base, and the clustering
check's generic labels."""
from cgc_edu.course.exercises import Checks
from cgc_edu.data import make_tiny_tasks
from cgc_edu.framework import prior_clusters


def test_ex3_counts_the_copies_a_ninth_task_adds(capsys):
    clusters = prior_clusters(make_tiny_tasks(seed=0, n_train=1, n_low=1, n_validation=0,
                                              n_test=0)["train"])
    n_tasks = sum(len(t) for t in clusters.values())
    # 1+N: one base before and after; merged serving: one base per task, 8 then 9
    want = (1 - 1, (n_tasks + 1) - n_tasks)
    assert want == (0, 1)
    assert Checks("06").ex3(want) is True
    assert Checks("06").ex3((1, n_tasks + 1)) is False     # totals, not what is added
    assert "share one base" in capsys.readouterr().out


def test_ex4_hint_names_no_real_task(capsys):
    assert Checks("06").ex4(lambda affinity, n: {"all": list(affinity.index)}) is False
    out = capsys.readouterr().out
    assert "task 0" in out and "reverse" not in out and "ends" not in out


def test_ex1_routes_ends_in_the_learners_own_cut(capsys):
    # A 3-cluster cut written by hand: `ends` is the second task of its cluster.
    cut = {"cluster 1": ["reverse", "shift", "rotate", "reverse_tail"],
           "cluster 2": ["first", "ends"], "cluster 3": ["last", "length"]}
    assert Checks("06").ex1(("cluster 2", 1), cut) is True
    assert Checks("06").ex1(("cluster 2", 3), cut) is False           # not its position
    assert "numbers its tasks from 0" in capsys.readouterr().out
    assert Checks("06").ex1(("extract", 3)) is False                   # no cut passed
    assert "pass your cut" in capsys.readouterr().out
    two = {"a": cut["cluster 1"], "b": cut["cluster 2"] + cut["cluster 3"]}
    assert Checks("06").ex1(("b", 1), two) is False                    # not 3 clusters
    assert "3" in capsys.readouterr().out
