"""Held-out general English text that ships with Python itself, for measuring forgetting.

Fine-tuning may make a model worse at everything it was not tuned for; peft's method
comparison measures this as the rise of the loss on general text ("forgetting"). The text
must be outside every task and not written by us: `general_text` reads it from Python's own
documentation, the ``pydoc_data.topics`` dict (topic name -> text) that every CPython
ships for ``help()``. It keeps plain prose paragraphs of bounded length and leaves out
code: indented blocks (examples, grammar rules), ``>>>`` sessions, headings, lists, version
notes and paragraphs where quoted code outweighs words.

The same Python gives the same text; another Python version ships other documentation, so
record ``sys.version`` beside a stored loss. `cgc_edu.train.forgetting.text_loss` scores a
model on these chunks.

`general_questions` gives short general requests of another kind: chat questions built from
tables Python ships (its calendar, its HTML entities, its keywords, its punctuation) and small
sums, squares and halves, none of them a question of `cgc_edu.data.english.GENERAL_PROBE`. A
task router needs them as its "no task" class: trained on long passages only, it reads any
short question as a task request, and short questions of the form "What is the X of Y?" look
like the lexicon's task prompts ("Comparative of big:").
"""
from __future__ import annotations

import calendar
import keyword
import random
import re
import string
from html.entities import codepoint2name

from pydoc_data.topics import topics

#: Where the text comes from (for a study's records).
SOURCE = "pydoc_data.topics (the Python documentation shipped with CPython)"
#: A paragraph is prose when letters and spaces make at least this share of its characters.
PROSE_SHARE = 0.85
_VERSION_NOTE = re.compile(r"^(Added|Changed|Deprecated|New) in version")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")


def _is_prose(text: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in text)
    return (text[:1].isupper() and text.endswith(".") and not _VERSION_NOTE.match(text)
            and letters >= PROSE_SHARE * len(text))


def prose_paragraphs(min_chars: int = 80, max_chars: int = 500) -> list[str]:
    """Every prose paragraph of the documentation, each once, in topic order, unwrapped to
    one line, between ``min_chars`` and ``max_chars`` characters long."""
    if not 1 <= min_chars <= max_chars:
        raise ValueError(f"prose_paragraphs: min_chars={min_chars}, max_chars={max_chars}; "
                         "need 1 <= min_chars <= max_chars, e.g. 80 and 500")
    found: dict[str, None] = {}   # an ordered set: a paragraph repeated in two topics counts once
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.strip("\n").split("\n")
            if any(line.startswith((" ", "\t", ">>>")) for line in lines):
                continue   # an indented block is code, grammar or a list; >>> is a session
            text = " ".join(_FOOTNOTE.sub("", " ".join(lines)).split())
            if min_chars <= len(text) <= max_chars and _is_prose(text):
                found[text] = None
    return list(found)


def general_text(n_chunks: int = 64, seed: int = 0, min_chars: int = 80,
                 max_chars: int = 500) -> list[str]:
    """``n_chunks`` distinct prose paragraphs of Python's documentation, drawn by ``seed``.

    Each chunk is one paragraph (`prose_paragraphs`), so chunks never overlap; the same seed
    (on the same Python) always gives the same chunks, in the same order. Raises a
    ValueError when ``n_chunks`` is not between 1 and the number of paragraphs there are.
    """
    pool = prose_paragraphs(min_chars, max_chars)
    whole = isinstance(n_chunks, int) and not isinstance(n_chunks, bool)
    if not whole or not 1 <= n_chunks <= len(pool):
        raise ValueError(f"general_text: n_chunks={n_chunks!r}; the documentation holds "
                         f"{len(pool)} prose paragraphs of {min_chars}-{max_chars} characters: "
                         f"ask for 1 to {len(pool)} (or widen min_chars / max_chars)")
    return random.Random(seed).sample(pool, n_chunks)


def _question_families() -> dict[str, list[str]]:
    """The short general questions `general_questions` draws from, by kind, each sorted."""
    months, days = list(calendar.month_name)[1:], list(calendar.day_name)
    families = {
        "calendar": [f"What month comes after {m}?" for m in months]
        + [f"What day of the week comes before {d}?" for d in days]
        + [f"How many days does {m} have in a leap year?" for m in months],
        "entities": [f"Which character does the HTML entity &{name}; stand for?"
                     for name in codepoint2name.values()],
        "keywords": [f"What does the Python keyword '{k}' do?" for k in keyword.kwlist],
        "sums": [f"What is {a} + {b}?" for a in range(3, 40, 3) for b in range(5, 40, 4)]
        + [f"What is {a} times {b}?" for a in range(3, 13) for b in range(3, 13, 2)],
        "of": [f"What is the square of {n}?" for n in range(2, 41)]
        + [f"What is half of {n}?" for n in range(4, 201, 2)]
        + [f"What is the Unicode name of the character '{c}'?" for c in string.punctuation],
    }
    return {kind: sorted(set(questions)) for kind, questions in families.items()}


def general_questions(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` distinct short general questions drawn by ``seed`` (none from the probe).

    Each is a request that names no task: the months and week days of `calendar`, the
    entities of `html.entities`, Python's keywords, small sums, and questions of the form
    "What is the X of Y?" (squares, halves, the names of punctuation), taken in turn from each
    kind (so no kind crowds out the others). The same seed always gives the same questions
    in the same order. Raises a ValueError when ``n`` is not between 1 and the size of the
    pool.
    """
    families = _question_families()
    size = sum(map(len, families.values()))
    whole = isinstance(n, int) and not isinstance(n, bool)
    if not whole or not 1 <= n <= size:
        raise ValueError(f"general_questions: n={n!r}; there are {size} questions: "
                         f"ask for 1 to {size}")
    rng = random.Random(seed)
    queues = [rng.sample(questions, len(questions)) for questions in families.values()]
    turns = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return turns[:n]
