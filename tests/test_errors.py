"""Bad input gives an error that names the layer, what it expected and what it got.

Messages are matched loosely (the wording is the implementer's): the layer's name, the numbers or
shapes involved, and the key hint (Flatten, float, learning rate, ...).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from strategies import COURSE_INPUT, course_network, normal

import tinynet
import tinynet.nn as nn
from tinynet import backend as B

VALUE_OR_TYPE = (ValueError, TypeError)


def mentions(exc_info, *parts):
    """Every part (a regex, case-insensitive) occurs in the error message."""
    msg = str(exc_info.value)
    for part in parts:
        assert re.search(part, msg, flags=re.I), f"{part!r} not in message: {msg}"


def shape_re(shape):
    """A shape as printed, tolerant of spacing: (2, 3, 8, 8)."""
    return r"\(\s*" + r",\s*".join(str(d) for d in shape) + r"\s*,?\s*\)"


def f32(shape, seed=0):
    return normal(seed, shape, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Shapes fed to layers
# ----------------------------------------------------------------------------------------------
def test_conv2d_3d_batch():
    with pytest.raises(ValueError) as e:
        nn.Conv2d(1, 6, 5)(f32((1, 28, 28)))
    mentions(e, "conv2d", shape_re((1, 28, 28)), "4-?d|\\(N, ?C")


def test_course_network_without_channel_axis():
    with pytest.raises(ValueError) as e:
        course_network()(f32((4, 28, 28)))
    mentions(e, "conv2d", shape_re((4, 28, 28)))


def test_conv2d_wrong_channel_count():
    with pytest.raises(ValueError) as e:
        nn.Conv2d(3, 4, 3)(f32((2, 1, 8, 8)))
    mentions(e, "conv2d", r"\b3\b", r"\b1\b", "channel")


def test_linear_fed_unflattened_conv_output():
    with pytest.raises(ValueError) as e:
        nn.Linear(192, 120)(f32((2, 12, 4, 4)))
    mentions(e, "linear", "flatten", shape_re((2, 12, 4, 4)))


def test_linear_wrong_feature_count():
    with pytest.raises(ValueError) as e:
        nn.Linear(10, 3)(f32((2, 7)))
    mentions(e, "linear", r"\b10\b", r"\b7\b")


def test_course_network_on_wrong_image_size():
    """32x32 images: the first Linear receives 12*5*5 = 300 features instead of 192."""
    with pytest.raises(ValueError) as e:
        course_network()(f32((2, 1, 32, 32)))
    mentions(e, "linear", r"\b192\b", r"\b300\b")


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn.Conv2d(1, 2, 5), (1, 1, 4, 4)),
    (lambda: nn.Conv2d(1, 2, (1, 5)), (1, 1, 9, 4)),
    (lambda: nn.Conv2d(1, 2, 5, padding=(1, 0)), (1, 1, 2, 9)),
])
def test_conv2d_kernel_larger_than_padded_input(layer, shape):
    with pytest.raises(ValueError) as e:
        layer()(f32(shape))
    mentions(e, "conv2d", "kernel")


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn.MaxPool2d(4), (1, 1, 3, 3)),
    (lambda: nn.MaxPool2d((2, 3), padding=(0, 1)), (1, 1, 1, 1)),
])
def test_maxpool2d_window_larger_than_padded_input(layer, shape):
    with pytest.raises(ValueError) as e:
        layer()(f32(shape))
    mentions(e, "maxpool2d")


def test_maxpool2d_3d_input():
    with pytest.raises(ValueError) as e:
        nn.MaxPool2d(2)(f32((3, 4, 4)))
    mentions(e, "maxpool2d", shape_re((3, 4, 4)))


def test_kernel_equal_to_padded_input_is_fine():
    assert nn.Conv2d(1, 2, 5, padding=1)(f32((1, 1, 3, 3))).shape == (1, 2, 1, 1)
    assert nn.MaxPool2d(3, padding=1)(f32((1, 1, 1, 1))).shape == (1, 1, 1, 1)


# ----------------------------------------------------------------------------------------------
# Bad sizes at construction
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, word", [
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels"),
    (dict(in_channels=1, out_channels=0, kernel_size=3), "out_channels"),
    (dict(in_channels=1, out_channels=-2, kernel_size=3), "out_channels"),
    (dict(in_channels=1, out_channels=2, kernel_size=0), "kernel"),
    (dict(in_channels=1, out_channels=2, kernel_size=(3, 0)), "kernel"),
    (dict(in_channels=1, out_channels=2, kernel_size=-3), "kernel"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, stride=0), "stride"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, stride=(1, -1)), "stride"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, padding=-1), "padding"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, padding=(0, -2)), "padding"),
])
def test_conv2d_bad_construction(kwargs, word):
    with pytest.raises(ValueError) as e:
        nn.Conv2d(**kwargs)
    mentions(e, "conv2d", word)


@pytest.mark.parametrize("args, kwargs, word", [
    ((0,), {}, "kernel"),
    (((2, -1),), {}, "kernel"),
    ((2,), dict(stride=0), "stride"),
    ((2,), dict(stride=-2), "stride"),
    ((2,), dict(padding=-1), "padding"),
    ((2,), dict(padding=2), "padding"),  # more than half the kernel, as PyTorch forbids
    ((3,), dict(padding=(1, 2)), "padding"),
])
def test_maxpool2d_bad_construction(args, kwargs, word):
    with pytest.raises(ValueError) as e:
        nn.MaxPool2d(*args, **kwargs)
    mentions(e, "maxpool2d", word)


@pytest.mark.parametrize("args, word", [((0, 3), "in_features"), ((3, 0), "out_features"),
                                        ((-1, 3), "in_features")])
def test_linear_bad_construction(args, word):
    with pytest.raises(ValueError) as e:
        nn.Linear(*args)
    mentions(e, "linear", word)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(1, 2, 2.5),
    lambda: nn.Conv2d(1.5, 2, 3),
    lambda: nn.Linear(3, "4"),
    lambda: nn.MaxPool2d((2, 2, 2)),
])
def test_non_integer_sizes(make):
    with pytest.raises(VALUE_OR_TYPE):
        make()


# ----------------------------------------------------------------------------------------------
# Integer or boolean images
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, bool])
@pytest.mark.parametrize("name, make, shape", [
    ("conv2d", lambda: nn.Conv2d(1, 2, 3), (2, 1, 5, 5)),
    ("linear", lambda: nn.Linear(4, 2), (2, 4)),
    ("relu", nn.ReLU, (2, 4)),
    ("maxpool2d", lambda: nn.MaxPool2d(2), (2, 1, 4, 4)),
    ("flatten", nn.Flatten, (2, 1, 4, 4)),
    ("sequential", course_network, (2,) + COURSE_INPUT),
])
def test_integer_or_bool_images(dtype, name, make, shape):
    x = (np.arange(int(np.prod(shape))).reshape(shape) % 256).astype(dtype)
    with pytest.raises(VALUE_OR_TYPE) as e:
        make()(x)
    mentions(e, "float", "normali[sz]e|/ ?255|convert")
    if name != "sequential":
        mentions(e, name)


def test_not_an_array():
    with pytest.raises(VALUE_OR_TYPE):
        nn.Linear(2, 2)([[1.0, 2.0]])


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------
def test_labels_out_of_range():
    with pytest.raises(ValueError) as e:
        nn.CrossEntropyLoss()(f32((3, 10)), np.array([0, 10, 2]))
    mentions(e, "crossentropy", r"\b10\b", "label")


def test_labels_negative():
    with pytest.raises(ValueError) as e:
        nn.CrossEntropyLoss()(f32((3, 10)), np.array([0, -1, 2]))
    mentions(e, "crossentropy", "-1", "label")


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0]),
                                    np.array([0.5, 1.0, 2.0], np.float32)])
def test_float_labels(labels):
    with pytest.raises(VALUE_OR_TYPE) as e:
        nn.CrossEntropyLoss()(f32((3, 4)), labels)
    mentions(e, "crossentropy", "label", "int")


def test_labels_batch_size_mismatch():
    with pytest.raises(ValueError) as e:
        nn.CrossEntropyLoss()(f32((4, 3)), np.array([0, 1, 2]))
    mentions(e, "crossentropy", r"\b4\b", r"\b3\b")


def test_labels_2d():
    with pytest.raises(ValueError):
        nn.CrossEntropyLoss()(f32((3, 4)), np.array([[0], [1], [2]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_logits_mention_the_learning_rate(bad):
    z = f32((3, 4))
    z[1, 2] = bad
    with pytest.raises(ValueError) as e:
        nn.CrossEntropyLoss()(z, np.array([0, 1, 2]))
    mentions(e, "crossentropy", "learning rate|diverge")


def test_integer_logits():
    with pytest.raises(VALUE_OR_TYPE) as e:
        nn.CrossEntropyLoss()(np.ones((2, 3), np.int64), np.array([0, 1]))
    mentions(e, "float")


def test_logits_1d():
    with pytest.raises(ValueError):
        nn.CrossEntropyLoss()(f32((4,)), np.array([0, 1, 2, 3]))


def test_loss_backward_with_non_scalar_gradient():
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(f32((2, 3)), np.array([0, 1]))
    with pytest.raises(VALUE_OR_TYPE):
        loss_fn.backward(np.ones((2, 3), np.float32))


# ----------------------------------------------------------------------------------------------
# Call order and gradient shapes
# ----------------------------------------------------------------------------------------------
MODULES = [
    ("Conv2d", lambda: nn.Conv2d(1, 2, 3), (2, 1, 5, 5)),
    ("Linear", lambda: nn.Linear(4, 3), (2, 4)),
    ("ReLU", nn.ReLU, (2, 3)),
    ("MaxPool2d", lambda: nn.MaxPool2d(2), (1, 1, 4, 4)),
    ("Flatten", nn.Flatten, (2, 3, 2)),
]


@pytest.mark.parametrize("name, make, shape", MODULES, ids=[m[0] for m in MODULES])
def test_backward_before_forward_names_the_layer(name, make, shape):
    y_shape = make()(f32(shape)).shape
    with pytest.raises(RuntimeError) as e:
        make().backward(np.ones(y_shape, np.float32))
    mentions(e, name, "forward")


@pytest.mark.parametrize("name, make, shape", MODULES, ids=[m[0] for m in MODULES])
def test_gradient_of_the_wrong_shape(name, make, shape):
    m = make()
    y = m(f32(shape))
    bad = np.ones(y.shape[:-1] + (y.shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError) as e:
        m.backward(bad)
    mentions(e, name, shape_re(y.shape), shape_re(bad.shape))
    # a transposed gradient with the same number of entries is wrong too
    if y.ndim == 2 and y.shape[0] != y.shape[1]:
        m(f32(shape))
        with pytest.raises(ValueError):
            m.backward(np.ones(y.shape[::-1], np.float32))


def test_gradient_of_the_wrong_shape_in_sequential():
    model = course_network()
    model(f32((2,) + COURSE_INPUT))
    with pytest.raises(ValueError) as e:
        model.backward(np.ones((2, 9), np.float32))
    mentions(e, shape_re((2, 10)))


def test_layer_still_works_after_an_error():
    fc = nn.Linear(3, 2)
    with pytest.raises(ValueError):
        fc(f32((2, 4)))
    y = fc(f32((2, 3)))
    assert fc.backward(np.ones_like(y)).shape == (2, 3)


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: nn.Linear(2, 3, device="tpu"),
    lambda: nn.Conv2d(1, 2, 3, device="gpu"),
    lambda: tinynet.set_default_device("npu"),
    lambda: tinynet.to_device(np.ones(3), "tpu"),
    lambda: nn.Linear(2, 3).to("xla"),
    lambda: B.get_backend("mps"),
], ids=["Linear", "Conv2d", "set_default_device", "to_device", "Module.to", "get_backend"])
def test_unknown_device_lists_the_valid_ones(call):
    with pytest.raises(tinynet.DeviceError) as e:
        call()
    mentions(e, "cpu", "cuda")
    assert isinstance(e.value, RuntimeError)
    assert tinynet.get_default_device() in ("cpu", "cuda")


def test_device_error_is_a_runtime_error():
    assert issubclass(tinynet.DeviceError, RuntimeError)


@pytest.fixture
def without_cupy(monkeypatch):
    """Make ``import cupy`` fail (as on a machine without it) and forget a cached 'cuda' backend."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(B, "_backends", {k: v for k, v in B._backends.items() if k != "cuda"})


CUDA_CALLS = [
    lambda: nn.Linear(2, 3, device="cuda"),
    lambda: nn.Conv2d(1, 2, 3, device="cuda"),
    lambda: tinynet.set_default_device("cuda"),
    lambda: nn.Linear(2, 3).to("cuda"),
    lambda: tinynet.to_device(np.ones(3), "cuda"),
]
CUDA_IDS = ["Linear", "Conv2d", "set_default_device", "Module.to", "to_device"]


@pytest.mark.parametrize("call", CUDA_CALLS, ids=CUDA_IDS)
def test_cuda_without_cupy_says_how_to_install(call, without_cupy):
    assert not B.cuda_is_available()
    with pytest.raises(tinynet.DeviceError) as e:
        call()
    mentions(e, re.escape('pip install "tinynet[gpu]"'))
    assert tinynet.get_default_device() != "cuda"


@pytest.mark.skipif(B.cuda_is_available(), reason="a GPU is available here")
@pytest.mark.parametrize("call", CUDA_CALLS, ids=CUDA_IDS)
def test_cuda_unavailable_is_a_device_error(call):
    with pytest.raises(tinynet.DeviceError) as e:
        call()
    mentions(e, "cuda|cupy|gpu")
    assert tinynet.get_default_device() != "cuda"


@pytest.mark.skipif(not B.cuda_is_available(), reason="needs CuPy and a GPU")
def test_input_on_another_device_than_the_weights():
    fc = nn.Linear(3, 2, device="cuda")
    with pytest.raises(tinynet.DeviceError) as e:
        fc(f32((2, 3)))
    mentions(e, "cpu", "cuda", "linear")
    conv = nn.Conv2d(1, 2, 3, device="cpu")
    with pytest.raises(tinynet.DeviceError) as e:
        conv(tinynet.to_device(f32((1, 1, 4, 4)), "cuda"))
    mentions(e, "cpu", "cuda", "conv2d")


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError):
        nn.Sequential(nn.ReLU(), lambda x: x)
