"""The fast engine's BatchNorm in threads, and ``tinynet.fuse``'s
Conv2d+BatchNorm2d(+ReLU(+MaxPool2d)) group (the BatchNorm folded into the convolution in
evaluation), each against the reference / the plain model.

Every test runs on 1 thread and on 3 threads with blocks as small as one image, so that block
boundaries fall inside the small drawn shapes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import batchnorm_cases, conv_configs

import tinynet
import tinynet.functional as R
from tinynet import nn
from tinynet.fast import batchnorm, threads
from tinynet.fast.fuse import ConvBN


@pytest.fixture(autouse=True, scope="module", params=["1 thread", "3 threads"])
def threads_mode(request):
    saved = tinynet.get_num_threads(), threads.MIN_BLOCK_NUMBERS
    if request.param.startswith("3"):
        tinynet.set_num_threads(3)
        threads.MIN_BLOCK_NUMBERS = 1  # blocks as small as one image
    else:
        tinynet.set_num_threads(1)
    yield request.param
    tinynet.set_num_threads(saved[0])
    threads.MIN_BLOCK_NUMBERS = saved[1]


@settings(max_examples=40, deadline=None)
@given(case=batchnorm_cases(ndim=4, max_batch=7), seed=st.integers(0, 2**16),
       training=st.booleans(), affine=st.booleans(), grad=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_threaded_batchnorm_equals_the_reference(case, seed, training, affine, grad, dtype):
    """Forward (training: batch statistics and running averages; evaluation with and without
    grad) and backward, in threads, equal the reference kernel."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(case.shape) * 3 + 1).astype(dtype)
    if case.constant_channel is not None:
        x[:, case.constant_channel] = 2.5  # a constant channel: variance 0
    c = x.shape[1]
    gamma, beta = ((rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype))
                   if affine else (None, None))
    stats = [rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)]
    fast_stats, ref_stats = [a.copy() for a in stats], [a.copy() for a in stats]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    with contextlib.nullcontext() if grad or training else tinynet.no_grad():
        y, cache = batchnorm.batchnorm_forward(x, gamma, beta, *fast_stats, training=training)
        ry, rcache = R.batchnorm_forward(x, gamma, beta, *ref_stats, training=training)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ry, **tol)
    for a, b in zip(fast_stats, ref_stats, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    if cache is None:
        assert not (grad or training)
        return
    dy = rng.standard_normal(x.shape).astype(dtype)
    for got, want in zip(batchnorm.batchnorm_backward(dy, cache),
                         R.batchnorm_backward(dy, rcache), strict=True):
        if want is None:
            assert got is None
        else:
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **tol)


def _bn_model(cfg, seed, tail):
    tinynet.manual_seed(seed)
    conv = nn.Conv2d(cfg.c_in, cfg.c_out, cfg.kernel, cfg.stride, cfg.padding, bias=cfg.bias,
                     dtype=tinynet.float64)
    bn = nn.BatchNorm2d(cfg.c_out, dtype=tinynet.float64)
    rng = np.random.default_rng(seed)
    bn.weight.data[...] = rng.standard_normal(cfg.c_out)
    bn.bias.data[...] = rng.standard_normal(cfg.c_out)
    bn.running_mean[...] = rng.standard_normal(cfg.c_out)
    bn.running_var[...] = rng.random(cfg.c_out) + 0.5
    layers = [conv, bn] + tail
    return nn.Sequential(*layers, nn.Flatten())


@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs(max_batch=4), seed=st.integers(0, 999), tail=st.integers(0, 2))
def test_conv_bn_group_trains_as_the_plain_model_and_folds_in_evaluation(cfg, seed, tail):
    """Training: bit for bit the plain model (outputs, dL/dx, every gradient, the running
    statistics). Evaluation under no_grad: one folded convolution, equal to the plain model to
    rounding; with grad enabled in evaluation (a backward may follow) the modules in turn."""
    conv_out = nn.Conv2d(cfg.c_in, cfg.c_out, cfg.kernel, cfg.stride, cfg.padding)
    ho, wo = conv_out.output_shape(cfg.x_shape)[2:]
    if cfg.n * ho * wo < 2:
        return  # batch statistics need 2 values per channel
    extra = [[], [nn.ReLU()], [nn.ReLU(), nn.MaxPool2d((min(2, ho), min(2, wo)))]][tail]
    plain = _bn_model(cfg, seed, extra)
    fused = tinynet.fuse(plain)
    assert isinstance(fused[0], ConvBN) and len(fused[0].parts) == 2 + tail
    assert all(a is b for a, b in zip(fused.parameters(), plain.parameters(), strict=True))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg.x_shape)
    y_shape = plain(x).shape
    dy = rng.standard_normal(y_shape)
    twin = plain.copy()  # the plain model's own run, from the same weights and statistics
    for net in (fused, twin):
        net.train()
        net.zero_grad()
    np.testing.assert_array_equal(fused(x), twin(x))
    np.testing.assert_array_equal(fused.backward(dy), twin.backward(dy))
    for p, q in zip(fused.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad)
    np.testing.assert_array_equal(fused[0].parts[1].running_mean, twin[1].running_mean)
    np.testing.assert_array_equal(fused[0].parts[1].running_var, twin[1].running_var)
    fused.eval()
    twin.eval()
    with tinynet.no_grad():
        np.testing.assert_allclose(fused(x), twin(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(fused(x), twin(x))  # grad enabled: the modules in turn


def test_conv_bn_group_pools_before_its_relu_with_the_plain_models_numbers():
    """In training the group max-pools before the ReLU (a quarter of the numbers for the ReLU);
    windows whose maximum is negative, zero, tied or positive all give the plain model's output
    and gradients bit for bit."""
    tinynet.manual_seed(3)
    plain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=tinynet.float64),
                          nn.BatchNorm2d(4, dtype=tinynet.float64), nn.ReLU(), nn.MaxPool2d(2))
    plain[1].bias.data[...] = [-3.0, -0.5, 0.0, 2.0]  # channel 0 mostly <= 0, channel 3 > 0
    plain[1].weight.data[...] = [1.0, 0.5, -1.0, 1.0]
    fused = tinynet.fuse(plain)
    x = np.random.default_rng(4).standard_normal((3, 2, 6, 6))
    x[0] = 0.0  # image 0: every window of the convolution equal (ties)
    dy = np.random.default_rng(5).standard_normal((3, 4, 3, 3))
    twin = plain.copy()
    y, want = fused(x), twin(x)
    np.testing.assert_array_equal(y, want)
    assert (want[:, 0] == 0).mean() > 0.5 and (want[:, 3] > 0).all()
    relu = fused[0].parts[2]
    assert relu._cache[1] == (3, 4, 3, 3)  # the ReLU ran on the pooled output
    np.testing.assert_array_equal(fused.backward(dy), twin.backward(dy))
    for p, q in zip(fused.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_conv_bn_group_folds_with_the_formula_and_refuses_a_stale_backward():
    tinynet.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=tinynet.float64),
                          nn.BatchNorm2d(3, dtype=tinynet.float64), nn.ReLU(), nn.MaxPool2d(2))
    bn = plain[1]
    bn.running_mean[...] = [0.5, -1.0, 2.0]
    bn.running_var[...] = [4.0, 0.25, 1.0]
    bn.weight.data[...] = [2.0, 1.0, -1.0]
    bn.bias.data[...] = [0.1, 0.2, 0.3]
    fused = tinynet.fuse(plain)
    assert repr(fused[0]).startswith("Conv2d+BatchNorm2d+ReLU+MaxPool2d(")
    w, b = fused[0].folded()
    s = np.array([2.0, 1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5)
    np.testing.assert_allclose(w, plain[0].weight.data * s[:, None, None, None], rtol=1e-14)
    np.testing.assert_allclose(b, s * (plain[0].bias.data - [0.5, -1.0, 2.0]) + [0.1, 0.2, 0.3],
                               rtol=1e-14)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    fused(x)  # a training forward: its caches are kept ...
    fused.eval()
    with tinynet.no_grad():
        fused(x)  # ... and dropped by the folded evaluation
    with pytest.raises(RuntimeError, match="needs a forward pass first"):
        fused.backward(np.ones((2, 3, 2, 2)))


def test_fuse_leaves_conv_bn_of_mismatched_channels_and_other_groups_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3), nn.Conv2d(1, 2, 3), nn.ReLU())
    assert [type(m).__name__ for m in tinynet.fuse(model)] == ["Conv2d", "BatchNorm2d",
                                                               "ConvReLU"]


def test_recycled_buffers_of_training_and_evaluation_never_live_in_the_table_together():
    """A switch between gradient mode and no_grad forgets the other mode's buffers (the peak
    memory is then the larger of the two, not their sum); a buffer still in use is never
    handed out again either way."""
    from tinynet.fast import _recycle

    _recycle.clear()
    a = _recycle.scratch(np, "test.buf", (4, 5), np.float32)
    a_id = id(a)
    del a
    again = _recycle.scratch(np, "test.buf", (4, 5), np.float32)
    assert id(again) == a_id  # recycled within one mode
    del again
    with tinynet.no_grad():
        big = _recycle.scratch(np, "test.big", (1000, 10), np.float32)
        assert all(key[1] != "test.buf" for key in _recycle._local.table)  # forgotten
        held = big
    fresh = _recycle.scratch(np, "test.big", (1000, 10), np.float32)
    assert fresh is not held and all(key[1] != "test.big" or value == [fresh]
                                     for key, value in _recycle._local.table.items())
    held[...] = 7
    assert not fresh.any()  # the evaluation buffer still held was not handed out
    _recycle.clear()


def test_a_role_recycles_several_buffers_of_one_shape(monkeypatch):
    """Two layers of one shape each hold a buffer of the same role until backward: both are
    recycled at the next step (before, the second one was made afresh every time), neither is
    handed out twice, and the table forgets its least recently used buffers beyond its limit."""
    from tinynet.fast import _recycle

    _recycle.clear()
    a = _recycle.scratch(np, "test.two", (8, 8), np.float32)
    b = _recycle.scratch(np, "test.two", (8, 8), np.float32)  # a is held: a second buffer
    assert a is not b
    ids = {id(a), id(b)}
    a[...], b[...] = 1, 2
    del a, b
    c = _recycle.scratch(np, "test.two", (8, 8), np.float32)
    d = _recycle.scratch(np, "test.two", (8, 8), np.float32)
    assert c is not d and {id(c), id(d)} == ids  # both recycled (what they held is kept)
    e = _recycle.scratch(np, "test.two", (8, 8), np.float32, zero=True)
    assert id(e) not in ids and not e.any()  # c and d are held: a third, of zeros
    del c, d, e
    monkeypatch.setattr(_recycle, "_MAX_BUFFERS", 2)
    f = _recycle.scratch(np, "test.other", (3,), np.float32)
    assert [(key[1], len(v)) for key, v in _recycle._local.table.items()] == [
        ("test.two", 1), ("test.other", 1)]  # the two oldest "test.two" buffers forgotten
    del f
    _recycle.clear()

