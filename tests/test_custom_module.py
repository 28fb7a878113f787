"""Custom modules and nesting: the recipe in tinynet/nn/module.py's docstring (a Module subclass
with a hand-written forward and backward), checked by gradcheck, trained inside a Sequential,
and nested Sequentials with their state-dict keys (``features.0.weight``...)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import tinynet
from tinynet import nn
from tinynet.backend import backend_of, get_backend


class Scale(nn.Module):
    """The docstring's example: y = x * w, one weight per feature."""

    def __init__(self, n, dtype="float32"):
        super().__init__()
        self.weight = nn.Parameter(get_backend().xp.ones(n, dtype))

    def forward(self, x):  # x: (N, n)
        self.save_for_backward(x)
        return x * self.weight.data

    def backward(self, grad_output):  # dL/dy: (N, n)
        x = self.saved()
        self.weight.accumulate_grad((grad_output * x).sum(axis=0))  # dL/dw
        return grad_output * self.weight.data  # dL/dx


class Swish(nn.Module):
    """An operation (no weights): y = x * sigmoid(x), dy/dx = s + x * s * (1 - s)."""

    def forward(self, x):
        xp = backend_of(x).xp
        s = 1.0 / (1.0 + xp.exp(-x))
        self.save_for_backward((x, s))
        return x * s

    def backward(self, grad_output):
        x, s = self.saved()
        self.check_grad_output(grad_output, x.shape)
        return grad_output * (s + x * s * (1.0 - s))


def test_the_documented_recipe_passes_gradcheck():
    x = np.random.default_rng(0).standard_normal((4, 3))
    m = Scale(3)
    m.weight.data[...] = [0.5, -1.0, 2.0]
    assert tinynet.gradcheck(m, x)
    assert tinynet.gradcheck(Swish(), x)
    net = nn.Sequential(nn.Linear(3, 5), Swish(), Scale(5), nn.Linear(5, 2))
    assert tinynet.gradcheck(net, x)


def test_gradients_accumulate_and_backward_needs_forward():
    m = Scale(2, dtype="float64")
    x = np.array([[1.0, 2.0]])
    m(x)
    m.backward(np.ones((1, 2)))
    m(x)
    m.backward(np.ones((1, 2)))
    np.testing.assert_array_equal(m.weight.grad, [2.0, 4.0])
    with pytest.raises(RuntimeError, match="forward pass first"):
        m.backward(np.ones((1, 2)))
    with tinynet.no_grad():
        m(x)
    with pytest.raises(RuntimeError, match="forward pass first"):
        m.backward(np.ones((1, 2)))
    with pytest.raises(ValueError, match="Swish.backward: expected a gradient of shape"):
        s = Swish()
        s(x)
        s.backward(np.ones((2, 2)))


def test_a_custom_module_trains_in_a_sequential():
    tinynet.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # XOR of signs: needs the nonlinearity
    net = nn.Sequential(nn.Linear(2, 16), Swish(), Scale(16), nn.Linear(16, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = tinynet.optim.Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = float(loss_fn(net(x), y))
        first = loss if first is None else first
        net.backward(loss_fn.backward())
        opt.step()
    assert loss < 0.5 * first
    assert net[2].weight.grad is not None and net[2].weight.data.dtype == np.float32


class Block(nn.Module):
    """A module made of modules: conv -> BN -> ReLU, plus a skip of the input (same shape)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x))) + x  # y = f(x) + x

    def backward(self, grad_output):
        # the sum sends dL/dy to both branches; their input gradients add up
        return self.conv.backward(self.bn.backward(self.relu.backward(grad_output))) + grad_output


def test_nested_sequentials_and_custom_blocks_state_dict_keys():
    model = nn.Sequential(OrderedDict([
        ("features", nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), Block(2))),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("classifier", nn.Sequential(nn.Dropout(0.5), nn.Linear(2, 3))),
    ]))
    keys = list(model.state_dict())
    assert sorted(keys) == sorted([
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.3.conv.weight", "features.3.bn.weight", "features.3.bn.bias",
        "classifier.1.weight", "classifier.1.bias",
        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
        "features.3.bn.running_mean", "features.3.bn.running_var",
        "features.3.bn.num_batches_tracked",
    ])
    assert [k for k, _ in model.named_parameters()] == [k for k in keys if "running" not in k
                                                        and "tracked" not in k]
    torch = pytest.importorskip("torch")
    ref = torch.nn.Sequential(OrderedDict([
        ("features", torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))),
    ]))
    theirs = set(ref.state_dict())
    assert theirs <= set(keys)  # the same names PyTorch gives the same structure

    x = np.random.default_rng(1).standard_normal((3, 1, 6, 6))
    model.double()
    model.eval()  # gradcheck needs a deterministic forward (no dropout mask)
    assert tinynet.gradcheck(model, x, n_samples=10)
    model.train()
    assert all(m.training for m in model.modules())


def test_beyond_layers_optimizers_and_transforms_on_the_strict_device(monkeypatch):
    """BatchNorm, Dropout, the pools, AdamW + OneCycleLR and the augmentation never call NumPy
    on device arrays (the stand-in device of test_no_numpy_in_layers raises if they do)."""
    from test_no_numpy_in_layers import StrictArray, StrictBackend

    from tinynet import backend as B
    from tinynet.data.transforms import Compose, RandomCrop, RandomHorizontalFlip

    strict = StrictBackend()
    monkeypatch.setitem(B._backends, "cpu", strict)
    tinynet.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3),
    )
    opt = tinynet.optim.AdamW(model.parameters(), lr=0.01, amsgrad=True)
    sched = tinynet.optim.OneCycleLR(opt, max_lr=0.05, total_steps=3)
    aug = Compose([RandomCrop(8, padding=1, fill=-1.0), RandomHorizontalFlip()])
    rng = np.random.default_rng(0)
    x = strict.asarray(rng.standard_normal((5, 1, 8, 8)), "float32")
    y = strict.asarray(rng.integers(0, 3, 5), "int64")
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(aug(x)), y)
        dx = model.backward(loss_fn.backward())
        opt.step()
        sched.step()
    assert isinstance(dx, StrictArray) and isinstance(aug(x), StrictArray)
    for state in opt.state.values():
        assert all(isinstance(state[k], StrictArray) for k in ("exp_avg", "exp_avg_sq"))
    for name, b in model.named_buffers():
        assert isinstance(b, StrictArray), name
    model.eval()
    with tinynet.no_grad():
        assert isinstance(model(x), StrictArray)
