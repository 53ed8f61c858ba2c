"""The study's other suites (cgc_edu.suites): each family's tasks are what its docstring says."""
import string

import pytest

from cgc_edu import experiments
from cgc_edu.data import TASKS, TaskSpec, make_tiny_tasks
from cgc_edu.suites import derangement_table, key_table, suite, swap_table

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


@pytest.mark.parametrize("n_letters", [2, 6, 20, 26])
def test_derangements_move_every_one_of_the_same_letters(n_letters):
    tasks = suite(f"derangements:{n_letters}")
    tables = [derangement_table(k, n_letters) for k in range(8)]
    for table in tables:
        assert moved(table) == set(LETTERS[:n_letters])
        assert sorted(table.values()) == list(LETTERS)             # a permutation
    if n_letters > 3:       # (two letters have one derangement only)
        assert len({tuple(t[c] for c in LETTERS) for t in tables}) == 8
    assert all(t.fn("cab") == "".join(tab[c] for c in "cab") for t, tab in zip(tasks, tables))


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
    ("swaps", "swaps:N with N the number of pairs of letters, 1..13"),
    ("swaps:0", "1..13"), ("swaps:14", "1..13"), ("keys:x", "number of tasks, 1..8"),
    ("derangements:1", "2..26"), ("cipher:3", "unknown suite 'cipher:3'; choose one of tinytasks"),
])
def test_a_bad_spec_names_the_value_and_the_choices(spec, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
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
    default = experiments.Settings()
    key = experiments._key("run", default, method="integrated", seed=0, lr=0.003)
    assert "suite" not in key["settings"]        # the stored study's runs are still found
    other = experiments._key("run", experiments.Settings(suite="swaps:9"), method="integrated", seed=0, lr=0.003)
    assert other["settings"]["suite"] == "swaps:9"
    assert experiments._run_file("out", "run", key) != experiments._run_file("out", "run", other)


def test_the_cli_refuses_an_unknown_suite_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'foo:2'"):
        experiments.main(["--suite", "foo:2", "--out", str(tmp_path / "study"), "--no-progress"])
    assert not (tmp_path / "study").exists()


def test_the_cli_refuses_a_budget_the_suite_cannot_split_before_any_run(tmp_path):
    # three tasks: CGC-LoRA's 4 common + 3 specific experts cannot share rank 24
    with pytest.raises(ValueError, match=r"--suite keys:3 has 3 tasks, and cgc_lora cannot split --rank 24"
                                         r".*multiple of 7"):
        experiments.main(["--suite", "keys:3", "--methods", "integrated,cgc_lora",
                          "--out", str(tmp_path / "study"), "--no-progress"])
    assert not (tmp_path / "study").exists()

