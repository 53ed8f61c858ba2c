"""The router that reads the request (`framework.task_router`): a linear probe on the frozen
central model's hidden state names the task of a prompt, or no task."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from cgc_edu import AdapterConfig, add_adapters
from cgc_edu.data import build_tokenizer, make_tiny_tasks
from cgc_edu.framework.task_router import NO_TASK, TaskClassifier, prompt_features
from cgc_edu.models import load_central_model

TOK = build_tokenizer()


@pytest.fixture(scope="module")
def base():
    return load_central_model()


def _tasks(seed, named=True, n=10):
    return make_tiny_tasks(seed=seed, n_train=n, n_low=n, n_validation=0, n_test=25,
                           name_in_prompt=named)


def _general(seed):
    """Requests that name no task: TinyTasks prompts without an instruction ("cab=")."""
    return make_tiny_tasks(seed=seed + 100, n_train=5, n_low=5, n_validation=0, n_test=5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_router_reads_the_instruction_on_held_out_prompts(base, seed):
    data, general = _tasks(seed), _general(seed)
    router = TaskClassifier().fit(base, TOK, data["train"]["prompt"], data["train"]["task"],
                                  general=general["train"]["prompt"])
    assert router.classes[-1] is None and len(router.classes) == 9
    prompts = list(data["test"]["prompt"]) + list(general["test"]["prompt"])
    truth = list(data["test"]["task"]) + [None] * len(general["test"])
    # chance is 8/9 wrong; 0.0-1.5% of these are (10 training prompts a task, seeds 0-2)
    assert router.error_rate(prompts, truth) < 0.15
    table = router.confusion(prompts, truth)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == list(table.index) == router.classes[:-1] + [NO_TASK]
    counts = table.to_numpy()
    assert counts.sum() == len(prompts)
    assert counts.trace() == round((1 - router.error_rate(prompts, truth)) * len(prompts))
    assert table.loc[NO_TASK, NO_TASK] >= 0.8 * len(general["test"])
    routed = router.predict(list(general["test"]["prompt"]) + ["reverse:abc="])
    assert routed[-1] == "reverse" and all(t is None or isinstance(t, str) for t in routed)
    sure = router.probabilities(prompts)                 # the softmax that predict reads
    assert list(sure.columns) == list(table.columns) and len(sure) == len(prompts)
    np.testing.assert_allclose(sure.sum(axis=1), 1.0, rtol=1e-5)
    top = [None if c == NO_TASK else c for c in sure.idxmax(axis=1)]
    assert top == router.predict(prompts)


def test_without_the_instruction_the_router_is_at_chance(base):
    """The prompts of every task are alike when the task is not named: nothing to read."""
    data = _tasks(0, named=False)
    router = TaskClassifier().fit(base, TOK, data["train"]["prompt"], data["train"]["task"])
    assert router.error_rate(data["test"]["prompt"], data["test"]["task"]) > 0.7   # chance 0.875


def test_the_router_is_deterministic(base):
    data = _tasks(0, n=4)
    fits = [TaskClassifier().fit(base, TOK, data["train"]["prompt"], data["train"]["task"])
            for _ in range(2)]
    assert torch.equal(fits[0].weight, fits[1].weight)
    assert fits[0].predict(data["test"]["prompt"]) == fits[1].predict(data["test"]["prompt"])


def test_features_ignore_padding_and_the_adapters(base):
    prompts = ["reverse:abcdef=", "first:ab=", "cab="]
    together = prompt_features(base, TOK, prompts)
    alone = torch.cat([prompt_features(base, TOK, [p]) for p in prompts])
    left = copy.deepcopy(TOK)
    left.padding_side = "left"
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(prompt_features(base, left, prompts), alone, atol=1e-5)
    adapted = add_adapters(copy.deepcopy(base), AdapterConfig.cgc_lora(n_tasks=2))  # needs task ids
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2, generator=draw)
    adapted.train()
    assert torch.allclose(prompt_features(adapted, TOK, prompts), together, atol=1e-5)
    assert adapted.training   # its mode kept


def test_the_router_errors(base):
    data = _tasks(0, n=3)
    prompts, tasks = list(data["train"]["prompt"]), list(data["train"]["task"])
    with pytest.raises(ValueError, match="prompts but .* tasks"):
        TaskClassifier().fit(base, TOK, prompts, tasks[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        TaskClassifier().fit(base, TOK, ["reverse:ab=", "reverse:cd="], ["reverse", "reverse"])
    with pytest.raises(ValueError, match="not fitted"):
        TaskClassifier().predict(["reverse:ab="])
    router = TaskClassifier().fit(base, TOK, ["reverse:ab="], ["reverse"], general=["ab="])
    assert router.classes == ["reverse", None]
    with pytest.raises(ValueError, match="prompts but .* tasks"):
        router.error_rate(["ab="], [None, None])
    assert router.predict([]) == []
    with pytest.raises(TypeError, match="not one string"):
        TaskClassifier().fit(base, TOK, ["reverse:ab="], ["reverse"], general="ab=")
