"""The adapter training loop, greedy evaluation, and transformers.Trainer with task ids."""

import pandas as pd
import pytest
import torch
from transformers import Trainer, TrainingArguments

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data import TinyTasksCollator, build_tokenizer, make_tiny_tasks
from cgc_edu.adapters.injection import adapter_layers
from cgc_edu.models import load_central_model
from cgc_edu.train import loop as train_module
from cgc_edu.train import evaluate, greedy_decode, model_device, train
from cgc_edu.utils import seed_everything

from tiny_models import Seen, spy_on_generate  # tests/tiny_models.py
from tiny_models import tiny_base  # tests/

# "first" and "last" read the same prompt and want different answers: only task ids tell them apart.
TASKS = ["first", "last"]


@pytest.fixture(scope="module")

def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")

def data():
    return make_tiny_tasks(seed=0, tasks=TASKS, n_train=300, n_validation=0, n_test=40)


def _loss(model, rows, tok):
    batch = TinyTasksCollator(tok)(rows)
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow

def test_train_learns_two_conflicting_tasks_and_calls_back(data, tok, capsys):
    seed_everything(0)
    model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=2))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    rows = data["test"].to_list()
    before = _loss(model, rows, tok)
    calls = []
    losses = train(model, data["train"], tok, steps=60, lr=1e-2, batch_size=32, seed=0,
                   callback=lambda step, m: calls.append(step), callback_every=25, progress=False)
    assert calls == [0, 25, 50, 60] and len(losses) == 60
    assert _loss(model, rows, tok) < 0.5 * before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    table = evaluate(model, data["test"], tok)
    assert list(table.index) == TASKS + ["average"] and (table["n"][:-1] == 40).all()
    assert (table.loc[TASKS, "exact_match"] > 0.9).all()
    assert table.loc["average", "exact_match"] == pytest.approx(table.loc[TASKS, "exact_match"].mean())
    assert capsys.readouterr().err == ""  # progress=False prints no bar


@pytest.mark.slow

def test_train_is_deterministic_for_a_seed(data, tok):
    runs = []
    for _ in range(2):
        seed_everything(5)  # the adapters' initialisation
        model = add_adapters(load_central_model(), AdapterConfig.lora(rank=4, alpha=8, n_tasks=2))
        runs.append(train(model, data["train"], tok, steps=3, batch_size=8, seed=5, progress=False))
    # the same losses, step by step (three steps do not always lower the loss: on some
    # training seeds step 3 lands higher; test_train_learns_* checks learning)
    assert runs[0] == pytest.approx(runs[1], rel=1e-5) and len(set(runs[0])) == 3


def test_mixed_batches_decode_like_single_prompts(tok):
    seed_everything(0)
    model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=2))
    for layer in adapter_layers(model).values():  # make the two tasks' adapters differ
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    prompts, ids = ["cab=", "hello=", "xyzzyq=", "ab="], [0, 1, 1, 0]
    batched = greedy_decode(model, tok, prompts, task_ids=ids, max_new_tokens=6, batch_size=3)
    alone = [greedy_decode(model, tok, [p], task_ids=[i], max_new_tokens=6)[0]
             for p, i in zip(prompts, ids)]
    assert batched == alone
    # The answer depends on the routed task: the next-token logits move when the ids swap.
    # (Not the decoded strings: a random adapter changes the tiny model's greedy answer on
    # some training seeds only.)
    batch = tok([p for p in prompts], return_tensors="pt", padding=True)
    with torch.no_grad():
        routed = model(**batch, task_ids=torch.tensor(ids)).logits
        swapped = model(**batch, task_ids=torch.tensor([1 - i for i in ids])).logits
    assert (routed - swapped).abs().amax() > 1e-2 * routed.abs().amax()


@pytest.mark.slow

def test_trainer_routes_task_ids(data, tok, tmp_path):
    seed_everything(0)
    # Three task slots, data for two: the third expert must stay untouched.
    model = add_adapters(load_central_model(), AdapterConfig.independent(rank=6, alpha=12, n_tasks=3))
    rows = data["test"].to_list()
    before = _loss(model, rows, tok)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=32,
                             learning_rate=1e-2, remove_unused_columns=False, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=data["train"],
            data_collator=TinyTasksCollator(tok)).train()
    assert _loss(model, rows, tok) < 0.7 * before
    for layer in adapter_layers(model).values():
        assert layer.lora_B[0].abs().sum() > 0 and layer.lora_B[1].abs().sum() > 0
        assert layer.lora_B[2].abs().sum() == 0  # no sample of task 2: its expert never moved


def test_uniform_task_sampling_gives_every_task_an_equal_share_and_cycles_small_tasks():
    rows = [{"task_id": t} for t in [0] * 100 + [1] * 3 + [2] * 10]
    draw = train_module._uniform_draw(rows, 8, torch.Generator().manual_seed(0))
    batches = [next(draw) for _ in range(30)]
    counts = torch.zeros(30, 3)
    for b, batch in enumerate(batches):
        assert len(batch) == 8
        for i in batch:
            counts[b, rows[i]["task_id"]] += 1
    # 8 = 2 + 2 + 2 and a remainder of 2 that rotates over the tasks: 80 samples each in 30 batches
    assert set(counts.flatten().tolist()) <= {2.0, 3.0} and counts.sum(0).tolist() == [80, 80, 80]
    # a task's rows are reshuffled only when all were used: each row of a small task is
    # drawn equally often, to within one pass
    for task in (1, 2):
        uses = torch.bincount(torch.tensor([i for batch in batches for i in batch
                                            if rows[i]["task_id"] == task]))
        uses = uses[uses > 0]
        assert len(uses) == (3 if task == 1 else 10) and uses.max() - uses.min() <= 1
    again = train_module._uniform_draw(rows, 8, torch.Generator().manual_seed(0))
    assert [next(again) for _ in range(30)] == batches                 # deterministic for a seed


def test_clear_errors(data, tok):
    bare = load_central_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(bare, data["train"], tok, steps=1, progress=False)
    model = add_adapters(load_central_model(), AdapterConfig.lora(rank=4, n_tasks=2))
    with pytest.raises(ValueError, match="steps=0"):
        train(model, data["train"], tok, steps=0, progress=False)
    with pytest.raises(ValueError, match="task_sampling='balanced'.*'uniform'"):
        train(model, data["train"], tok, steps=1, progress=False, task_sampling="balanced")
    with pytest.raises(ValueError, match="empty"):
        train(model, data["train"].select([]), tok, steps=1, progress=False)
    with pytest.raises(KeyError, match="target"):
        evaluate(model, [{"prompt": "ab=", "task_id": 0}], tok)
    assert isinstance(evaluate(model, data["test"].select(range(4)), tok), pd.DataFrame)


@pytest.mark.slow

def test_gate_lr_sets_the_gates_own_step(data, tok):
    seed_everything(0)
    model = add_adapters(load_central_model(),
                         AdapterConfig.moe_lora(rank=4, alpha=8, n_tasks=2, n_experts=2))
    gates = {n: p.clone() for n, p in model.named_parameters() if ".gate." in n}
    assert gates
    train(model, data["train"], tok, steps=3, batch_size=8, gate_lr=0.0, progress=False)
    for n, p in model.named_parameters():
        if n in gates:
            torch.testing.assert_close(p, gates[n])  # frozen by a zero gate step
    assert all(l.lora_B.abs().sum() > 0 for l in adapter_layers(model).values())


class _Seen(Exception):
    """Raised by a spy hook once it has seen the first forward's inputs."""


def _spy_first_forward(model):
    """Record the devices of the first forward's input_ids and task ids, then stop the run."""
    seen = {}

    def hook(module, args, kwargs):
        seen["input_ids"] = kwargs.get("input_ids", args[0] if args else None).device
        routed = module._cgc.router.task_ids  # the call's task ids, taken by add_adapters' hook
        seen["task_ids"] = None if routed is None else routed.device
        raise _Seen

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_batches_follow_the_model_device(data, tok, monkeypatch):
    # "meta" exists on every machine and computes nothing: if train or greedy_decode built
    # a CPU tensor for a meta model, the spy would see "cpu".
    model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=2))
    model.to("meta")
    assert model_device(model) == torch.device("meta")
    seen = _spy_first_forward(model)
    with pytest.raises(_Seen):
        train(model, data["train"], tok, steps=1, batch_size=4, progress=False)
    assert seen == {"input_ids": torch.device("meta"), "task_ids": torch.device("meta")}
    seen = spy_on_generate(monkeypatch, model)
    with pytest.raises(Seen):
        greedy_decode(model, tok, ["cab=", "ab="], task_ids=[0, 1], max_new_tokens=2)
    assert set(seen.values()) == {torch.device("meta")} and len(seen) == 3


def test_model_device_of_a_model_without_parameters_is_cpu():
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

def test_train_and_evaluate_on_cuda_match_cpu(data, tok):
    runs = {}
    for device in ("cpu", "cuda"):
        seed_everything(0)
        model = add_adapters(load_central_model(), AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=2))
        model.to(device)
        losses = train(model, data["train"], tok, steps=20, lr=1e-2, batch_size=16, progress=False)
        table = evaluate(model, data["test"], tok)
        assert all(p.device.type == device for p in model.parameters())
        runs[device] = (losses, table)
    assert runs["cuda"][0] == pytest.approx(runs["cpu"][0], rel=1e-3, abs=1e-3)
    assert (runs["cuda"][1]["exact_match"] - runs["cpu"][1]["exact_match"]).abs().max() <= 0.1


# ------------------------------------------------------------------- the mode

CGC = AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, n_common=2, n_specific=1)


@pytest.mark.parametrize("mode", ["train", "eval"])

def test_train_leaves_the_models_mode_as_it_found_it(mode):
    from cgc_edu.data import build_tokenizer, make_tiny_tasks
    from cgc_edu.train import train

    model = add_adapters(tiny_base(), CGC).train(mode == "train")
    data = make_tiny_tasks(seed=0, tasks=["reverse", "first", "last"], n_train=8,
                           n_low=4, n_validation=0, n_test=0)["train"]
    train(model, data, build_tokenizer(), steps=2, batch_size=4, progress=False)
    assert all(m.training == (mode == "train") for m in model.modules())
