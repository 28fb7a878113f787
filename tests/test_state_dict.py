"""Module.state_dict / load_state_dict: PyTorch key names, round trips, copies, and errors that
name the offending key."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from strategies import COURSE_INPUT, COURSE_KEYS, COURSE_SHAPES, course_network, normal

import tinynet
import tinynet.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU())
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.fc(self.features(self.pool(self.conv1(x))))

    def backward(self, g):
        return self.conv1.backward(self.pool.backward(self.features.backward(self.fc.backward(g))))


def host_state(model):
    return OrderedDict((k, tinynet.to_numpy(v).copy()) for k, v in model.state_dict().items())


def test_course_network_keys_and_shapes():
    sd = course_network().state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == COURSE_KEYS
    for k, v in sd.items():
        assert tuple(v.shape) == COURSE_SHAPES[k]
        assert v.dtype == np.float32


def test_attribute_and_nested_keys():
    assert list(Net().state_dict()) == ["conv1.weight", "conv1.bias", "features.1.weight",
                                        "features.1.bias", "fc.weight"]


def test_state_dict_values_are_the_parameters():
    model = course_network()
    sd = model.state_dict()
    for (name, p) in model.named_parameters():
        np.testing.assert_array_equal(tinynet.to_numpy(sd[name]), tinynet.to_numpy(p.data))


@pytest.mark.parametrize("make, shape", [(course_network, (2,) + COURSE_INPUT),
                                         (Net, (2, 1, 6, 6))])
def test_round_trip_gives_the_same_outputs(make, shape):
    tinynet.manual_seed(0)
    a = make()
    tinynet.manual_seed(1)
    b = make()
    x = normal(0, shape, dtype=np.float32)
    assert not np.allclose(a(x), b(x))
    b.load_state_dict(host_state(a))
    np.testing.assert_array_equal(b(x), a(x))


def test_load_copies_the_arrays():
    tinynet.manual_seed(0)
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    state = host_state(src)
    dst.load_state_dict(state)
    state["weight"][...] = 123.0  # changing the dict afterwards ...
    np.testing.assert_array_equal(dst.weight.data, src.weight.data)  # ... does not reach dst
    dst.weight.data[...] = -1.0  # and training dst does not change src
    assert not np.any(src.weight.data == -1.0)
    # loading the live state dict of another model does not tie the two together
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    b.weight.data -= 1.0
    assert not np.array_equal(a.weight.data, b.weight.data)


def test_load_casts_to_the_models_dtype():
    model = nn.Linear(3, 2)  # float32
    state = {"weight": np.arange(6, dtype=np.float64).reshape(2, 3) / 7, "bias": np.ones(2)}
    model.load_state_dict(state)
    assert model.weight.data.dtype == np.float32 and model.bias.data.dtype == np.float32
    np.testing.assert_allclose(model.weight.data, state["weight"], rtol=1e-7)
    assert model(np.ones((1, 3), np.float32)).dtype == np.float32


def test_gradients_are_not_part_of_the_state():
    model = nn.Linear(3, 2)
    y = model(np.ones((2, 3), np.float32))
    model.backward(np.ones_like(y))
    assert list(model.state_dict()) == ["weight", "bias"]


# ----------------------------------------------------------------------------------------------
# Errors that name the key
# ----------------------------------------------------------------------------------------------
def test_missing_key():
    state = host_state(course_network())
    del state["9.bias"]
    with pytest.raises((KeyError, ValueError), match=r"9\.bias"):
        course_network().load_state_dict(state)


def test_unexpected_key():
    state = host_state(course_network())
    state["12.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises((KeyError, ValueError), match=r"12\.weight"):
        course_network().load_state_dict(state)


def test_wrongly_shaped_value():
    state = host_state(course_network())
    state["7.weight"] = np.zeros((120, 300), np.float32)
    with pytest.raises((KeyError, ValueError), match=r"7\.weight") as e:
        course_network().load_state_dict(state)
    assert "300" in str(e.value) and "192" in str(e.value)


def test_transposed_value_is_an_error():
    state = host_state(nn.Linear(3, 2))
    state["weight"] = state["weight"].T.copy()
    with pytest.raises((KeyError, ValueError), match="weight"):
        nn.Linear(3, 2).load_state_dict(state)


def test_strict_false_ignores_missing_and_unexpected_keys():
    tinynet.manual_seed(0)
    src = course_network()
    tinynet.manual_seed(1)
    dst = course_network()
    before = tinynet.to_numpy(dst.state_dict()["11.weight"]).copy()
    state = host_state(src)
    del state["11.weight"]
    state["extra"] = np.zeros(3)
    dst.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(dst.state_dict()["0.weight"], src.state_dict()["0.weight"])
    np.testing.assert_array_equal(dst.state_dict()["11.weight"], before)


def test_strict_false_still_rejects_wrong_shapes():
    state = host_state(nn.Linear(3, 2))
    state["weight"] = np.zeros((5, 5))
    with pytest.raises((KeyError, ValueError), match="weight"):
        nn.Linear(3, 2).load_state_dict(state, strict=False)


def test_state_dict_between_devices(device):
    tinynet.manual_seed(0)
    src = course_network()
    dst = course_network(device=device)
    dst.load_state_dict(host_state(src))
    assert dst.device == device
    x = normal(0, (2,) + COURSE_INPUT, dtype=np.float32)
    np.testing.assert_allclose(tinynet.to_numpy(dst(tinynet.to_device(x, device))), src(x),
                               rtol=1e-5, atol=1e-6)
