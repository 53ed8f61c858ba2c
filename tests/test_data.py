"""TinyTasks, its tokenizer and its collator."""
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cgc_edu.data import (TASKS, TinyTasksCollator, build_tokenizer, make_tiny_tasks,
                          task_names)

SMALL = dict(n_train=40, n_low=8, n_validation=5, n_test=6)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_splits_columns_and_sizes():
    ds = make_tiny_tasks(seed=0, **SMALL)
    assert set(ds) == {"train", "validation", "test"}
    assert {"prompt", "target", "task", "task_id", "cluster"} <= set(ds["train"].column_names)
    n_low = sum(t.low_data for t in TASKS)
    assert n_low >= 2 and len(TASKS) >= 8 and len({t.cluster for t in TASKS}) >= 2
    assert ds["train"].num_rows == 40 * (len(TASKS) - n_low) + 8 * n_low
    assert ds["validation"].num_rows == 5 * len(TASKS)
    assert ds["test"].num_rows == 6 * len(TASKS)
    # task ids follow task_names(), and the answers are the tasks' functions
    for row in ds["test"]:
        spec = TASKS[row["task_id"]]
        assert spec.name == row["task"] and spec.cluster == row["cluster"]
        assert spec.fn(row["prompt"][:-1]) == row["target"]


def test_known_answers():
    by_name = {t.name: t.fn for t in TASKS}
    assert by_name["reverse"]("cab") == "bac"
    assert by_name["shift"]("azz") == "baa"
    assert by_name["rotate"]("cab") == "abc"
    assert by_name["reverse_tail"]("cabd") == "dba"
    assert by_name["ends"]("cab") == "cb"
    assert by_name["length"]("cabd") == "4"


def test_deterministic_and_seed_dependent():
    a, b, c = (make_tiny_tasks(seed=s, **SMALL) for s in (1, 1, 2))
    assert a["train"].to_list() == b["train"].to_list()
    assert a["train"].to_list() != c["train"].to_list()


def test_no_leakage_between_splits():
    ds = make_tiny_tasks(seed=0, **SMALL)
    seen = {(r["task"], r["prompt"]) for r in ds["train"]}
    assert not seen & {(r["task"], r["prompt"]) for r in ds["test"]}


def test_conflict_same_prompt_different_answers():
    # The default prompt does not name the task: the same word asks for different answers.
    ds = make_tiny_tasks(seed=0, n_validation=0, n_test=0)
    answers = {}
    for r in ds["train"]:
        answers.setdefault(r["prompt"], set()).add(r["target"])
    assert max(len(v) for v in answers.values()) >= 3
    named = make_tiny_tasks(seed=0, name_in_prompt=True, **SMALL)
    assert all(r["prompt"].startswith(r["task"] + ":") for r in named["test"])
    spaced = make_tiny_tasks(seed=0, name_in_prompt=" ", **SMALL)
    assert [r["prompt"] for r in spaced["test"]] == [
        r["prompt"].replace(":", " ") for r in named["test"]]


@pytest.mark.parametrize("value", [":", "yes", 1, None])
def test_a_bad_name_in_prompt_names_the_choices(value):
    with pytest.raises(ValueError, match=r"name_in_prompt=.*use False"):
        make_tiny_tasks(seed=0, name_in_prompt=value, **SMALL)


def test_the_central_model_copies_after_a_space_not_after_a_colon():
    # Why named prompts cost the tasks that build on copying (format_prompt, chapter 07):
    # pretraining put spaces between words, never ":".
    from cgc_edu.data.tinytasks import format_prompt
    from cgc_edu.models.central import load_central_model
    from cgc_edu.train.loop import greedy_decode
    model, tok = load_central_model(), build_tokenizer()
    words = ["yahm", "qda", "loavcf"]
    spaced = greedy_decode(model, tok, [format_prompt(w, "shift", " ") for w in words])
    named = greedy_decode(model, tok, [format_prompt(w, "shift") for w in words])
    assert all(out.startswith(w) for out, w in zip(spaced, words))
    assert not any(out.startswith(w) for out, w in zip(named, words))


def test_task_selection_reindexes():
    ds = make_tiny_tasks(seed=0, tasks=["last", "reverse"], **SMALL)
    ids = {(r["task"], r["task_id"]) for r in ds["train"]}
    assert ids == {("reverse", 0), ("last", 1)}  # global order, ids 0..n-1


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(tasks=["reverse", "nope"]), KeyError, "nope"),
    (dict(tasks=[]), ValueError, "empty"),
    (dict(tasks="reverse"), TypeError, "tasks=['reverse']"),
    (dict(n_train=0), ValueError, "n_train=0"),
    (dict(n_train=30, word_lengths=(1, 1)), ValueError, "distinct words"),
    (dict(word_lengths=(5, 3)), ValueError, r"word_lengths=\(5, 3\)"),
])
def test_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        make_tiny_tasks(**kwargs)


def test_tokenizer_is_fast_char_level_and_round_trips(tok, tmp_path):
    assert isinstance(tok, PreTrainedTokenizerFast) and tok.is_fast
    ids = tok("cab=bac")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len("cab=bac")
    assert tok.decode(ids, skip_special_tokens=True) == "cab=bac"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("cab=bac")["input_ids"] == ids
    assert (again.pad_token_id, again.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert task_names() == [t.name for t in TASKS]


def test_collator_masks_labels_to_target(tok):
    rows = [{"prompt": "cab=", "target": "bac", "task_id": 0, "task": "reverse"},
            {"prompt": "abcdef=", "target": "f", "task_id": 5}]
    batch = TinyTasksCollator(tok)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    torch.testing.assert_close(batch["task_ids"], torch.tensor([0, 5]))
    first = batch["labels"][0]
    kept = first[first != -100].tolist()
    assert tok.decode(kept[:-1]) == "bac" and kept[-1] == tok.eos_token_id
    assert batch["attention_mask"][0].sum() == len("cab=bac") + 2  # bos + eos
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    with pytest.raises(ValueError, match="empty"):
        TinyTasksCollator(tok)([])


def test_collator_batch_is_the_tokenizers_ids_padded_and_repeats_exactly(tok, monkeypatch):
    rows = [{"prompt": "reverse:cab=", "target": "bac", "task_id": 0},
            {"prompt": "z=", "target": "z", "task_id": 1},
            {"prompt": "reverse:cab=", "target": "bac", "task_id": 0}]
    collate = TinyTasksCollator(tok)
    batch = collate(rows)
    for i, r in enumerate(rows):    # what the tokenizer says, row by row
        p = tok(r["prompt"])["input_ids"]
        t = tok(r["target"], add_special_tokens=False)["input_ids"]
        s = p + t + [tok.eos_token_id]
        width = batch["input_ids"].shape[1]
        assert batch["input_ids"][i].tolist() == s + [tok.pad_token_id] * (width - len(s))
        assert batch["labels"][i].tolist() == [-100] * len(p) + s[len(p):] + [-100] * (width - len(s))
        assert batch["attention_mask"][i].tolist() == [1] * len(s) + [0] * (width - len(s))
    # the second time no string is tokenized again, and the batch is the same
    class Remembered:   # the ids a collator needs, and no tokenizing
        eos_token_id, pad_token_id = tok.eos_token_id, tok.pad_token_id

        def __call__(self, *args, **kwargs):
            raise AssertionError("a string was tokenized twice")

    monkeypatch.setattr(collate, "tokenizer", Remembered())
    again = collate(rows[::-1])
    for k in batch:
        assert torch.equal(again[k], batch[k].flip(0)), k
    collate.CACHE_SIZE = 1          # a full cache starts afresh instead of growing
    monkeypatch.setattr(collate, "tokenizer", tok)
    collate([{"prompt": "ab=", "target": "ba", "task_id": 0}])
    assert len(collate._ids) <= 2


def test_collator_starting_its_cache_afresh_keeps_the_batchs_cached_strings(tok):
    """A batch that mixes strings the cache holds with new ones that overflow it: the cache
    starts afresh with the whole batch (it once kept only the new strings and failed with a
    KeyError on the others, 2400 steps into a 26-task run)."""
    seen = [{"prompt": "reverse:cab=", "target": "bac", "task_id": 0}]
    mixed = seen + [{"prompt": "first:xyz=", "target": "x", "task_id": 1}]
    collate = TinyTasksCollator(tok)
    collate(seen)
    collate.CACHE_SIZE = 3      # the new prompt fills it, the new target overflows it
    batch, fresh = collate(mixed), TinyTasksCollator(tok)(mixed)
    for k in fresh:
        assert torch.equal(batch[k], fresh[k]), k
    assert len(collate._ids) <= 3


def test_collator_builds_on_the_requested_device(tok):
    rows = [{"prompt": "cab=", "target": "bac", "task_id": 0}]
    on_cpu = TinyTasksCollator(tok)(rows)
    assert all(v.device == torch.device("cpu") for v in on_cpu.values())
    on_meta = TinyTasksCollator(tok, device="meta")(rows)
    assert set(on_meta) == set(on_cpu)
    assert all(v.device == torch.device("meta") and v.shape == on_cpu[k].shape
               for k, v in on_meta.items())


def test_collator_needs_pad_and_eos_tokens(tmp_path):
    no_pad = build_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token.*pad_token = tokenizer.eos_token"):
        TinyTasksCollator(no_pad)
