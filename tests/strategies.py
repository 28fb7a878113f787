"""Hypothesis strategies for the core tests: layer configurations and the arrays to feed them.

Configurations draw every size independently (so non-square images, kernels, strides and paddings
come up, and strides larger than the kernel too) but only VALID combinations: the padded input is
at least as large as the kernel, and max-pool padding is at most half the kernel, as in PyTorch.

Arrays come from a drawn seed (NumPy's generator does the bulk work, hypothesis shrinks the seed):

* :func:`kink_free_arrays`: normal numbers with ``|x| >= 0.01``, so a finite-difference step of
  1e-6 never crosses ReLU's kink at 0;
* :func:`tie_free_arrays`: a random permutation of well-separated values, so no max-pool window
  has two equal maxima (the derivative of a max is undefined at a tie);
* :func:`normal_arrays`: plain normal numbers.

Also here: :func:`numeric_grad` (central differences, independent of ``tinynet.gradcheck``) and
:func:`course_network`, the network the course trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import tinynet
import tinynet.nn as nn
from tinynet.models import course_cnn

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """PyTorch's ``floor((size + 2*padding - kernel) / stride) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _maybe_int(pair: tuple[int, int], as_int: bool):
    """Sizes go in as an int when both are equal and ``as_int`` (both spellings are API)."""
    return pair[0] if as_int and pair[0] == pair[1] else pair


# ----------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvConfig:
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    as_int: bool  # pass kernel/stride/padding as ints where square

    @property
    def x_shape(self):
        return (self.n, self.c_in, self.h, self.w)

    @property
    def w_shape(self):
        return (self.c_out, self.c_in) + self.kernel

    @property
    def y_shape(self):
        return (self.n, self.c_out,
                out_size(self.h, self.kernel[0], self.stride[0], self.padding[0]),
                out_size(self.w, self.kernel[1], self.stride[1], self.padding[1]))

    @property
    def kernel_arg(self):
        return _maybe_int(self.kernel, self.as_int)

    @property
    def stride_arg(self):
        return _maybe_int(self.stride, self.as_int)

    @property
    def padding_arg(self):
        return _maybe_int(self.padding, self.as_int)

    def module(self, **kw) -> nn.Conv2d:
        return nn.Conv2d(self.c_in, self.c_out, self.kernel_arg, stride=self.stride_arg,
                         padding=self.padding_arg, bias=self.bias, **kw)


@st.composite
def conv_configs(draw, max_batch=3, max_c_in=3, max_c_out=4, max_hw=9, max_kernel=4,
                 max_stride=4, max_padding=2) -> ConvConfig:
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    sh, sw = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
    ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
    h = draw(st.integers(max(1, kh - 2 * ph), max(max_hw, kh)))
    w = draw(st.integers(max(1, kw - 2 * pw), max(max_hw, kw)))
    return ConvConfig(
        n=draw(st.integers(1, max_batch)), c_in=draw(st.integers(1, max_c_in)),
        c_out=draw(st.integers(1, max_c_out)), h=h, w=w, kernel=(kh, kw), stride=(sh, sw),
        padding=(ph, pw), bias=draw(st.booleans()), as_int=draw(st.booleans()),
    )


@dataclass(frozen=True)
class PoolConfig:
    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int] | None  # None: the default (= kernel)
    padding: tuple[int, int]
    as_int: bool

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def effective_stride(self):
        return self.kernel if self.stride is None else self.stride

    @property
    def y_shape(self):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.effective_stride, self.padding
        return (self.n, self.c, out_size(self.h, kh, sh, ph), out_size(self.w, kw, sw, pw))

    @property
    def kernel_arg(self):
        return _maybe_int(self.kernel, self.as_int)

    @property
    def stride_arg(self):
        return None if self.stride is None else _maybe_int(self.stride, self.as_int)

    @property
    def padding_arg(self):
        return _maybe_int(self.padding, self.as_int)

    def module(self) -> nn.MaxPool2d:
        if self.stride is None:
            return nn.MaxPool2d(self.kernel_arg, padding=self.padding_arg)
        return nn.MaxPool2d(self.kernel_arg, stride=self.stride_arg, padding=self.padding_arg)


@st.composite
def pool_configs(draw, max_batch=3, max_c=3, max_hw=9, max_kernel=4, max_stride=5) -> PoolConfig:
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.none() | st.tuples(st.integers(1, max_stride), st.integers(1, max_stride)))
    h = draw(st.integers(max(1, kh - 2 * ph), max(max_hw, kh)))
    w = draw(st.integers(max(1, kw - 2 * pw), max(max_hw, kw)))
    return PoolConfig(n=draw(st.integers(1, max_batch)), c=draw(st.integers(1, max_c)), h=h, w=w,
                      kernel=(kh, kw), stride=stride, padding=(ph, pw),
                      as_int=draw(st.booleans()))


@dataclass(frozen=True)
class LinearConfig:
    n: int
    in_features: int
    out_features: int
    bias: bool

    @property
    def x_shape(self):
        return (self.n, self.in_features)

    @property
    def w_shape(self):
        return (self.out_features, self.in_features)

    @property
    def y_shape(self):
        return (self.n, self.out_features)

    def module(self, **kw) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias, **kw)


@st.composite
def linear_configs(draw, max_batch=4, max_in=6, max_out=5) -> LinearConfig:
    return LinearConfig(n=draw(st.integers(1, max_batch)), in_features=draw(st.integers(1, max_in)),
                        out_features=draw(st.integers(1, max_out)), bias=draw(st.booleans()))


@dataclass(frozen=True)
class LossConfig:
    n: int
    classes: int
    scale: float  # spread of the logits
    label_dtype: str

    @property
    def logits_shape(self):
        return (self.n, self.classes)


@st.composite
def loss_configs(draw, max_batch=5, max_classes=6) -> LossConfig:
    return LossConfig(n=draw(st.integers(1, max_batch)), classes=draw(st.integers(1, max_classes)),
                      scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
                      label_dtype=draw(st.sampled_from(["int64", "int32", "uint8"])))


@st.composite
def flatten_cases(draw, max_ndim=5):
    """(shape, start_dim, end_dim) with start <= end once negative dims are resolved."""
    ndim = draw(st.integers(2, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    start = draw(st.integers(0, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    if draw(st.booleans()):
        start -= ndim
    if draw(st.booleans()):
        end -= ndim
    return shape, start, end


# ----------------------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------------------
def normal(seed: int, shape, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def kink_free(seed: int, shape, margin: float = 0.01, dtype=np.float64) -> np.ndarray:
    """Normal numbers pushed at least ``margin`` away from 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (sign * (np.abs(x) + margin)).astype(dtype)


def tie_free(seed: int, shape, gap: float = 0.05, dtype=np.float64) -> np.ndarray:
    """A random permutation of values ``gap`` apart, centred on 0 and at least gap/4 from 0."""
    size = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(size).astype(np.float64)
    return ((perm - size // 2 + 0.25) * gap).reshape(shape).astype(dtype)


def normal_arrays(shape, scale: float = 1.0, dtype=np.float64):
    return seeds.map(lambda s: normal(s, shape, scale, dtype))


def kink_free_arrays(shape, dtype=np.float64):
    return seeds.map(lambda s: kink_free(s, shape, dtype=dtype))


def tie_free_arrays(shape, dtype=np.float64):
    return seeds.map(lambda s: tie_free(s, shape, dtype=dtype))


def labels_for(seed: int, n: int, classes: int, dtype="int64") -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def numeric_grad(f, x: np.ndarray, eps: float = 1e-6, indices=None) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x`` (perturbed IN PLACE).

    Independent of ``tinynet.gradcheck``. ``indices``: flat indices to check (default: all);
    entries not checked are NaN in the result.
    """
    assert x.dtype == np.float64
    grad = np.full(x.shape, np.nan)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, x)
    for j in range(x.size) if indices is None else indices:
        orig = flat[j]
        flat[j] = orig + eps
        plus = float(f())
        flat[j] = orig - eps
        minus = float(f())
        flat[j] = orig
        gflat[j] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, what="", rtol=1e-5, atol=1e-6):
    analytic = tinynet.to_numpy(analytic)
    mask = ~np.isnan(numeric)
    assert analytic.shape == numeric.shape, f"{what}: shape {analytic.shape} != {numeric.shape}"
    np.testing.assert_allclose(analytic[mask], numeric[mask], rtol=rtol, atol=atol, err_msg=what)


COURSE_INPUT = (1, 28, 28)


def course_network(dtype=None, device=None) -> nn.Sequential:
    """The course network, as tinynet ships it (``tinynet.models.course_cnn``): Conv(1,6,5) ReLU
    Pool(2) Conv(6,12,5) ReLU Pool(2) Flatten Linear(192,120) ReLU Linear(120,60) ReLU
    Linear(60,10): 28x28 grey images -> 10 logits."""
    return course_cnn(dtype=dtype, device=device)


COURSE_KEYS = ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
               "9.weight", "9.bias", "11.weight", "11.bias"]
COURSE_SHAPES = {"0.weight": (6, 1, 5, 5), "0.bias": (6,), "3.weight": (12, 6, 5, 5),
                 "3.bias": (12,), "7.weight": (120, 192), "7.bias": (120,),
                 "9.weight": (60, 120), "9.bias": (60,), "11.weight": (10, 60), "11.bias": (10,)}


# ----------------------------------------------------------------------------------------------
# Beyond the course network: BatchNorm, average pooling
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchNormCase:
    """An input shape for BatchNorm1d/2d (train mode: more than one value per channel)."""

    shape: tuple
    constant_channel: int | None  # a channel whose values are all equal (variance 0), or None

    @property
    def channels(self) -> int:
        return self.shape[1]


@st.composite
def batchnorm_cases(draw, ndim: int = 4, max_batch=4, max_c=3, max_hw=4) -> BatchNormCase:
    """(N, C, H, W) for ndim 4, (N, C) or (N, C, L) for ndim 2/3; N = 1 appears with spatial > 1."""
    c = draw(st.integers(1, max_c))
    spatial = tuple(draw(st.integers(1, max_hw)) for _ in range(ndim - 2))
    m_spatial = int(np.prod(spatial)) if spatial else 1
    n = draw(st.integers(1 if m_spatial > 1 else 2, max_batch))
    const = draw(st.none() | st.integers(0, c - 1))
    return BatchNormCase((n, c) + spatial, const)


@dataclass(frozen=True)
class AvgPoolConfig:
    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int] | None
    padding: tuple[int, int]

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        (kh, kw), (ph, pw) = self.kernel, self.padding
        sh, sw = self.kernel if self.stride is None else self.stride
        return (self.n, self.c, out_size(self.h, kh, sh, ph), out_size(self.w, kw, sw, pw))


@st.composite
def avgpool_configs(draw, max_batch=3, max_c=3, max_hw=8, max_kernel=4,
                    max_stride=4) -> AvgPoolConfig:
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.none() | st.tuples(st.integers(1, max_stride), st.integers(1, max_stride)))
    h = draw(st.integers(max(1, kh - 2 * ph), max(max_hw, kh)))
    w = draw(st.integers(max(1, kw - 2 * pw), max(max_hw, kw)))
    return AvgPoolConfig(draw(st.integers(1, max_batch)), draw(st.integers(1, max_c)), h, w,
                         (kh, kw), stride, (ph, pw))


@st.composite
def adaptive_pool_cases(draw, max_batch=2, max_c=3, max_hw=7):
    """(x shape, output size): any output size up to the input size (dividing it or not)."""
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    out = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    return (draw(st.integers(1, max_batch)), draw(st.integers(1, max_c)), h, w), out


# -- geometries for the kernel-level tests (tests/test_reference_kernels.py, test_fast_engine.py)
@st.composite
def conv_geometry(draw):
    if draw(st.integers(0, 2)) == 0:
        # a third of them "same": stride 1 and 2*padding = kernel - 1, the output the input's
        # size (the fast engine's same-rows layout; widths below the kernel's included)
        kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
        (sh, sw), (ph, pw) = (1, 1), ((kh - 1) // 2, (kw - 1) // 2)
    else:
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 9))
    W = draw(st.integers(max(1, kw - 2 * pw), 9))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return (n, c, H, W), (f, c, kh, kw), (sh, sw), (ph, pw), draw(st.booleans())


@st.composite
def pool_geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 9))
    W = draw(st.integers(max(1, kw - 2 * pw), 9))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W), (kh, kw), (sh, sw), (ph, pw)
