"""The study's other suites (cgc_edu.data.suites): each family's tasks are what its docstring says."""
import re
import string

import pytest

from cgc_edu.study import methods, runner
from cgc_edu.data import TASKS, TaskSpec, make_tiny_tasks
from cgc_edu.data.suites import key_table, n_derangements, suite, swap_table

LETTERS = string.ascii_lowercase
WORDS = ["cab", "zebra", "quick", "jumps", "abcdef", "xyz"]


def moved(table):
    return {c for c in LETTERS if table[c] != c}


@pytest.mark.parametrize("pairs", [1, 3, 9, 10, 13])
def test_swaps_swap_that_many_pairs_and_differ_by_task(pairs):
    tasks = suite(f"swaps:{pairs}")
    assert [t.name for t in tasks] == [f"swap_{c}" for c in "abcdefgh"]
    tables = [swap_table(k, pairs) for k in range(8)]
    for table, task in zip(tables, tasks):
        assert len(moved(table)) == 2 * pairs
        assert all(table[table[c]] == c for c in LETTERS)          # an involution: pairs swapped
        assert task.fn("".join(LETTERS)) == "".join(table[c] for c in LETTERS)
        assert task.cluster == "swaps" and not task.low_data
    assert len({tuple(t[c] for c in LETTERS) for t in tables}) == 8     # different pairs per task


def table_of(task):
    return dict(zip(LETTERS, task.fn(LETTERS)))


@pytest.mark.parametrize("spec, n_letters, n_tasks", [
    ("derangements:4", 4, 8), ("derangements:6", 6, 8), ("derangements:20", 20, 8),
    ("derangements:26", 26, 8), ("derangements:4x9", 4, 9), ("derangements:6x20", 6, 20),
    ("derangements:2x1", 2, 1),
])
def test_derangements_move_every_one_of_the_same_letters(spec, n_letters, n_tasks):
    tasks = suite(spec)
    assert [t.name for t in tasks] == [f"perm_{c}" for c in LETTERS[:n_tasks]]
    tables = [table_of(t) for t in tasks]
    for table in tables:
        assert moved(table) == set(LETTERS[:n_letters])
        assert sorted(table.values()) == list(LETTERS)             # a permutation
    assert len({tuple(t.values()) for t in tables}) == n_tasks     # no task twice (4x9: all nine)
    # the first draws are kept in order: a suite of 8 is the start of the suite of 20
    assert tables[:8] == [table_of(t) for t in suite(f"derangements:{n_letters}x{n_tasks}")][:8]


def test_n_derangements_is_the_subfactorial():
    assert [n_derangements(n) for n in range(8)] == [1, 0, 1, 2, 9, 44, 265, 1854]


def test_swaps_take_a_number_of_tasks():
    tasks = suite("swaps:3x20")
    assert [t.name for t in tasks] == [f"swap_{c}" for c in LETTERS[:20]]
    assert [table_of(t) for t in tasks[:8]] == [table_of(t) for t in suite("swaps:3")]
    assert len({tuple(table_of(t).values()) for t in tasks}) == 20
    assert all(len(moved(table_of(t))) == 6 for t in tasks)


def test_keys_are_permutations_of_the_alphabet():
    tasks = suite("keys:4")
    assert [t.name for t in tasks] == ["key_a", "key_b", "key_c", "key_d"]
    for k, task in enumerate(tasks):
        assert sorted(key_table(k).values()) == list(LETTERS)
        assert task.fn(LETTERS) == "".join(key_table(k)[c] for c in LETTERS)


def test_positions_rearrange_the_letters():
    tasks = {t.name: t.fn for t in suite("positions")}
    assert len(tasks) == 8
    assert tasks["reverse"]("abcde") == "edcba" and tasks["rotate"]("abcde") == "bcdea"
    assert tasks["rotate_right"]("abcde") == "eabcd" and tasks["rotate2"]("abcde") == "cdeab"
    assert tasks["pairswap"]("abcde") == "badce" and tasks["pairswap"]("abcd") == "badc"
    assert tasks["evens_odds"]("abcde") == "acebd" and tasks["odds_evens"]("abcde") == "bdace"
    assert tasks["double"]("abc") == "aabbcc"
    for name, fn in tasks.items():
        for word in WORDS:
            want = sorted(word * 2) if name == "double" else sorted(word)
            assert sorted(fn(word)) == want, (name, word)


def test_suites_are_deterministic_and_tinytasks_is_the_course_suite():
    assert suite() is TASKS and suite("tinytasks") is TASKS
    for spec in ["swaps:9", "derangements:20", "keys:3", "positions"]:
        a, b = suite(spec), suite(spec)
        assert [t.name for t in a] == [t.name for t in b]
        assert all(x.fn(w) == y.fn(w) for x, y in zip(a, b) for w in WORDS)


@pytest.mark.parametrize("spec, words", [
    ("swaps", "write swaps:P[xN] with P the number of pairs of letters, 1..13"),
    ("swaps:0", "1..13"), ("swaps:14", "1..13"), ("keys:x", "write keys:K with K the number of tasks, 1..26"),
    ("keys:3x2", "write keys:K"), ("swaps:3x27", "N, the number of tasks, is 1..26"),
    ("derangements:4x", "N, the number of tasks"),
    ("derangements:3", "3 letters have 2 derangement(s), fewer than 8 tasks: move more letters"),
    ("derangements:1", "2..26"), ("cipher:3", "unknown suite 'cipher:3'; choose one of tinytasks"),
])
def test_a_bad_spec_names_the_value_and_the_choices(spec, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        suite(spec)


def test_make_tiny_tasks_builds_a_suite_in_its_order():
    tasks = suite("swaps:3")
    data = make_tiny_tasks(seed=0, tasks=tasks, n_train=30, n_validation=5, n_test=5, name_in_prompt=True)
    rows = data["train"].to_list()
    assert {r["task"]: r["task_id"] for r in rows} == {t.name: i for i, t in enumerate(tasks)}
    spec = {t.name: t for t in tasks}
    for r in rows:
        word = r["prompt"].split(":")[1][:-1]
        assert r["prompt"] == f"{r['task']}:{word}=" and r["target"] == spec[r["task"]].fn(word)
    # the course's suite given as specs is the default, row for row
    assert (make_tiny_tasks(seed=3, n_train=20, tasks=TASKS)["train"].to_list()
            == make_tiny_tasks(seed=3, n_train=20)["train"].to_list())


def test_make_tiny_tasks_refuses_mixed_or_repeated_specs():
    tasks = suite("swaps:3")
    with pytest.raises(TypeError, match="mixes TaskSpec objects and names"):
        make_tiny_tasks(tasks=[tasks[0], "reverse"])
    twin = TaskSpec(tasks[0].name, "other", lambda s: s)
    with pytest.raises(ValueError, match=r"names a task twice: \['swap_a', 'swap_a'\]"):
        make_tiny_tasks(tasks=[tasks[0], twin])


def test_the_suite_is_part_of_a_runs_key_except_for_tinytasks():
    default = methods.Settings()
    key = runner._key("run", default, method="integrated", seed=0, lr=0.003)
    assert "suite" not in key["settings"]        # the stored study's runs are still found
    other = runner._key("run", methods.Settings(suite="swaps:9"), method="integrated", seed=0, lr=0.003)
    assert other["settings"]["suite"] == "swaps:9"
    assert runner._run_file("out", "run", key) != runner._run_file("out", "run", other)


def test_the_cli_refuses_an_unknown_suite_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'foo:2'"):
        runner.main(["--suite", "foo:2", "--out", str(tmp_path / "study"), "--no-progress"])
    assert not (tmp_path / "study").exists()


def test_the_cli_refuses_a_budget_the_suite_cannot_split_before_any_run(tmp_path):
    # three tasks: CGC-LoRA's 4 common + 3 specific experts cannot share rank 24
    with pytest.raises(ValueError, match=r"--suite keys:3 has 3 tasks, and cgc_lora cannot split --rank 24"
                                         r".*multiple of 7"):
        runner.main(["--suite", "keys:3", "--methods", "integrated,cgc_lora",
                          "--out", str(tmp_path / "study"), "--no-progress"])
    assert not (tmp_path / "study").exists()

