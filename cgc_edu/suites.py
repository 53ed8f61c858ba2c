"""Other task suites for the study: where might one shared LoRA lose to a LoRA per task?

TinyTasks (`cgc_edu.data.TASKS`) is the course's suite. The seesaw (the integrated model
below the multiple independent models on some task) does not show on it, so the study can
run on other families of tasks, each built to make sharing harder than on TinyTasks. A suite
is named by a spec string, the study's ``--suite``:

* ``"tinytasks"``: the course's suite (the default);
* ``"swaps:P"``: eight tasks, each swapping P pairs of letters and copying the rest; a
  different set of pairs per task (fixed: the same for every seed). Near the copying the
  central model can do, yet each task its own per-letter table;
* ``"derangements:L"``: eight tasks, each moving every one of the *same* L letters
  (``a``, ``b``, ...) to another of them (a different derangement per task) and copying the
  rest: on those letters every task contradicts every other;
* ``"keys:K"``: K tasks, each mapping every letter through a secret key (a random
  permutation of the alphabet): a full per-letter table per task (at the study's rank 24,
  K is 2, 4 or 8: the budget must split evenly among CGC-LoRA's experts);
* ``"positions"``: eight rearrangements of the letters' positions (reverse, rotations,
  swapping neighbours, evens then odds, doubling each letter).

Every task of a family has the family as its cluster and none is low-data; prompts name the
task (``"swap_a:cab="``) as in the study's main table. Build the data with
``make_tiny_tasks(tasks=suite("swaps:9"))``.

Taught in: notebooks/07_experiments.ipynb.
"""
from __future__ import annotations

import random
import string
from typing import Callable

from .data import _BY_NAME, TASKS, TaskSpec

LETTERS = string.ascii_lowercase
NAMES = "abcdefgh"        # task names: swap_a .. swap_h


def _mapper(table: dict[str, str]) -> Callable[[str], str]:
    return lambda s: "".join(table[c] for c in s)


def swap_table(k: int, n_pairs: int) -> dict[str, str]:
    """Task k of ``swaps:n_pairs``: n_pairs disjoint pairs of letters swapped, the rest kept."""
    letters = list(LETTERS)
    random.Random(100 + k).shuffle(letters)
    table = {c: c for c in LETTERS}
    for i in range(n_pairs):
        a, b = letters[2 * i], letters[2 * i + 1]
        table[a], table[b] = b, a
    return table


def derangement_table(k: int, n_letters: int) -> dict[str, str]:
    """Task k of ``derangements:n_letters``: the first n_letters letters, none left in place."""
    rng, pool = random.Random(200 + k), list(LETTERS[:n_letters])
    while True:
        perm = pool[:]
        rng.shuffle(perm)
        if all(a != b for a, b in zip(pool, perm)):
            break
    return {**{c: c for c in LETTERS}, **dict(zip(pool, perm))}


def key_table(k: int) -> dict[str, str]:
    """Task k of ``keys:K``: a random permutation of the whole alphabet."""
    letters = list(LETTERS)
    random.Random(k).shuffle(letters)
    return dict(zip(LETTERS, letters))


def _swap_neighbours(s: str) -> str:
    return "".join(s[i + 1] + s[i] for i in range(0, len(s) - 1, 2)) + (s[-1] if len(s) % 2 else "")


POSITIONS = (("reverse", _BY_NAME["reverse"].fn), ("rotate", _BY_NAME["rotate"].fn),   # TinyTasks' own
             ("rotate_right", lambda s: s[-1] + s[:-1]), ("rotate2", lambda s: s[2:] + s[:2]),
             ("pairswap", _swap_neighbours), ("evens_odds", lambda s: s[::2] + s[1::2]),
             ("double", lambda s: "".join(c * 2 for c in s)), ("odds_evens", lambda s: s[1::2] + s[::2]))

def _letter_maps(prefix: str, family: str, table_of: Callable[[int], dict], n: int = 8) -> list[TaskSpec]:
    """Tasks ``{prefix}_a``, ``{prefix}_b``, ...: task k maps each letter through ``table_of(k)``."""
    return [TaskSpec(f"{prefix}_{c}", family, _mapper(table_of(k))) for k, c in enumerate(NAMES[:n])]


#: family -> (what its parameter is, its admissible range, builder)
FAMILIES = {
    "swaps": ("pairs of letters", range(1, 14),
              lambda p: _letter_maps("swap", "swaps", lambda k: swap_table(k, p))),
    "derangements": ("letters", range(2, 27),
                     lambda n: _letter_maps("perm", "derangements", lambda k: derangement_table(k, n))),
    "keys": ("tasks", range(1, 9), lambda n: _letter_maps("key", "keys", key_table, n)),
}
SPECS = ("tinytasks", "positions", *(f"{name}:N" for name in FAMILIES))


def suite(spec: str = "tinytasks") -> tuple[TaskSpec, ...]:
    """The tasks of the suite named by ``spec`` (see the module's docstring), in task-id order.

    Taught in: notebooks/07_experiments.ipynb.
    """
    if spec == "tinytasks":
        return TASKS
    if spec == "positions":
        return tuple(TaskSpec(name, "positions", fn) for name, fn in POSITIONS)
    family, _, param = str(spec).partition(":")
    if family not in FAMILIES:
        raise ValueError(f"unknown suite {spec!r}; choose one of {', '.join(SPECS)} (N an integer)")
    what, allowed, build = FAMILIES[family]
    if not param.isdigit() or int(param) not in allowed:
        raise ValueError(f"suite {spec!r}: write {family}:N with N the number of {what}, "
                         f"{allowed.start}..{allowed.stop - 1}")
    return tuple(build(int(param)))
