"""Small cases worked out by hand (the arithmetic is in the comments), through the modules and the
functional pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinynet.functional as F
import tinynet.nn as nn
from tinynet.optim import SGD

# x[r, c] = 4r + c + 1:
#   1  2  3  4
#   5  6  7  8
#   9 10 11 12
#  13 14 15 16
X4 = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
# a 3x3 kernel with no symmetry, so a flipped kernel (true convolution) would give other numbers
K3 = np.array([[1.0, 2.0, 0.0],
               [0.0, 1.0, 0.0],
               [0.0, 0.0, -1.0]]).reshape(1, 1, 3, 3)


def _conv_module(weight, bias, **kw):
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=bias is not None,
                     dtype=np.float64, **kw)
    state = {"weight": weight}
    if bias is not None:
        state["bias"] = bias
    conv.load_state_dict(state)
    return conv


@pytest.mark.parametrize("use_module", [True, False])
def test_conv3x3_forward_and_backward_by_hand(use_module):
    # y[i, j] = x[i, j] + 2 x[i, j+1] + x[i+1, j+1] - x[i+2, j+2] + 0.5
    #   y[0, 0] = 1 + 2*2 + 6 - 11 + .5 = 0.5      y[0, 1] = 2 + 2*3 + 7 - 12 + .5 = 3.5
    #   y[1, 0] = 5 + 2*6 + 10 - 15 + .5 = 12.5    y[1, 1] = 6 + 2*7 + 11 - 16 + .5 = 15.5
    expected_y = np.array([[0.5, 3.5], [12.5, 15.5]])
    # with dy = 1 everywhere:
    #   dw[u, v] = sum of the 2x2 block of x at (u, v) = 16u + 4v + 14;  db = 4
    #   dx[r, c] = sum over the windows (i, j) covering (r, c) of k[r - i, c - j]
    expected_dw = np.array([[14.0, 18.0, 22.0], [30.0, 34.0, 38.0], [46.0, 50.0, 54.0]])
    expected_dx = np.array([[1.0, 3.0, 2.0, 0.0],
                            [1.0, 4.0, 3.0, 0.0],
                            [0.0, 1.0, 0.0, -1.0],
                            [0.0, 0.0, -1.0, -1.0]])
    bias = np.array([0.5])
    if use_module:
        conv = _conv_module(K3, bias)
        y = conv(X4.copy())
        dx = conv.backward(np.ones_like(y))
        dw, db = conv.weight.grad, conv.bias.grad
    else:
        y, cache = F.conv2d_forward(X4.copy(), K3, bias)
        dx, dw, db = F.conv2d_backward(np.ones_like(y), cache)
    np.testing.assert_allclose(y[0, 0], expected_y, rtol=1e-14)
    np.testing.assert_allclose(dw[0, 0], expected_dw, rtol=1e-14)
    np.testing.assert_allclose(db, [4.0], rtol=1e-14)
    np.testing.assert_allclose(dx[0, 0], expected_dx, atol=1e-14)


def test_conv3x3_with_padding_and_stride_by_hand():
    # padding 1, stride 2 on the 4x4 input: padded 6x6, output 2x2 at padded rows/cols 0 and 2.
    #   y[0, 0]: k[1,1]*x[0,0] + k[2,2]*x[1,1] (the rest hits the zero border) = 1 - 6 = -5
    #   y[0, 1]: window cols 1..3 -> x cols 0..2: k[0,*] on the border;
    #            k[1,0]x[0,1] + k[1,1]x[0,2] + k[2,2]x[1,3] = 0 + 3 - 8 = -5
    #   y[1, 0]: rows 1..3 -> x rows 1..3 (k row 0 on x row 1), cols -1..1:
    #            k[0,1]x[1,0] + k[1,1]x[2,0] + k[2,2]x[3,1] = 2*5 + 9 - 14 = 5
    #   y[1, 1]: rows 1..3, cols 1..3:
    #            k[0,0]x[1,1] + k[0,1]x[1,2] + k[1,1]x[2,2] + k[2,2]x[3,3] = 6 + 14 + 11 - 16 = 15
    y, _ = F.conv2d_forward(X4, K3, None, stride=2, padding=1)
    np.testing.assert_allclose(y[0, 0], [[-5.0, -5.0], [5.0, 15.0]], rtol=1e-14)
    conv = _conv_module(K3, None, stride=2, padding=1)
    np.testing.assert_allclose(conv(X4)[0, 0], [[-5.0, -5.0], [5.0, 15.0]], rtol=1e-14)


def test_conv_two_channels_add_up():
    # channel 1 is channel 0 times 10, filter weights 1 and -0.1: every output is exactly 0
    x = np.concatenate([X4, 10 * X4], axis=1)
    w = np.concatenate([K3, -0.1 * K3], axis=1)
    y, _ = F.conv2d_forward(x, w, np.array([2.0]))
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 2.0), atol=1e-12)


def test_maxpool_ties_send_the_gradient_to_the_first_maximum():
    # window 0: [[1, 3], [3, 2]] -> max 3, first at (0, 1)
    # window 1: [[3, 0], [1, 3]] -> max 3, first at (0, 2)
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 1.0, 3.0]]]])
    pool = nn.MaxPool2d(2)
    y = pool(x)
    np.testing.assert_array_equal(y, [[[[3.0, 3.0]]]])
    dx = pool.backward(np.array([[[[10.0, 20.0]]]]))
    np.testing.assert_array_equal(dx, [[[[0.0, 10.0, 20.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_maxpool_all_equal_window_picks_its_top_left():
    x = np.full((1, 1, 2, 2), 5.0)
    y, cache = F.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(F.maxpool2d_backward(np.array([[[[7.0]]]]), cache),
                                  [[[[7.0, 0.0], [0.0, 0.0]]]])


def test_maxpool_overlapping_windows_by_hand():
    # kernel (1, 2), stride 1 over [2, 2, 1]: windows [2, 2] -> first (col 0), [2, 1] -> col 1
    x = np.array([[[[2.0, 2.0, 1.0]]]])
    pool = nn.MaxPool2d((1, 2), stride=1)
    y = pool(x)
    np.testing.assert_array_equal(y, [[[[2.0, 2.0]]]])
    np.testing.assert_array_equal(pool.backward(np.array([[[[1.0, 1.0]]]])), [[[[1.0, 1.0, 0.0]]]])
    # one input winning two windows collects both gradients: [1, 5, 1] -> col 1 twice
    y = pool(np.array([[[[1.0, 5.0, 1.0]]]]))
    np.testing.assert_array_equal(pool.backward(np.array([[[[3.0, 4.0]]]])), [[[[0.0, 7.0, 0.0]]]])


def test_maxpool_padding_never_wins():
    # all negative; padding 1 with a 2x2 kernel and stride 2: each window holds one real value
    # and three padded cells; the padding must not win (it is -inf, not 0)
    x = np.array([[[[-1.0, -2.0], [-3.0, -4.0]]]])
    pool = nn.MaxPool2d(2, stride=2, padding=1)
    y = pool(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(pool.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]])),
                                  [[[[1.0, 2.0], [3.0, 4.0]]]])


def test_maxpool_stride_larger_than_kernel_skips_inputs():
    # kernel 1, stride 2 on a 3x3: picks the four corners; the rest get no gradient
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    pool = nn.MaxPool2d(1, stride=2)
    np.testing.assert_array_equal(pool(x), [[[[0.0, 2.0], [6.0, 8.0]]]])
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 2, 2))),
                                  [[[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]]])


def test_softmax_cross_entropy_by_hand():
    # logits [0, ln 3]: softmax = [1/4, 3/4]
    #   label 1: loss = -ln(3/4) = ln(4/3), dlogits = [1/4, 3/4 - 1] = [1/4, -1/4]
    #   label 0: loss = -ln(1/4) = ln 4,    dlogits = [1/4 - 1, 3/4] = [-3/4, 3/4]
    z = np.array([[0.0, math.log(3.0)]])
    for label, loss, grad in [(1, math.log(4 / 3), [0.25, -0.25]), (0, math.log(4), [-0.75, 0.75])]:
        loss_fn = nn.CrossEntropyLoss()
        assert float(loss_fn(z, np.array([label]))) == pytest.approx(loss, rel=1e-14)
        np.testing.assert_allclose(loss_fn.backward(), [grad], rtol=1e-14)
    # both as one batch: the mean, and every gradient halved
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(np.concatenate([z, z]), np.array([1, 0]))
    assert float(loss) == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, rel=1e-14)
    np.testing.assert_allclose(loss_fn.backward(), [[0.125, -0.125], [-0.375, 0.375]], rtol=1e-14)
    # four equal logits: loss ln 4, gradient [1/4 - 1, 1/4, 1/4, 1/4]
    loss, cache = F.cross_entropy_forward(np.zeros((1, 4)), np.array([0]))
    assert float(loss) == pytest.approx(math.log(4), rel=1e-14)
    np.testing.assert_allclose(F.cross_entropy_backward(cache), [[-0.75, 0.25, 0.25, 0.25]],
                               rtol=1e-14)
    np.testing.assert_allclose(F.cross_entropy_backward(cache, 2.0), [[-1.5, 0.5, 0.5, 0.5]],
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_magnitude_1e4_by_hand(dtype):
    # sample 0: [1e4, 0], label 0: softmax [1, e^-1e4] = [1, 0] -> loss 0,   grad [0, 0]
    # sample 1: [0, 1e4], label 0: softmax [0, 1]            -> loss 1e4, grad [-1, 1]
    # sample 2: [-1e4, 1e4], label 1                          -> loss 0,   grad [0, 0]
    z = np.array([[1e4, 0.0], [0.0, 1e4], [-1e4, 1e4]], dtype=dtype)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(z, np.array([0, 0, 1]))
    dz = loss_fn.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    assert float(loss) == pytest.approx(1e4 / 3, rel=1e-6)
    np.testing.assert_allclose(dz, np.array([[0, 0], [-1, 1], [0, 0]]) / 3, atol=1e-7)


def test_linear_by_hand():
    # x = [1, 2], W = [[1, 0], [2, -1], [0, 3]], b = [0.5, 0, -1]
    #   y = [1 + .5, 2 - 2, 6 - 1] = [1.5, 0, 5]
    # dy = [1, 2, 3]: dx = dy W = [1 + 4, -2 + 9] = [5, 7]; dW = dy^T x; db = dy
    fc = nn.Linear(2, 3, dtype=np.float64)
    fc.load_state_dict({"weight": np.array([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0]]),
                        "bias": np.array([0.5, 0.0, -1.0])})
    y = fc(np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(y, [[1.5, 0.0, 5.0]], atol=1e-15)
    dx = fc.backward(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(dx, [[5.0, 7.0]], rtol=1e-15)
    np.testing.assert_allclose(fc.weight.grad, [[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]], rtol=1e-15)
    np.testing.assert_allclose(fc.bias.grad, [1.0, 2.0, 3.0], rtol=1e-15)


def test_relu_by_hand_including_zero():
    # at exactly 0 the gradient is 0 (as in PyTorch)
    relu = nn.ReLU()
    y = relu(np.array([[-1.0, 0.0, 2.0, -0.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 5.0, 5.0, 5.0]])),
                                  [[0.0, 0.0, 5.0, 0.0]])


def test_flatten_by_hand():
    x = np.arange(12.0).reshape(2, 3, 2)
    flat = nn.Flatten()
    np.testing.assert_array_equal(flat(x), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    assert nn.Flatten(0, 1)(x).shape == (6, 2)


def test_sgd_by_hand():
    # w = 1, g = 0.5 every step, lr = 0.1
    # momentum 0.9: buf 0.5 -> w 0.95; buf 0.9*0.5 + 0.5 = 0.95 -> w 0.95 - 0.095 = 0.855
    # nesterov:    buf 0.5, step g + 0.9 buf = 0.95 -> w 0.905;
    #              buf 0.95, step 0.5 + 0.855 = 1.355 -> w 0.905 - 0.1355 = 0.7695
    # weight decay 0.1 (no momentum): g = 0.5 + 0.1 w: w 1 - 0.1*0.6 = 0.94;
    #              g = 0.5 + 0.094 = 0.594 -> w 0.94 - 0.0594 = 0.8806
    for kwargs, expected in [(dict(momentum=0.9), [0.95, 0.855]),
                             (dict(momentum=0.9, nesterov=True), [0.905, 0.7695]),
                             (dict(weight_decay=0.1), [0.94, 0.8806])]:
        p = nn.Parameter(np.array([1.0]))
        opt = SGD([p], lr=0.1, **kwargs)
        for want in expected:
            p.grad = np.array([0.5])
            opt.step()
            assert float(p.data[0]) == pytest.approx(want, rel=1e-13), kwargs
