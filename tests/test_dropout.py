"""Dropout: inverted scaling, identity in eval, reproducibility from tinynet.manual_seed, the
backward pass (= the same mask), the drop rate measured statistically, p validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import normal, seeds

import tinynet
import tinynet.functional as F
import tinynet.nn as nn


@given(seed=seeds, p=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
       shape=st.sampled_from([(3, 4), (2, 3, 2, 2), (5,)]))
def test_gradcheck_with_a_fixed_mask(seed, p, shape):
    """Reseeding before every forward gives the same mask each time, so L is differentiable."""
    x = normal(seed, shape)

    def forward(x):
        tinynet.manual_seed(seed)
        return F.dropout_forward(x, p)

    assert tinynet.gradcheck((forward, F.dropout_backward), [x])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_rate_scaling_and_backward(p):
    tinynet.manual_seed(0)
    m = nn.Dropout(p)
    x = np.ones((200, 500), dtype=np.float32)
    y = m(x)
    kept = y != 0
    n = kept.size
    # the kept fraction is Binomial(n, 1-p)/n: 5 standard deviations of slack
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)  # inverted dropout
    assert abs(float(y.mean()) - 1.0) < 5 * np.sqrt(p / (1 - p) / n)  # E[y] = x
    assert y.dtype == np.float32
    g = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(m.backward(g), g * y)  # dx = dy * mask (x = 1: y IS the mask)


def test_eval_mode_and_p0_are_the_identity():
    x = normal(0, (4, 5)).astype(np.float32)
    m = nn.Dropout(0.5).eval()
    assert m(x) is x
    np.testing.assert_array_equal(m.backward(x), x)
    assert nn.Dropout(0.0)(x) is x


def test_p1_drops_everything_without_dividing_by_zero():
    x = normal(0, (4, 5))
    m = nn.Dropout(1.0)
    with np.errstate(all="raise"):
        y = m(x)
        dx = m.backward(np.ones_like(x))
    assert (y == 0).all() and (dx == 0).all()


def test_reproducible_from_manual_seed_and_fresh_each_call(device):
    x = tinynet.to_device(np.ones((8, 16), dtype=np.float32), device)
    tinynet.manual_seed(3)
    a = tinynet.to_numpy(nn.Dropout(0.5)(x))
    b = tinynet.to_numpy(nn.Dropout(0.5)(x))
    tinynet.manual_seed(3)
    np.testing.assert_array_equal(tinynet.to_numpy(nn.Dropout(0.5)(x)), a)
    assert (a != b).any()  # a new mask every batch


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_invalid_p(p):
    with pytest.raises(ValueError, match="Dropout: p"):
        nn.Dropout(p)
