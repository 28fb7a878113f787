"""AvgPool2d and AdaptiveAvgPool2d: shapes, gradients (finite differences), PyTorch parity,
small cases by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import adaptive_pool_cases, avgpool_configs, normal, seeds

import tinynet
import tinynet.functional as F
import tinynet.nn as nn


def _avgpool(cfg):
    if cfg.stride is None:
        return nn.AvgPool2d(cfg.kernel, padding=cfg.padding)
    return nn.AvgPool2d(cfg.kernel, stride=cfg.stride, padding=cfg.padding)


@given(cfg=avgpool_configs(), seed=seeds)
def test_avgpool_shape_and_gradcheck(cfg, seed):
    x = normal(seed, cfg.x_shape)
    m = _avgpool(cfg)
    assert m(x).shape == cfg.y_shape
    assert tinynet.gradcheck(m, x)


@given(case=adaptive_pool_cases(), seed=seeds)
def test_adaptive_avgpool_shape_and_gradcheck(case, seed):
    shape, out = case
    x = normal(seed, shape)
    m = nn.AdaptiveAvgPool2d(out)
    assert m(x).shape == shape[:2] + out
    assert tinynet.gradcheck(m, x)


@given(cfg=avgpool_configs(), seed=seeds)
def test_avgpool_matches_pytorch(cfg, seed):
    torch = pytest.importorskip("torch")
    x = normal(seed, cfg.x_shape)
    g = normal(seed + 1, cfg.y_shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.avg_pool2d(xt, cfg.kernel, cfg.stride, cfg.padding)
    yt.backward(torch.from_numpy(g))
    y, cache = F.avgpool2d_forward(x, cfg.kernel, cfg.stride, cfg.padding)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.avgpool2d_backward(g, cache), xt.grad.numpy(), rtol=1e-12,
                               atol=1e-12)


@given(case=adaptive_pool_cases(), seed=seeds)
def test_adaptive_avgpool_matches_pytorch(case, seed):
    torch = pytest.importorskip("torch")
    shape, out = case
    x = normal(seed, shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
    g = normal(seed + 1, tuple(yt.shape))
    yt.backward(torch.from_numpy(g))
    m = nn.AdaptiveAvgPool2d(out)
    np.testing.assert_allclose(m(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_small_cases_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(nn.AvgPool2d(2)(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding counts as zeros: corner window of a 3x3 pool with padding 1 over ones = 4/9
    y = nn.AvgPool2d(3, stride=1, padding=1)(np.ones((1, 1, 3, 3), dtype=np.float32))
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9],
                                         [4 / 9, 6 / 9, 4 / 9]], rtol=1e-6)
    gap = nn.AdaptiveAvgPool2d(1)
    assert gap(x).shape == (1, 1, 1, 1) and float(gap(x)[0, 0, 0, 0]) == 7.5
    np.testing.assert_array_equal(gap.backward(np.ones((1, 1, 1, 1), np.float32)),
                                  np.full((1, 1, 4, 4), 1 / 16, np.float32))
    assert nn.AdaptiveAvgPool2d((1, 1))(x).shape == (1, 1, 1, 1)
    assert gap(x).dtype == np.float32 and nn.AvgPool2d(2)(x).dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="at most half"):
        nn.AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match="smaller than the output size"):
        nn.AdaptiveAvgPool2d(5)(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        nn.AvgPool2d(2)(np.zeros((4, 4), np.float32))


def test_runs_on_every_device(device):
    x = tinynet.to_device(normal(0, (2, 3, 6, 6)).astype(np.float32), device)
    for m in (nn.AvgPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((4, 5))):
        y = m(x)
        dx = m.backward(y)
        assert tinynet.backend.device_of(dx) == device and dx.shape == x.shape
