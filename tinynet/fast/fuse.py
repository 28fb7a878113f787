"""Fusion as an explicit step: ``tinynet.fuse(model)`` runs a layer and the ReLU (and max pooling)
after it as one call.

In a plain model every module reads its whole input and writes its whole output: a ReLU after a
convolution is one more pass over memory, a max pooling another. The fused module does those
steps inside the convolution, on each thread's block of images while it is still in the core's
cache (the ``relu=`` and ``pool=`` epilogues of ``conv.py``), and its backward applies their
backward as the convolution reorders dY anyway.

``fuse`` returns a NEW model: the original is left as it is and keeps working on its own. The
fused model shares the original's Parameters, buffers and train/eval mode (an optimizer over
``model.parameters()`` trains both; ``model.eval()`` puts both in evaluation), but keeps its
own forward caches, so the two can run in any order; save the original (its state-dict keys
are the plain ones).
Each fused group computes exactly the same outputs and gradients as its modules run one by one
(tested bit for bit), with one exception: a Conv2d+BatchNorm2d group (:class:`ConvBN`) in
evaluation under ``no_grad`` folds the BatchNorm into the convolution's weights and bias, equal to
the plain model to rounding only (in training it runs its modules in turn, its max pooling before
its ReLU, bit for bit). Inside ``tinynet.use_reference()``, or off the CPU, a fused group runs the
same steps' kernels in turn (keeping their caches itself: its modules' own state is untouched).
"""

from __future__ import annotations

import copy
from typing import Any

from .. import kernels
from ..backend import device_of, is_grad_enabled
from ..nn._checks import check_layer_input
from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.conv import Conv2d
from ..nn.linear import Linear
from ..nn.module import _NO_CACHE, Module, Sequential
from ..nn.pooling import MaxPool2d
from . import conv as fast_conv
from .activation import relu_in_place

_POOL_FIRST = True  # (a switch for benchmarks/ab_nets.py: see ConvBN)


class _InTurn(tuple):
    """The caches of a group whose kernels ran one after another (reference mode, or no fast
    kernel for the device): one per step, in forward order."""


class _Fused(Module):
    """A layer and the operations after it, run as one call (see the module docstring).

    Subclasses give ``check(x)``, ``one_call(x) -> (y, cache)`` with its
    ``one_call_backward(dy, cache, input_grad) -> (dx, dw, db)``, and ``steps``: the same math as
    dispatcher calls, run in turn where the fast engine has no fused kernel.
    """

    accepts_input_grad = True

    def __init__(self, *parts: Module) -> None:
        super().__init__()
        for i, part in enumerate(parts):
            self._modules[str(i)] = part

    @property
    def parts(self) -> list:
        return list(self._modules.values())

    def forward(self, x: Any) -> Any:
        self.check(x)
        if kernels.get_mode() == "fast" and device_of(x) == "cpu":
            y, cache = self.one_call(x)
        else:  # the same steps through the dispatcher, their caches kept here
            y, caches = x, []
            for step_forward, _ in self.steps():
                y, c = step_forward(y)
                caches.append(c)
            cache = _InTurn(caches)
        self.save_for_backward((cache, y.shape))
        return y

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        cache, y_shape = self.saved()
        self.check_grad_output(grad_output, y_shape)
        if isinstance(cache, _InTurn):
            steps = self.steps()
            d = grad_output
            for (_, step_backward), c in zip(reversed(steps[1:]), reversed(cache[1:]),
                                             strict=True):
                d = step_backward(d, c)
            dx, dw, db = steps[0][1](d, cache[0], input_grad)
        else:
            dx, dw, db = self.one_call_backward(grad_output, cache, input_grad)
        layer = self.parts[0]
        layer.weight.accumulate_grad(dw)
        if layer.bias is not None:
            layer.bias.accumulate_grad(db)
        return dx

    def __repr__(self) -> str:
        names = "+".join(type(p).__name__ for p in self.parts)
        args = [p.extra_repr() for p in self.parts]
        return f"{names}({' | '.join(a for a in args if a)})"


def _relu_step() -> tuple:
    return kernels.relu_forward, kernels.relu_backward


class ConvReLU(_Fused):
    """Conv2d + ReLU (+ MaxPool2d without padding) in one call."""

    def check(self, x: Any) -> None:
        conv = self.parts[0]
        check_layer_input(f"Conv2d({conv.extra_repr()})", x, conv.weight.data)
        out_shape = conv.output_shape(x.shape)
        if len(self.parts) > 2:
            self.parts[2].output_shape(out_shape)  # the pooling's own errors

    def _arguments(self) -> tuple:
        conv = self.parts[0]
        bias = None if conv.bias is None else conv.bias.data
        pool = self.parts[2] if len(self.parts) > 2 else None
        return conv, bias, pool

    def one_call(self, x: Any) -> tuple:
        conv, bias, pool = self._arguments()
        return fast_conv.conv2d_forward(
            x, conv.weight.data, bias, conv.stride, conv.padding, relu=True,
            pool=None if pool is None else (pool.kernel_size, pool.stride))

    def one_call_backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple:
        return fast_conv.conv2d_backward(dy, cache, input_grad=input_grad)

    def steps(self) -> list:
        conv, bias, pool = self._arguments()
        steps = [(lambda x: kernels.conv2d_forward(x, conv.weight.data, bias, conv.stride,
                                                   conv.padding),
                  lambda d, c, input_grad: kernels.conv2d_backward(d, c, input_grad=input_grad)),
                 _relu_step()]
        if pool is not None:
            steps.append((lambda x: kernels.maxpool2d_forward(x, pool.kernel_size, pool.stride),
                          kernels.maxpool2d_backward))
        return steps


class LinearReLU(_Fused):
    """Linear + ReLU in one call: ``y = max(x @ W^T + b, 0)``, the ReLU applied in place."""

    def check(self, x: Any) -> None:
        linear = self.parts[0]
        check_layer_input(f"Linear({linear.extra_repr()})", x, linear.weight.data)
        linear.output_shape(x.shape)

    def one_call(self, x: Any) -> tuple:
        linear = self.parts[0]
        y = x @ linear.weight.data.T
        if linear.bias is not None:
            y += linear.bias.data
        relu_in_place(y)
        return y, ((y > 0) if is_grad_enabled() else None, x)

    def one_call_backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple:
        mask, x = cache
        g = dy * mask  # dL/d(linear output): the ReLU's backward first
        linear = self.parts[0]
        dx = g @ linear.weight.data if input_grad else None
        return dx, g.T @ x, (g.sum(axis=0) if linear.bias is not None else None)

    def steps(self) -> list:
        linear = self.parts[0]
        bias = None if linear.bias is None else linear.bias.data
        return [(lambda x: kernels.linear_forward(x, linear.weight.data, bias),
                 lambda d, c, input_grad: kernels.linear_backward(d, c, input_grad=input_grad)),
                _relu_step()]


class ConvBN(Module):
    """Conv2d + BatchNorm2d (+ ReLU (+ MaxPool2d without padding)).

    **Training** (and whenever a backward may follow, inside the reference mode or off the CPU):
    the modules run in turn, exactly as in the plain model (each one a twin of the original that
    shares its Parameters and running statistics but keeps its own cache), with one swap: the max
    pooling runs BEFORE the ReLU, so that the ReLU and its backward see a quarter of the numbers
    (for 2x2 pooling). The two commute exactly, ``maxpool(relu(z)) = relu(maxpool(z))`` (ReLU
    never changes the order of two numbers), and so do their gradients: where a window's
    maximum is positive both orders route dy to its first maximum; where it is <= 0 both give 0.
    Bit for bit the plain model's numbers (tested).

    **Evaluation under** ``tinynet.no_grad()``: the BatchNorm is a fixed per-channel affine map,
    ``y = s * (conv(x) - mean) + beta`` with ``s = gamma / sqrt(running_var + eps)``, and a
    convolution is linear in its weights, so it folds into the convolution (a standard inference
    trick)::

        W'[f] = s[f] * W[f]        b'[f] = s[f] * (b[f] - mean[f]) + beta[f]

    and the group is ONE convolution with ReLU and pooling epilogues: no pass for the BatchNorm,
    no batch-sized arrays between the steps. The results equal the plain model's to rounding
    (the products are summed in another order), not bit for bit.
    """

    accepts_input_grad = True

    def __init__(self, *parts: Module) -> None:
        super().__init__()
        for i, part in enumerate(parts):
            self._modules[str(i)] = _own_state(part)

    @property
    def parts(self) -> list:
        return list(self._modules.values())

    def _foldable(self, x: Any) -> bool:
        bn = self.parts[1]
        return (not bn.training and not is_grad_enabled() and kernels.get_mode() == "fast"
                and device_of(x) == "cpu" and bn.track_running_stats
                and bn.running_mean is not None)

    def folded(self) -> tuple:
        """``(W', b')``: the convolution's weights and bias with the BatchNorm folded in."""
        conv, bn = self.parts[:2]
        w = conv.weight.data
        scale = 1.0 / (bn.running_var.astype(w.dtype) + w.dtype.type(bn.eps)) ** 0.5
        if bn.affine:
            scale = scale * bn.weight.data
        shift = -bn.running_mean.astype(w.dtype)
        if conv.bias is not None:
            shift = shift + conv.bias.data
        shift = shift * scale
        if bn.affine:
            shift = shift + bn.bias.data
        return w * scale.reshape(-1, 1, 1, 1), shift

    def _in_turn(self) -> list:
        """The modules in the order they run: the pooling before the ReLU (see the docstring)."""
        parts = self.parts
        return parts[:2] + parts[3:] + parts[2:3] if len(parts) == 4 and _POOL_FIRST else parts

    def forward(self, x: Any) -> Any:
        if not self._foldable(x):  # the modules in turn, as in the plain model
            for part in self._in_turn():
                x = part(x)
            return x
        conv = self.parts[0]
        check_layer_input(f"Conv2d({conv.extra_repr()})", x, conv.weight.data)
        pool = self.parts[3] if len(self.parts) > 3 else None
        if pool is not None:
            pool.output_shape(conv.output_shape(x.shape))  # the pooling's own errors
        for part in self.parts:  # (a later backward finds no stale cache: it is an error)
            part.save_for_backward(None)
        weight, bias = self.folded()
        y, _ = fast_conv.conv2d_forward(
            x, weight, bias, conv.stride, conv.padding, relu=len(self.parts) > 2,
            pool=None if pool is None else (pool.kernel_size, pool.stride))
        return y

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        parts = self._in_turn()
        d = grad_output
        for part in reversed(parts[1:]):
            d = part.backward(d)
        return parts[0].backward(d, input_grad=input_grad)

    def __repr__(self) -> str:
        names = "+".join(type(p).__name__ for p in self.parts)
        args = [p.extra_repr() for p in self.parts]
        return f"{names}({' | '.join(a for a in args if a)})"


def _plain(module: Module, cls: type) -> bool:
    """Exactly that class, with no forward or backward replaced on the instance (a recording
    wrapper, as tinynet.inspect puts on, must see every call)."""
    d = module.__dict__
    return type(module) is cls and "forward" not in d and "backward" not in d


def _own_state(module: Module) -> Module:
    """A leaf module that shares the original's Parameters, buffers and train/eval mode but keeps
    its own cache, so that running the plain model and the fused one in any order never mixes
    their forward passes. (A module with children, or one wrapped on the instance, is kept as it
    is.)"""
    d = module.__dict__
    if module._modules or "forward" in d or "backward" in d:
        return module
    twin = copy.copy(module)  # (the same _parameters and _buffers tables: shared weights)
    twin.__class__ = _twin_class(type(module))
    object.__setattr__(twin, "_original", module)
    object.__setattr__(twin, "_cache", _NO_CACHE)
    return twin


_TWIN_CLASSES: dict = {}


def _twin_class(cls: type) -> type:
    """``cls`` whose ``training`` is the original module's: ``model.eval()`` on the plain model
    puts the fused one in evaluation too (a BatchNorm or Dropout in the other mode would compute
    something else without a word), and ``fused.train()`` the plain one."""
    twin = _TWIN_CLASSES.get(cls)
    if twin is None:
        def get(self: Module) -> bool:
            return self.__dict__["_original"].training

        def put(self: Module, mode: bool) -> None:
            object.__setattr__(self.__dict__["_original"], "training", mode)

        twin = type(cls.__name__, (cls,), {"training": property(get, put),
                                           "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
        _TWIN_CLASSES[cls] = twin
    return twin


def fuse(model: Module) -> Module:
    """A new model in which each Conv2d+ReLU(+MaxPool2d) and Linear+ReLU runs as one call, and
    each Conv2d+BatchNorm2d(+ReLU(+MaxPool2d)) is one group (:class:`ConvBN`: the modules in turn
    in training, one folded convolution in evaluation).

    Works on a :class:`Sequential` (nested ones too); any other module is returned as it is. The
    groups share the original's Parameters; ``repr`` shows them, e.g. ``Conv2d+ReLU+MaxPool2d``.
    """
    if not isinstance(model, Sequential):
        return model
    children = [fuse(m) if isinstance(m, Sequential) else m for m in model]
    out, i = [], 0
    while i < len(children):
        m = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        after = children[i + 2] if i + 2 < len(children) else None
        if (nxt is not None and _plain(nxt, BatchNorm2d) and _plain(m, Conv2d)
                and nxt.num_features == m.out_channels):
            group = [m, nxt]
            if after is not None and _plain(after, ReLU):
                group.append(after)
                last = children[i + 3] if i + 3 < len(children) else None
                if last is not None and _plain(last, MaxPool2d) and last.padding == (0, 0):
                    group.append(last)
            out.append(ConvBN(*group))
            i += len(group)
        elif nxt is not None and _plain(nxt, ReLU) and _plain(m, Conv2d):
            if after is not None and _plain(after, MaxPool2d) and after.padding == (0, 0):
                out.append(ConvReLU(m, nxt, after))
                i += 3
            else:
                out.append(ConvReLU(m, nxt))
                i += 2
        elif nxt is not None and _plain(nxt, ReLU) and _plain(m, Linear):
            out.append(LinearReLU(m, nxt))
            i += 2
        else:
            out.append(_own_state(m))
            i += 1
    fused = Sequential(*out)
    fused.train(model.training)
    return fused
