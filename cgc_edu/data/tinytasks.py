"""TinyTasks: a generated multi-task instruction suite, its tokenizer and its collator.

Every task reads a short string of letters and writes an answer. The prompt is the same
for every task ("cab=") unless ``name_in_prompt=True`` ("reverse:cab="): by default the
model cannot read which task it is asked, so the only signal is the task id that the
adapters route on. That makes the conflict between tasks as strong as it can be (one input,
several right answers), which is exactly what a single shared LoRA cannot resolve and a
task-gated mixture can. Set ``name_in_prompt=True`` to see how far reading the instruction
alone gets a shared adapter.

Two clusters:

* ``transform`` (the answer rearranges or maps the input's letters): reverse, shift (+1
  per letter, z wraps to a), rotate (first letter to the end) and the low-data
  ``reverse_tail`` (reverse all but the first letter: reverse's skill, stopping early).
* ``extract`` (a short answer about the input): first letter, last letter, length, and
  the low-data ``ends`` (first letter then last letter).

Within a cluster tasks share sub-skills (reverse_tail is reverse stopped one letter early;
ends is first then last); across clusters the same input wants a different answer
(reverse of "cab" is "bac", its last letter is "b"). The low-data tasks get 50 examples
against 2000 (1/40): too few to learn alone, enough to steer what their cluster learned.

Taught in: notebooks/00_tour.ipynb.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

import torch
from datasets import Dataset, DatasetDict
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Characters the tokenizer knows: letters, digits and a little punctuation (task names
# use "_", prompts use ":" and "=", the pretraining corpus uses the rest).
CHARACTERS = string.ascii_lowercase + string.digits + " =:_|>,.+-?!"

LETTERS = string.ascii_lowercase


def _shift(s: str, k: int = 1) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in s)


@dataclass(frozen=True)
class TaskSpec:
    """One TinyTasks task: its name, cluster, answer function and whether it is low-data.
    """

    name: str
    cluster: str
    fn: Callable[[str], str]
    low_data: bool = False


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("reverse", "transform", lambda s: s[::-1]),
    TaskSpec("shift", "transform", _shift),
    TaskSpec("rotate", "transform", lambda s: s[1:] + s[0]),
    TaskSpec("reverse_tail", "transform", lambda s: s[1:][::-1], low_data=True),
    TaskSpec("first", "extract", lambda s: s[0]),
    TaskSpec("last", "extract", lambda s: s[-1]),
    TaskSpec("length", "extract", lambda s: str(len(s))),
    TaskSpec("ends", "extract", lambda s: s[0] + s[-1], low_data=True),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
_BY_NAME = {t.name: t for t in TASKS}


def task_names() -> list[str]:
    """The names of all TinyTasks tasks, in task-id order.

    Taught in: notebooks/00_tour.ipynb.
    """
    return list(TASK_NAMES)


#: How a prompt shows its task: not at all, its name and ":", or its name and a space.
#: ("anonymous" is ``name_in_prompt=False``, "named" ``True``, "spaced" ``" "``.)
NAME_SEPARATORS = {False: None, True: ":", " ": " "}
#: The same three settings by name (the study's and the fair map's vocabulary).
PROMPT_SETTINGS = {"anonymous": False, "named": True, "spaced": " "}


def format_prompt(word: str, task: str | None = None, separator: str = ":") -> str:
    """The prompt for ``word``: ``"cab="``, or ``"reverse:cab="`` when a task is named
    (``"reverse cab="`` with ``separator=" "``).

    The central model was pretrained with spaces between words and never with ":" (see
    `cgc_edu.models.pretraining`): it copies the word of ``"reverse cab="`` and not that of
    ``"reverse:cab="``, which chapter 07 shows costs the tasks built on copying.
    """
    return f"{task}{separator}{word}=" if task else f"{word}="


def _separator(name_in_prompt) -> str | None:
    """The separator ``name_in_prompt`` asks for (None: no name), checked."""
    for key, sep in NAME_SEPARATORS.items():
        if name_in_prompt is key or (isinstance(key, str) and name_in_prompt == key):
            return sep
    raise ValueError(f"name_in_prompt={name_in_prompt!r}; use False (no task name), True "
                     "(\"reverse:cab=\") or \" \" (\"reverse cab=\").")


def _check_tasks(tasks) -> list[TaskSpec]:
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}; "
                        f"write tasks=[{tasks!r}]")
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"tasks is empty: select at least one of {list(TASK_NAMES)}")
    if any(isinstance(t, TaskSpec) for t in tasks):   # a suite of its own (cgc_edu.data.suites)
        if not all(isinstance(t, TaskSpec) for t in tasks):
            raise TypeError(f"tasks mixes TaskSpec objects and names: {tasks}; give names of "
                            "TinyTasks tasks, or TaskSpec objects only")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks names a task twice: {names}; give each task a name of its own")
        return tasks   # their order is the task ids
    unknown = [t for t in tasks if t not in _BY_NAME]
    if unknown:
        raise KeyError(f"unknown task name(s) {unknown}; known tasks are {list(TASK_NAMES)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks lists a task twice: {tasks}; give each task once")
    # Keep the global order, so a task's id never depends on the selection's order.
    return [t for t in TASKS if t.name in tasks]


_SPLITS = ("train", "validation", "test")
_COLUMNS = ("prompt", "target", "task", "task_id", "cluster", "low_data")


def make_tiny_tasks(
    seed: int = 0,
    n_train: int = 2000,
    n_low: int = 50,
    n_validation: int = 100,
    n_test: int = 200,
    tasks=None,
    word_lengths: tuple[int, int] = (3, 6),
    name_in_prompt: bool | str = False,
) -> DatasetDict:
    """Generate TinyTasks as a DatasetDict with train / validation / test splits.

    Columns: ``prompt`` (e.g. "cab="), ``target`` (e.g. "bac"), ``task`` (name),
    ``task_id`` (index in :data:`TASK_NAMES` restricted to the selection, in that order; or,
    when ``tasks`` are `TaskSpec` objects, such as a suite of `cgc_edu.data.suites`, their index),
    ``cluster``, ``low_data``. ``n_train`` examples per ordinary task, ``n_low`` per low-data
    task (the tasks that should borrow from their cluster), ``n_validation`` / ``n_test``
    per task; words of ``word_lengths`` = (shortest, longest) letters. Words are distinct
    across splits within a task (no leakage), and the same seed always gives the same data.
    ``name_in_prompt``: False, True (the name and ":" precede the word) or " " (the name and
    a space), see `format_prompt`.

    Taught in: notebooks/00_tour.ipynb.
    """
    specs = _check_tasks(tasks)
    separator = _separator(name_in_prompt)
    _check_sizes(n_train, n_low, n_validation, n_test, word_lengths)
    rng = random.Random(seed)
    rows = {split: [] for split in _SPLITS}
    for task_id, spec in enumerate(specs):
        split_sizes = {"train": n_low if spec.low_data else n_train,
                       "validation": n_validation, "test": n_test}
        words = _draw_words(rng, split_sizes, word_lengths)
        for split, split_words in words.items():
            rows[split] += [{"prompt": format_prompt(word, spec.name, separator) if separator
                             else format_prompt(word),
                             "target": spec.fn(word), "task": spec.name, "task_id": task_id,
                             "cluster": spec.cluster, "low_data": spec.low_data}
                            for word in split_words]
    out = {}
    for split, split_rows in rows.items():
        rng.shuffle(split_rows)  # mixed-task order
        out[split] = Dataset.from_list(split_rows) if split_rows else Dataset.from_dict(
            {k: [] for k in _COLUMNS})
    return DatasetDict(out)


def _check_sizes(n_train: int, n_low: int, n_validation: int, n_test: int,
                 word_lengths: tuple[int, int]) -> None:
    """Raise a clear error unless the sizes are ints of the right sign and enough distinct
    words of ``word_lengths`` exist for one task's three splits."""
    if not (isinstance(word_lengths, (tuple, list)) and len(word_lengths) == 2):
        raise TypeError(f"word_lengths must be a pair (shortest, longest), got {word_lengths!r}")
    min_len, max_len = word_lengths
    for name, value in [("n_train", n_train), ("n_low", n_low), ("n_validation", n_validation),
                        ("n_test", n_test), ("word_lengths[0]", min_len), ("word_lengths[1]", max_len)]:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if min(n_train, n_low) < 1 or min(n_validation, n_test) < 0:
        raise ValueError(f"sizes must be positive (n_train={n_train}, n_low={n_low}) and "
                         f"non-negative (n_validation={n_validation}, n_test={n_test})")
    if not 1 <= min_len <= max_len <= 9:
        raise ValueError(f"need 1 <= shortest <= longest <= 9 (the length task answers one "
                         f"digit), got word_lengths=({min_len}, {max_len})")
    n_words = sum(26 ** n for n in range(min_len, max_len + 1))
    need = max(n_train, n_low) + n_validation + n_test
    if need > n_words:
        raise ValueError(f"asked for {need} distinct words per task but only {n_words} words "
                         f"of length {min_len}..{max_len} exist; lower the sizes or raise "
                         "the longest of word_lengths")


def _draw_words(rng: random.Random, sizes: dict[str, int],
                word_lengths: tuple[int, int]) -> dict[str, list[str]]:
    """One task's words, split by split in ``sizes``' order, distinct across its splits."""
    words: set[str] = set()
    out = {}
    for split, size in sizes.items():
        out[split] = []
        for _ in range(size):
            while True:  # rejection keeps words unique within a task (no split leakage)
                n = rng.randint(*word_lengths)
                word = "".join(rng.choice(LETTERS) for _ in range(n))
                if word not in words:
                    words.add(word)
                    break
            out[split].append(word)
    return out


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer, built locally with the ``tokenizers`` library.

    Each character is one token (a WordLevel model over single characters), ``<bos>`` is
    prepended by the post-processor, decoding fuses characters back without spaces. Save
    it with ``tok.save_pretrained(dir)`` and reload it with
    ``AutoTokenizer.from_pretrained(dir)``.

    Taught in: notebooks/00_tour.ipynb
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="right", model_max_length=64)


class TinyTasksCollator:
    """Turn TinyTasks rows into a training batch: prompt + target + eos, loss on the target.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on the prompt and on
    padding, so the loss is the answer's alone) and ``task_ids`` (for the adapters' gates).
    Extra columns are ignored, so it works with ``transformers.Trainer`` and
    ``remove_unused_columns=False``. The tensors are built on ``device`` (a model's device;
    ``None`` keeps them on the CPU, which is what ``Trainer`` wants: it moves them itself).
    The tokenizer needs a pad token; padding is found by position, not by id, so the
    pad token may be the eos token.

    Taught in: notebooks/06_one_plus_n.ipynb.
    """

    CACHE_SIZE = 100_000   # token ids kept for this many strings at most

    def __init__(self, tokenizer: PreTrainedTokenizerFast, device=None):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                f"TinyTasksCollator: the tokenizer {type(tokenizer).__name__} has no "
                f"{'pad' if tokenizer.pad_token_id is None else 'eos'} token; set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token")
        self.tokenizer = tokenizer
        self.device = None if device is None else torch.device(device)
        # A training run collates the same rows again and again: each string is tokenized
        # once (its ids do not change), which saves a few percent of a small model's step.
        self._ids: dict[tuple[str, bool], list[int]] = {}

    def _encode(self, texts: list[str], special: bool) -> list[list[int]]:
        unique = dict.fromkeys(texts)
        new = [t for t in unique if (t, special) not in self._ids]
        if new:
            if len(self._ids) + len(new) > self.CACHE_SIZE:   # a large corpus: start afresh
                self._ids.clear()
                new = list(unique)   # with this batch's texts the cache held until now
            for text, ids in zip(new, self.tokenizer(new, add_special_tokens=special)["input_ids"]):
                self._ids[(text, special)] = ids
        return [self._ids[(t, special)] for t in texts]

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        tok = self.tokenizer
        prompts = self._encode([f["prompt"] for f in features], True)
        targets = self._encode([f["target"] for f in features], False)
        seqs = [p + t + [tok.eos_token_id] for p, t in zip(prompts, targets)]
        width = max(map(len, seqs))
        pad = [tok.pad_token_id] * width
        input_ids = torch.tensor([s + pad[len(s):] for s in seqs], dtype=torch.long)
        labels = torch.tensor([[-100] * len(p) + s[len(p):] + [-100] * (width - len(s))
                               for p, s in zip(prompts, seqs)], dtype=torch.long)
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs],
                                      dtype=torch.long)
        task_ids = torch.tensor([int(f["task_id"]) for f in features], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "labels": labels, "task_ids": task_ids}
        if self.device is not None:
            batch = {k: v.to(self.device) for k, v in batch.items()}
        return batch
