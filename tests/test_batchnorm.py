"""BatchNorm1d/2d: gradients (finite differences), PyTorch parity in train and eval mode over
several steps (outputs, gradients, running statistics), buffers in the state dict, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import batchnorm_cases, normal, seeds

import tinynet
import tinynet.functional as F
import tinynet.nn as nn


def _input(case, seed):
    x = normal(seed, case.shape) * 2.0 + 0.5
    if case.constant_channel is not None:
        x[:, case.constant_channel] = 1.25  # variance 0: xhat = 0, no NaN
    return x


def _module(ndim, c, affine=True, **kw):
    cls = nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d
    m = cls(c, affine=affine, dtype="float64", **kw)
    if affine:  # non-trivial gamma and beta
        m.weight.data[...] = np.linspace(0.5, 1.5, c)
        m.bias.data[...] = np.linspace(-0.3, 0.3, c)
    return m


@given(case=batchnorm_cases(ndim=4), seed=seeds, affine=st.booleans())
def test_batchnorm2d_gradcheck_train(case, seed, affine):
    m = _module(4, case.channels, affine)
    assert tinynet.gradcheck(m, _input(case, seed), atol=1e-5, rtol=1e-4)


@given(case=st.one_of(batchnorm_cases(ndim=2), batchnorm_cases(ndim=3)), seed=seeds)
def test_batchnorm1d_gradcheck_train(case, seed):
    m = _module(len(case.shape), case.channels)
    assert tinynet.gradcheck(m, _input(case, seed), atol=1e-5, rtol=1e-4)


@given(case=batchnorm_cases(ndim=4), seed=seeds)
def test_batchnorm2d_gradcheck_eval(case, seed):
    m = _module(4, case.channels)
    m.running_mean[...] = np.linspace(-1, 1, case.channels)
    m.running_var[...] = np.linspace(0.5, 2, case.channels)
    m.eval()
    assert tinynet.gradcheck(m, _input(case, seed))


def test_functional_pair_gradcheck_all_inputs():
    x, g, b = normal(0, (3, 2, 4, 3)), normal(1, (2,)), normal(2, (2,))
    assert tinynet.gradcheck((F.batchnorm_forward, F.batchnorm_backward), [x, g, b])


def test_constant_channel_gives_finite_output_and_gradients(device):
    x = np.ones((4, 2, 3, 3), dtype=np.float32)
    x[:, 1] = np.arange(36, dtype=np.float32).reshape(4, 3, 3)
    m = nn.BatchNorm2d(2, device=device)
    y = m(tinynet.to_device(x, device))
    dx = m.backward(tinynet.to_device(np.ones_like(x), device))
    y, dx = tinynet.to_numpy(y), tinynet.to_numpy(dx)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_array_equal(y[:, 0], 0.0)  # xhat = 0 on the constant channel, beta = 0
    assert m.weight.grad.dtype == np.float32 and y.dtype == np.float32


def test_one_value_per_channel_raises_in_training_like_pytorch():
    m = nn.BatchNorm2d(3)
    before = m.running_mean.copy()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(np.zeros((1, 3, 1, 1), dtype=np.float32))
    np.testing.assert_array_equal(m.running_mean, before)
    assert int(m.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), dtype=np.float32))
    m.eval()  # evaluation uses the running statistics: fine
    assert m(np.zeros((1, 3, 1, 1), dtype=np.float32)).shape == (1, 3, 1, 1)
    # batch of 1 with more than one pixel: fine in training too
    assert nn.BatchNorm2d(3)(np.ones((1, 3, 2, 1), dtype=np.float32)).shape == (1, 3, 2, 1)


def test_shape_and_channel_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\).*\(N, C, H, W\)"):
        nn.BatchNorm2d(3)(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\).*expected 4 channels"):
        nn.BatchNorm1d(4)(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="eps"):
        nn.BatchNorm2d(3, eps=0)


def test_state_dict_keys_buffers_and_dtypes():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    sd = m.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                        "1.running_var", "1.num_batches_tracked"]
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].ndim == 0
    # buffers are not parameters: the optimizer never sees them
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    m(np.random.default_rng(0).standard_normal((4, 1, 5, 5)).astype(np.float32))
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).load_state_dict(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    assert int(other[1].num_batches_tracked) == 1
    m.double()  # floats cast, the counter stays an integer
    assert m[1].running_var.dtype == np.float64 and m[1].num_batches_tracked.dtype == np.int64
    # without running statistics there is nothing to save (as in PyTorch)
    assert list(nn.BatchNorm1d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]


def test_no_affine_and_no_tracking():
    x = normal(3, (5, 3, 2, 2))
    m = nn.BatchNorm2d(3, affine=False, track_running_stats=False, dtype="float64").eval()
    y = m(x)  # eval without running statistics: the batch's own statistics
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    assert list(m.parameters()) == []


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [2, 4])
def test_eval_without_grad_takes_the_short_path_and_agrees(ndim, affine):
    """Under no_grad, eval mode computes y = x * scale + shift without writing x - mean; the
    result must equal the path that keeps a cache, and the running-statistics formula."""
    shape = (6, 3, 4, 5) if ndim == 4 else (6, 3)
    m = _module(ndim, 3, affine=affine)
    for seed in range(3):  # a few training steps give non-trivial running statistics
        m(normal(seed, shape) * 3.0 + 1.0)
    m.eval()
    x = normal(9, shape)
    with_cache = m(x).copy()
    with tinynet.no_grad():
        short = m(x)
    view = (1, 3) + (1,) * (ndim - 2)
    gamma = m.weight.data.reshape(view) if affine else 1.0
    beta = m.bias.data.reshape(view) if affine else 0.0
    expected = (x - m.running_mean.reshape(view)) / np.sqrt(m.running_var.reshape(view) + m.eps)
    np.testing.assert_allclose(short, with_cache, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(short, expected * gamma + beta, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# PyTorch parity: several training steps, then eval
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim, momentum", [(4, 0.1), (2, 0.3), (3, None)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_pytorch_over_several_steps(ndim, momentum, dtype):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    rng = np.random.default_rng(7)
    c = 3
    shape = {4: (4, c, 5, 6), 2: (8, c), 3: (3, c, 7)}[ndim]
    ours = (nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d)(c, momentum=momentum, dtype=dtype)
    ref = (torch.nn.BatchNorm2d if ndim == 4 else torch.nn.BatchNorm1d)(c, momentum=momentum)
    ref = ref.to(tdt)
    ours.weight.data[...] = rng.uniform(0.5, 1.5, c)
    ours.bias.data[...] = rng.uniform(-1, 1, c)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for step in range(4):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        ref.zero_grad()
        yt = ref(xt)
        yt.backward(torch.from_numpy(g))
        ours.zero_grad()
        y = ours(x)
        dx = ours.backward(g)
        assert y.dtype == dx.dtype == np.dtype(dtype)
        np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
        np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.bias.grad, ref.bias.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), **tol)
        np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), **tol)  # unbiased
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    ours.eval()
    ref.eval()
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), **tol)
    assert int(ours.num_batches_tracked) == 4  # eval does not count


def test_running_var_is_unbiased_by_hand():
    x = np.array([[1.0], [3.0]])  # one feature, two samples: mean 2, biased var 1, unbiased 2
    m = nn.BatchNorm1d(1, momentum=1.0, dtype="float64")
    y = m(x)
    np.testing.assert_allclose(y[:, 0], [-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)])
    assert float(m.running_mean[0]) == 2.0 and float(m.running_var[0]) == 2.0


def test_runs_on_every_device(device):
    x = tinynet.to_device(normal(4, (3, 2, 4, 4)).astype(np.float32), device)
    m = nn.BatchNorm2d(2, device=device)
    y = m(x)
    dx = m.backward(y)
    assert tinynet.backend.device_of(dx) == device == tinynet.backend.device_of(m.running_var)
