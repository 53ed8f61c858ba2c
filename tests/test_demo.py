"""The README's main job runs end to end and its checks hold."""
import pytest

from cgc_edu.course import demo


@pytest.mark.slow
def test_demo_runs_and_its_checks_hold(capsys):
    result = demo.main(["--steps", "20"])
    out = capsys.readouterr().out
    assert "gate weights of model.layers.0.self_attn.q_proj" in out
    assert result["merged_error"] < 1e-4 and result["reload_error"] == 0.0
    assert 0.0 <= result["accuracy"] <= 1.0
