"""The MMoE paper's synthetic two-task regression generator."""
import math

import numpy as np
import pytest
import torch

from cgc_edu.data.synthetic import make_correlated_tasks


def label_correlation(y):
    return float(np.corrcoef(y.T.numpy())[0, 1])


def test_shapes_dtype_and_determinism():
    x, y = make_correlated_tasks(50, 0.3, in_features=7, seed=4)
    assert x.shape == (50, 7) and y.shape == (50, 2) and x.dtype == y.dtype == torch.float32
    x2, y2 = make_correlated_tasks(50, 0.3, in_features=7, seed=4)
    torch.testing.assert_close(x, x2)
    torch.testing.assert_close(y, y2)
    assert not torch.allclose(y, make_correlated_tasks(50, 0.3, in_features=7, seed=5)[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_correlation_tracks_requested_correlation(seed):
    requested = [-0.9, -0.5, 0.0, 0.5, 0.9, 1.0]
    measured = [label_correlation(make_correlated_tasks(20_000, p, in_features=20, seed=seed)[1])
                for p in requested]
    for p, r in zip(requested, measured):
        assert r == pytest.approx(p, abs=0.12), (p, r)
    assert measured == sorted(measured)  # monotone in the requested correlation


def test_shape_seed_changes_only_the_nonlinearity():
    x0, y0 = make_correlated_tasks(100, 0.5, in_features=5, seed=0, shape_seed=0)
    x1, y1 = make_correlated_tasks(100, 0.5, in_features=5, seed=0, shape_seed=1)
    torch.testing.assert_close(x0, x1)
    assert not torch.allclose(y0, y1)


def test_identical_tasks_differ_only_by_noise():
    _, y = make_correlated_tasks(1000, 1.0, noise_std=0.1, seed=0)
    residual_std = (y[:, 0] - y[:, 1]).std().item()
    assert residual_std == pytest.approx(0.1 * math.sqrt(2), rel=0.1)


@pytest.mark.parametrize("bad", [1.01, -1.5, float("nan"), float("inf"), "0.5"])
def test_correlation_outside_range_is_rejected(bad):
    with pytest.raises(ValueError, match="correlation="):
        make_correlated_tasks(10, bad)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="in_features=1"):
        make_correlated_tasks(10, 0.5, in_features=1)
    with pytest.raises(ValueError, match="n_samples=0"):
        make_correlated_tasks(0, 0.5)
