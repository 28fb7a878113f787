"""dtypes: float32 by default and float32 everywhere (outputs, input gradients, parameter gradients,
loss, loss gradient); float64 on request (set_default_dtype or dtype=) and float64 everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from strategies import COURSE_INPUT, course_network, labels_for, normal

import tinynet
import tinynet.nn as nn


def test_default_dtype_is_float32():
    assert tinynet.get_default_dtype() == np.float32
    assert tinynet.float32 == np.float32 and tinynet.float64 == np.float64
    assert nn.Linear(2, 2).weight.data.dtype == np.float32
    assert nn.Conv2d(1, 1, 1).bias.data.dtype == np.float32


def test_set_default_dtype():
    tinynet.set_default_dtype(tinynet.float64)
    assert tinynet.get_default_dtype() == np.float64
    assert nn.Linear(2, 2).weight.data.dtype == np.float64
    assert course_network().dtype == np.float64
    tinynet.set_default_dtype(tinynet.float32)
    assert nn.Linear(2, 2).weight.data.dtype == np.float32


def test_dtype_argument_beats_the_default():
    tinynet.set_default_dtype(tinynet.float64)
    assert nn.Linear(2, 2, dtype=tinynet.float32).weight.data.dtype == np.float32
    tinynet.set_default_dtype(tinynet.float32)
    conv = nn.Conv2d(1, 2, 3, dtype=tinynet.float64)
    assert conv.weight.data.dtype == np.float64 and conv.bias.data.dtype == np.float64


@pytest.mark.parametrize("bad", [np.float16, np.int32, "int64", complex])
def test_unsupported_dtypes_are_rejected(bad):
    with pytest.raises((TypeError, ValueError)):
        tinynet.set_default_dtype(bad)
    with pytest.raises((TypeError, ValueError)):
        nn.Linear(2, 2, dtype=bad)


def test_same_seed_same_weights_in_both_dtypes():
    tinynet.manual_seed(3)
    a = nn.Conv2d(2, 3, 3, dtype=tinynet.float32)
    tinynet.manual_seed(3)
    b = nn.Conv2d(2, 3, 3, dtype=tinynet.float64)
    np.testing.assert_allclose(a.weight.data, b.weight.data, rtol=1e-7)


def _training_step(model, x, labels, grad_scale=1.0):
    loss_fn = nn.CrossEntropyLoss()
    logits = model(x)
    loss = loss_fn(logits, labels)
    dlogits = loss_fn.backward(grad_scale)
    dx = model.backward(dlogits)
    return logits, loss, dlogits, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_course_network_stays_in_its_dtype(dtype, device):
    tinynet.manual_seed(0)
    model = course_network(dtype=dtype, device=device)
    x = tinynet.to_device(normal(0, (3,) + COURSE_INPUT, dtype=dtype), device)
    labels = tinynet.to_device(labels_for(1, 3, 10), device)
    logits, loss, dlogits, dx = _training_step(model, x, labels)
    for what, a in [("logits", logits), ("loss", loss), ("dlogits", dlogits), ("dx", dx)]:
        assert a.dtype == dtype, what
    assert np.ndim(loss) == 0
    for name, p in model.named_parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype, name
    # every intermediate output too
    h = x
    for i, m in enumerate(model):
        h = m(h)
        assert h.dtype == dtype, f"output of layer {i} ({m!r})"


@pytest.mark.parametrize("upstream", [1.0, 0.5, np.float64(0.5), np.array(2.0), 3])
def test_float32_loss_gradient_with_any_upstream_scalar(upstream):
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(normal(0, (4, 3), dtype=np.float32), np.array([0, 1, 2, 0]))
    assert loss.dtype == np.float32
    assert loss_fn.backward(upstream).dtype == np.float32


@pytest.mark.parametrize("name, make, shape", [
    ("conv", lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    ("linear", lambda: nn.Linear(4, 3), (2, 4)),
    ("relu", nn.ReLU, (2, 4)),
    ("pool", lambda: nn.MaxPool2d(2, padding=1), (1, 2, 5, 5)),
    ("flatten", nn.Flatten, (2, 2, 3)),
])
def test_every_float32_layer_stays_float32(name, make, shape):
    m = make()
    y = m(normal(0, shape, dtype=np.float32))
    assert y.dtype == np.float32
    dx = m.backward(np.ones_like(y))
    assert dx.dtype == np.float32
    for p in m.parameters():
        assert p.grad.dtype == np.float32


@pytest.mark.parametrize("name, make, shape", [
    ("conv", lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    ("linear", lambda: nn.Linear(4, 3), (2, 4)),
])
def test_float64_input_to_a_float32_layer_never_yields_float64(name, make, shape):
    """Either a clear error or float32 out: a float32 model never returns float64."""
    m = make()
    try:
        y = m(normal(0, shape))
    except (TypeError, ValueError) as e:
        assert "float" in str(e).lower()
        return
    assert y.dtype == np.float32
    assert m.backward(np.ones_like(y, dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("name, make, shape", [
    ("conv", lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    ("linear", lambda: nn.Linear(4, 3), (2, 4)),
    ("relu", nn.ReLU, (2, 4)),
    ("pool", lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
    ("flatten", nn.Flatten, (2, 2, 3)),
    ("course", course_network, (2,) + COURSE_INPUT),
])
def test_float64_gradient_into_a_float32_model_never_yields_float64(name, make, shape):
    """``model.backward(np.ones(shape))`` (NumPy's default float64) on a float32 model: either a
    clear error or float32 gradients."""
    m = make()
    y = m(normal(0, shape, dtype=np.float32))
    try:
        dx = m.backward(np.ones(y.shape))  # float64
    except (TypeError, ValueError) as e:
        assert "float" in str(e).lower()
        return
    assert dx.dtype == np.float32
    for p in m.parameters():
        assert p.grad.dtype == np.float32


def test_double_then_float_round_trip():
    tinynet.manual_seed(0)
    model = course_network()
    w = model.state_dict()["0.weight"].copy()
    model.double()
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    model.float()
    assert all(v.dtype == np.float32 for v in model.state_dict().values())
    np.testing.assert_array_equal(model.state_dict()["0.weight"], w)


def test_sgd_keeps_float32_with_python_and_numpy_hyperparameters():
    from tinynet.optim import SGD

    model = nn.Linear(3, 2)
    for lr in (0.1, np.float64(0.1)):
        opt = SGD(model.parameters(), lr=lr, momentum=np.float64(0.9),
                  weight_decay=np.float64(0.01))
        y = model(np.ones((1, 3), np.float32))
        model.backward(np.ones_like(y))
        opt.step()
        opt.step()
        assert model.weight.data.dtype == np.float32 and model.bias.data.dtype == np.float32
