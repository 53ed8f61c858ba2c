"""Forgetting: held-out general text from Python's documentation (`data.general_text`) and a
model's loss on it (`train.forgetting.text_loss`), on the tiny central model."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F

from cgc_edu import AdapterConfig, add_adapters, disable_adapters
from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.data.english import GENERAL_PROBE
from cgc_edu.data.general_text import general_questions, general_text, prose_paragraphs
from cgc_edu.models import load_central_model
from cgc_edu.models.pretraining import corpus_line
from cgc_edu.train import train
from cgc_edu.train.forgetting import text_loss

TOK = build_tokenizer()


@pytest.fixture(scope="module")
def base():
    return load_central_model()


@pytest.fixture(scope="module")
def texts():
    # the tiny model reads lowercase characters only (others are <unk>)
    return [t.lower() for t in general_text(12, seed=0)]


# ------------------------------------------------------------ general_text
def test_general_text_is_deterministic_distinct_prose():
    chunks = general_text(40, seed=3)
    assert chunks == general_text(40, seed=3)
    assert chunks != general_text(40, seed=4)
    assert len(chunks) == 40 and len(set(chunks)) == 40
    for chunk in chunks:
        assert 80 <= len(chunk) <= 500 and "\n" not in chunk
        assert not chunk.lstrip().startswith(">>>") and chunk[0].isupper() and chunk.endswith(".")
        assert sum(c.isalpha() or c == " " for c in chunk) >= 0.85 * len(chunk)
    for a in chunks:       # disjoint: no chunk holds another
        assert not any(a != b and a in b for b in chunks)


def test_general_text_bounds_and_errors():
    pool = prose_paragraphs()
    assert len(pool) >= 100 and len(pool) == len(set(pool))
    assert sorted(general_text(len(pool), seed=0)) == sorted(pool)
    short = general_text(10, seed=0, min_chars=40, max_chars=120)
    assert all(40 <= len(c) <= 120 for c in short)
    for bad in (0, len(pool) + 1, 2.5):
        with pytest.raises(ValueError, match="n_chunks"):
            general_text(bad)
    with pytest.raises(ValueError, match="min_chars"):
        general_text(5, min_chars=300, max_chars=100)


# ------------------------------------------------------- general_questions
def test_general_questions_are_short_distinct_and_outside_the_probe():
    questions = general_questions(80, seed=1)
    assert questions == general_questions(80, seed=1) and questions != general_questions(80, seed=2)
    assert len(set(questions)) == 80
    assert all(q.endswith("?") and len(q) <= 80 for q in questions)
    # taken in turn from each kind: the first ten hold two calendar questions of five kinds
    calendar = [q.startswith(("What month", "What day", "How many days")) for q in questions[:10]]
    assert calendar.count(True) == 2, questions[:10]


def test_general_questions_pool_and_errors():
    with pytest.raises(ValueError, match="ask for 1 to") as error:
        general_questions(10**6)
    size = int(str(error.value).split("there are ")[1].split()[0])
    pool = general_questions(size, seed=0)
    assert len(set(pool)) == size > 300
    assert not {q.lower() for q, _ in GENERAL_PROBE} & {q.lower() for q in pool}
    assert sorted(pool) == sorted(general_questions(size, seed=5))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n="):
            general_questions(bad)


# --------------------------------------------------------------- text_loss
def _by_hand(model, texts, max_length):
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:   # one text at a time: no padding at all
            ids = TOK(text, return_tensors="pt", truncation=True,
                      max_length=max_length)["input_ids"]
            logits = model(input_ids=ids).logits
            total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


@pytest.mark.parametrize("max_length", [64, 12])
def test_text_loss_is_the_mean_token_cross_entropy(base, texts, max_length):
    pair = [texts[0], texts[1][:len(texts[0]) // 2]]   # two lengths: the short one is padded
    got = text_loss(base, TOK, pair, batch_size=2, max_length=max_length)
    assert got == pytest.approx(_by_hand(base, pair, max_length), rel=1e-5)
    # a token-weighted mean: the batching does not change it
    assert text_loss(base, TOK, texts, batch_size=1, max_length=max_length) == pytest.approx(
        text_loss(base, TOK, texts, batch_size=5, max_length=max_length), rel=1e-5)


def test_text_loss_keeps_the_model_mode(base, texts):
    for training in (True, False):
        base.train(training)
        text_loss(base, TOK, texts[:2], max_length=32)
        assert base.training is training
    base.eval()


def test_text_loss_rises_after_training_an_adapter_with_a_large_rate(base, texts):
    rng = random.Random(7)
    corpus = [corpus_line(rng) for _ in range(48)]   # the tiny model's own general text
    model = add_adapters(copy.deepcopy(base), AdapterConfig.lora(rank=4, alpha=8, n_tasks=8))
    losses = lambda: {"docs": text_loss(model, TOK, texts, max_length=64),  # noqa: E731
                      "corpus": text_loss(model, TOK, corpus)}
    before = losses()
    assert before["docs"] == pytest.approx(text_loss(base, TOK, texts, max_length=64), rel=1e-6)
    data = make_tiny_tasks(seed=0, n_train=64, n_low=16, n_validation=0, n_test=0)
    train(model, data["train"], TOK, steps=20, lr=0.05, batch_size=16, progress=False)
    after = losses()
    assert after["corpus"] > before["corpus"] + 0.3       # forgetting (1.7 -> 4.3-4.7 nats here)
    assert abs(after["docs"] - before["docs"]) > 1e-3     # the docs are foreign to it: they move
    with disable_adapters(model):                         # the base itself is untouched
        assert text_loss(model, TOK, corpus) == pytest.approx(before["corpus"], rel=1e-6)


def test_text_loss_routes_a_model_that_needs_task_ids(base, texts):
    model = add_adapters(copy.deepcopy(base), AdapterConfig.cgc_lora(n_tasks=2))
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():   # adapters that change the answer (B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2, generator=draw)
    zero, one = (text_loss(model, TOK, texts[:4], task_id=t, max_length=48) for t in (0, 1))
    assert zero != pytest.approx(one, rel=1e-6)       # each task its own adapter
    with pytest.raises(ValueError, match="task_ids missing"):
        text_loss(model, TOK, texts[:4], max_length=48)
    with disable_adapters(model):
        assert text_loss(model, TOK, texts[:4], max_length=48) == pytest.approx(
            text_loss(base, TOK, texts[:4], max_length=48), rel=1e-6)


def test_text_loss_errors(base, texts):
    with pytest.raises(ValueError, match="task_id=0"):
        text_loss(base, TOK, texts[:2], task_id=0)
    with pytest.raises(ValueError, match="texts is empty"):
        text_loss(base, TOK, [])
    with pytest.raises(ValueError, match="nothing is predicted"):
        text_loss(base, TOK, ["", ""])
    no_pad = copy.deepcopy(TOK)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        text_loss(base, no_pad, texts[:2])
