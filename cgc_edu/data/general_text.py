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
"""
from __future__ import annotations

import random
import re

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
