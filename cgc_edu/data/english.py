"""English instruction tasks for a real central model, and a probe of its general skills.

TinyTasks speaks in letter strings to a tiny Llama; these tasks speak English to
SmolLM2-135M-Instruct (`cgc_edu.models.smollm2`). Two clusters share a skill inside and
conflict across: the *letters* cluster rewrites the word it is given, letter by letter
(``spell``: "c-a-t", ``reverse``: "tac", ``upper``: "CAT"); the *forms* cluster answers
with another word (``plural``: "mice", ``past``: "went", ``opposite``: "cold"), so the same
word asks for an answer of another kind in each. ``opposite`` and ``upper`` are low-data
tasks (24 training rows) that should borrow from their cluster. Everything is generated
offline from the small tables below, deterministically from a seed.

`GENERAL_PROBE` holds questions outside every task that the bare SmolLM2-135M-Instruct
answers right through its chat template (each checked by the tests):
`cgc_edu.train.forgetting.general_probe` scores a model on them the same way before and after fine-tuning, to see whether the "1"
of 1+N keeps its general skills.

Taught in: notebooks/10_real_model.ipynb
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pandas as pd
from datasets import Dataset, DatasetDict

# Nouns and their plurals: regular, -es, -ies, -ves and irregular ones.
PLURALS = dict(pair.split(":") for pair in """
cat:cats dog:dogs book:books tree:trees house:houses car:cars apple:apples bird:birds
chair:chairs table:tables shoe:shoes river:rivers horse:horses girl:girls friend:friends
window:windows cup:cups hat:hats pen:pens star:stars door:doors wall:walls egg:eggs
bed:beds ship:ships road:roads toy:toys day:days key:keys boy:boys box:boxes bus:buses
fox:foxes church:churches glass:glasses dish:dishes wish:wishes watch:watches
potato:potatoes tomato:tomatoes hero:heroes city:cities baby:babies party:parties
story:stories lady:ladies leaf:leaves knife:knives wolf:wolves life:lives wife:wives
half:halves shelf:shelves mouse:mice child:children foot:feet tooth:teeth man:men
woman:women goose:geese person:people ox:oxen sheep:sheep fish:fish deer:deer
""".split())

# Verbs and their past tenses: regular (with the spelling rules) and irregular ones.
PAST = dict(pair.split(":") for pair in """
walk:walked jump:jumped play:played talk:talked cook:cooked open:opened call:called
help:helped ask:asked love:loved move:moved live:lived stop:stopped plan:planned cry:cried
try:tried carry:carried go:went see:saw eat:ate run:ran take:took give:gave come:came
make:made write:wrote sing:sang drink:drank swim:swam begin:began break:broke
choose:chose drive:drove fly:flew forget:forgot get:got grow:grew know:knew leave:left
lose:lost meet:met pay:paid ride:rode say:said sell:sold send:sent sit:sat sleep:slept
speak:spoke stand:stood steal:stole teach:taught tell:told think:thought throw:threw
wear:wore win:won buy:bought bring:brought catch:caught feel:felt find:found hold:held
keep:kept build:built
""".split())

# Adjectives and their opposites (a low-data task: few pairs exist).
OPPOSITES = dict(pair.split(":") for pair in """
hot:cold big:small tall:short fast:slow happy:sad old:young hard:soft wet:dry full:empty
rich:poor early:late strong:weak loud:quiet clean:dirty thick:thin high:low easy:difficult
good:bad true:false near:far cheap:expensive safe:dangerous sweet:sour wide:narrow
deep:shallow first:last inside:outside left:right light:dark open:closed long:short
""".split())

#: The words the letters cluster rewrites: every word of the tables above, once.
WORDS = tuple(sorted({w for table in (PLURALS, PAST, OPPOSITES) for w in table}))


@dataclass(frozen=True)
class EnglishTask:
    """One task: its name, cluster, instruction (``{word}`` is filled in), the words it
    reads and the answer to each, and whether it is a low-data task."""

    name: str
    cluster: str
    instruction: str
    words: Sequence[str]
    answer: Callable[[str], str]
    low_data: bool = False


def _letters(word: str) -> str:
    return "-".join(word)


ENGLISH_TASKS: tuple[EnglishTask, ...] = (
    EnglishTask("spell", "letters", 'Spell the word "{word}" letter by letter.', WORDS, _letters),
    EnglishTask("reverse", "letters", 'Write the word "{word}" backwards.', WORDS,
                lambda w: w[::-1]),
    EnglishTask("upper", "letters", 'Write the word "{word}" in capital letters.', WORDS,
                str.upper, low_data=True),
    EnglishTask("plural", "forms", 'What is the plural of "{word}"?', tuple(PLURALS),
                PLURALS.__getitem__),
    EnglishTask("past", "forms", 'What is the past tense of "{word}"?', tuple(PAST),
                PAST.__getitem__),
    EnglishTask("opposite", "forms", 'What is the opposite of "{word}"?', tuple(OPPOSITES),
                OPPOSITES.__getitem__, low_data=True),
)
ENGLISH_TASK_NAMES = tuple(t.name for t in ENGLISH_TASKS)


def english_clusters() -> dict[str, list[str]]:
    """The clusters and their tasks, in task order: 1+N's grouping when it is known.

    Taught in: notebooks/10_real_model.ipynb
    """
    clusters: dict[str, list[str]] = {}
    for task in ENGLISH_TASKS:
        clusters.setdefault(task.cluster, []).append(task.name)
    return clusters


def make_english_tasks(seed: int = 0, n_test: int = 12, n_low: int = 24,
                       tasks: Optional[Sequence[str]] = None) -> DatasetDict:
    """The English suite as a DatasetDict with ``train`` and ``test`` splits.

    Columns as TinyTasks': ``prompt`` (the instruction), ``target`` (the answer alone),
    ``task``, ``task_id`` (the task's index in ``tasks``, default `ENGLISH_TASK_NAMES`),
    ``cluster``, ``low_data``. Per task, ``n_test`` words are held out (never trained on);
    every other word trains, except that a low-data task keeps only ``n_low``. The same seed
    gives the same data; the prompts are raw (wrap them with
    `cgc_edu.train.finetune.chat_format` for an instruct model).

    Taught in: notebooks/10_real_model.ipynb
    """
    names = list(tasks) if tasks is not None else list(ENGLISH_TASK_NAMES)
    by_name = {t.name: t for t in ENGLISH_TASKS}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"make_english_tasks: tasks={names!r}; choose distinct names from "
                         f"{list(ENGLISH_TASK_NAMES)}")
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for task_id, name in enumerate(names):
        task = by_name[name]
        words = list(task.words)
        if n_test < 1 or n_test >= len(words):
            raise ValueError(f"make_english_tasks: n_test={n_test} for {name!r}, which has "
                             f"{len(words)} words; hold out between 1 and {len(words) - 1}")
        random.Random(f"{seed}:{name}").shuffle(words)
        test, train = words[:n_test], words[n_test:]
        if task.low_data:
            train = train[:n_low]
        for split, chosen in (("train", train), ("test", test)):
            splits[split] += [{"prompt": task.instruction.format(word=w), "target": task.answer(w),
                               "task": name, "task_id": task_id, "cluster": task.cluster,
                               "low_data": task.low_data} for w in chosen]
    return DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})


#: Questions outside every task, each with the pattern a right answer contains (a word,
#: case ignored). The bare SmolLM2-135M-Instruct answers each right (tests/test_smollm2.py).
GENERAL_PROBE: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Germany?", "berlin"),
    ("What is the capital of the United Kingdom?", "london"),
    ("What color is the sky on a clear day?", "blue"),
    ("How many days are in a week?", "seven|7"),
    ("What is 2 + 2?", "four|4"),
    ("What is the largest ocean on Earth?", "pacific"),
    ("What gas do plants take in from the air?", "carbon dioxide|co2"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What language is spoken in Brazil?", "portuguese"),
    ("What is the chemical symbol for gold?", "au"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("In which country are the pyramids of Giza?", "egypt"),
)


def probe_prompts(tokenizer, system: Optional[str] = None) -> list[str]:
    """`GENERAL_PROBE`'s questions rendered with the tokenizer's chat template."""
    head = [] if system is None else [{"role": "system", "content": system}]
    return [tokenizer.apply_chat_template(head + [{"role": "user", "content": q}],
                                          tokenize=False, add_generation_prompt=True)
            for q, _ in GENERAL_PROBE]


def score_probe(answers: Sequence[str]) -> pd.DataFrame:
    """One row per probe question: the answer and whether it holds the right word."""
    if len(answers) != len(GENERAL_PROBE):
        raise ValueError(f"score_probe: {len(answers)} answers for {len(GENERAL_PROBE)} "
                         "questions; answer every question of GENERAL_PROBE, in order")
    return pd.DataFrame([{"question": q, "answer": a,
                          "right": re.search(rf"\b({pattern})\b", a.lower()) is not None}
                         for (q, pattern), a in zip(GENERAL_PROBE, answers)])

