"""CGC-LoRA with task ids trained by transformers.Trainer on two processes (torchrun, gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_processes_end_with_the_same_adapters_and_a_lower_loss(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "cgc_edu.train.distributed", "--output-dir", str(tmp_path), "--steps", "30"]
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    logs = [json.loads((tmp_path / f"rank{r}" / "losses.json").read_text()) for r in (0, 1)]
    assert [(log["rank"], log["world_size"], log["steps"]) for log in logs] == [(0, 2, 30), (1, 2, 30)]
    losses = logs[0]["losses"]
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]  # logged every 3 steps

    weights = [load_file(str(tmp_path / f"rank{r}" / "adapters.safetensors")) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and any("lora_B" in k for k in weights[0])
    for key, value in weights[0].items():
        # Each rank read its own half of the data; averaged gradients keep them in step.
        assert torch.equal(value, weights[1][key]), key
    assert all(weights[0][k].abs().sum() > 0 for k in weights[0] if "lora_B" in k)  # they trained
