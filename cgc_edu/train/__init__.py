"""Training and evaluation: the loop and exact-match evaluation (`loop`), fine-tuning your own
model and data from the command line (`finetune`, ``python -m cgc_edu.train.finetune``) and
data-parallel training (`distributed`).

Taught in: notebooks/04_moe_lora.ipynb.
"""
from .loop import Recipe, evaluate, greedy_decode, model_device, score_items, train

__all__ = ["Recipe", "evaluate", "greedy_decode", "model_device", "score_items", "train"]
from .forgetting import text_loss

__all__ += ["text_loss"]
