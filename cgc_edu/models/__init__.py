"""The central models, the "1" of 1+N: the tiny Llama shipped with the package (`central`) and
the deterministic recipe that pretrained it (`pretraining`, ``python -m
cgc_edu.models.pretraining``).

Taught in: notebooks/00_tour.ipynb.
"""
from .central import ASSETS_DIR, central_config, load_central_model

__all__ = ["ASSETS_DIR", "central_config", "load_central_model"]
