"""Chapter 09's exercises: what a method trains on the central model, a CSV loaded as the
JSONL was, and a real model sized without its weights.

Taught in: notebooks/09_your_model.ipynb.
"""
from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ...adapters.injection import adapter_layers, add_adapters
from ...models.central import load_central_model
from ...train.finetune import method_config
from .checks import ChapterChecks, close, exercise


class Checks(ChapterChecks):
    """The self-checks of chapter 09: ``Checks().ex2(answer, train_data)`` prints right /
    not yet and why, and returns True or False.

    Taught in: notebooks/09_your_model.ipynb.
    """

    chapter = "09"

    @exercise
    def ex1(answer):
        """How many numbers does method_config("cgc_lora", n_tasks=2, rank=8, alpha=16) train on
        the central model? Add up adapter_parameter_count (from cgc_edu.adapters.config) over
        every adapted projection (its d_in and d_out): the experts' E r_e (d_in + d_out) plus
        the learned gate's (T + E) d_g, before you let the model count them."""
        model = add_adapters(load_central_model(), method_config("cgc_lora", n_tasks=2, rank=8,
                                                                 alpha=16))
        want = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if close(answer, want, 0.5):
            return True, (f"{want:,}: experts r_e (d_in + d_out) each, plus the gates, on "
                          f"{len(adapter_layers(model))} projections.")
        return False, (f"sum adapter_parameter_count(config, layer.in_features, "
                       f"layer.out_features)['total'] over adapter_layers(model): {want:,}, not "
                       f"{answer!r}.")

    @exercise
    def ex2(answer, train_data):
        """Write the training rows as a CSV with columns question, answer and kind, and load
        it with load_task_data(..., prompt_column="question", target_column="answer",
        task_column="kind"). Pass what you loaded: check.ex2(from_csv, train_data)."""
        keys = ("prompt", "target", "task")
        try:
            got = [list(answer[k]) for k in keys]
        except (KeyError, TypeError) as err:
            return False, (f"pass the dataset load_task_data returned (columns {keys}); "
                           f"reading it failed: {err}.")
        want = [list(train_data[k]) for k in keys]
        for k, g, w in zip(keys, got, want):
            if g != w:
                first = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
                return False, (f"column {k!r} differs from the JSONL's at row {first} "
                               f"({len(g)} rows loaded, {len(w)} expected).")
        return True, f"the same {len(want[0])} rows, in the same order, from the CSV."

    @exercise
    def ex3(answer):
        """Size Qwen2.5-0.5B (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 key-value
        heads, vocabulary 151,936, tied embeddings) on the meta device: how many parameters, in
        millions?"""
        with torch.device("meta"):
            qwen = Qwen2ForCausalLM(Qwen2Config(
                vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                tie_word_embeddings=True))
        want = sum(p.numel() for p in qwen.parameters()) / 1e6
        if close(answer, want, 1.0):
            return True, f"{want:.0f} M parameters ({2 * want * 1e6 / 2 ** 30:.2f} GiB in bf16)."
        return False, (f"build Qwen2ForCausalLM(Qwen2Config(...)) under torch.device('meta') "
                       f"and count: {want:.0f} M, not {answer!r}. Tied embeddings count once.")
