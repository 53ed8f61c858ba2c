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
* ``"swaps:PxN"``, ``"derangements:LxN"``: the same with N tasks (1 to 26), e.g.
  ``"derangements:6x20"``: twenty tables one shared LoRA must keep apart. At the study's
  rank 24, twenty is the most tasks CGC-LoRA's budget splits (4 common + 20 specific
  experts of rank 1);
* ``"keys:K"``: K tasks, each mapping every letter through a secret key (a random
  permutation of the alphabet): a full per-letter table per task (at the study's rank 24,
  K is 2, 4, 8 or 20: the budget must split evenly among CGC-LoRA's experts);
* ``"positions"``: eight rearrangements of the letters' positions (reverse, rotations,
  swapping neighbours, evens then odds, doubling each letter).

Every task of a family has the family as its cluster and none is low-data; prompts name the
task (``"swap_a:cab="``) as in the study's main table. Build the data with
``make_tiny_tasks(tasks=suite("swaps:9"))``.

Taught in: notebooks/12_appendix_controls.ipynb.
"""
from __future__ import annotations

import random
import string
from typing import Callable

from .tinytasks import _BY_NAME, TASKS, TaskSpec

LETTERS = string.ascii_lowercase


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

def _letter_maps(prefix: str, family: str, table_of: Callable[[int], dict], n: int) -> list[TaskSpec]:
    """Tasks ``{prefix}_a``, ``{prefix}_b``, ...: task k maps each letter through the k-th
    distinct table of ``table_of(0)``, ``table_of(1)``, ... (a repeated draw would make two
    names for one task)."""
    tables, k = [], 0
    while len(tables) < n:
        table, k = table_of(k), k + 1
        if table not in tables:
            tables.append(table)
    return [TaskSpec(f"{prefix}_{c}", family, _mapper(t)) for c, t in zip(LETTERS, tables)]


def n_derangements(n_letters: int) -> int:
    """How many derangements n letters have (the subfactorial !n: 1, 2, 9, 44, 265, ...)."""
    count = 1                    # !0
    for i in range(1, n_letters + 1):
        count = i * count + (-1) ** i
    return count


def _derangements(n_letters: int, n_tasks: int) -> list[TaskSpec]:
    if n_tasks > n_derangements(n_letters):
        raise ValueError(f"{n_letters} letters have {n_derangements(n_letters)} derangement(s), "
                         f"fewer than {n_tasks} tasks: move more letters or ask for fewer tasks")
    return _letter_maps("perm", "derangements", lambda k: derangement_table(k, n_letters), n_tasks)


#: family -> (its parameter's letter, what it counts, its admissible range, whether ``xN``
#: may set the number of tasks, builder(parameter, number of tasks))
FAMILIES = {
    "swaps": ("P", "pairs of letters", range(1, 14), True,
              lambda p, n: _letter_maps("swap", "swaps", lambda k: swap_table(k, p), n)),
    "derangements": ("L", "letters", range(2, 27), True, _derangements),
    "keys": ("K", "tasks", range(1, 27), False, lambda k, n: _letter_maps("key", "keys", key_table, k)),
}
SPECS = ("tinytasks", "positions", "swaps:P[xN]", "derangements:L[xN]", "keys:K")
N_TASKS = range(1, len(LETTERS) + 1)     # task names end in a .. z


def suite(spec: str = "tinytasks") -> tuple[TaskSpec, ...]:
    """The tasks of the suite named by ``spec`` (see the module's docstring), in task-id order.

    Taught in: notebooks/12_appendix_controls.ipynb.
    """
    if spec == "tinytasks":
        return TASKS
    if spec == "positions":
        return tuple(TaskSpec(name, "positions", fn) for name, fn in POSITIONS)
    family, _, param = str(spec).partition(":")
    if family not in FAMILIES:
        raise ValueError(f"unknown suite {spec!r}; choose one of {', '.join(SPECS)} "
                         "(P, L, K, N integers)")
    letter, what, allowed, counted, build = FAMILIES[family]
    value, x, count = param.partition("x") if counted else (param, "", "")
    if not value.isdigit() or int(value) not in allowed:
        raise ValueError(f"suite {spec!r}: write {family}:{letter}{'[xN]' if counted else ''} with "
                         f"{letter} the number of {what}, {allowed.start}..{allowed.stop - 1}")
    if x and (not count.isdigit() or int(count) not in N_TASKS):
        raise ValueError(f"suite {spec!r}: N, the number of tasks, is {N_TASKS.start}.."
                         f"{N_TASKS.stop - 1} (8 if left out)")
    try:
        return tuple(build(int(value), int(count) if count else 8))
    except ValueError as error:
        raise ValueError(f"suite {spec!r}: {error}") from None
