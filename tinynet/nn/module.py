"""Module, Parameter and Sequential: the building blocks that own weights and run backward.

A :class:`Module` is a piece of a network. Its ``forward(x)`` computes the output and keeps what
the backward pass will need (a small named cache); its ``backward(grad_output)`` receives dL/doutput
and returns dL/dinput, ADDING the gradients of its own weights into each ``Parameter.grad`` (so two
backward passes accumulate, as in PyTorch; ``zero_grad()`` clears them).

Layers own weights (Conv2d, Linear); operations (ReLU, MaxPool2d, Flatten) own none. Both are
modules, so a network is simply a :class:`Sequential` of them.

Writing your own module::

    class Scale(tinynet.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = tinynet.nn.Parameter(tinynet.backend.get_backend().xp.ones(n, "float32"))

        def forward(self, x):                       # x: (N, n)
            self.save_for_backward(x)               # the cache (skipped under tinynet.no_grad())
            return x * self.weight.data

        def backward(self, grad_output):            # dL/dy: (N, n)
            x = self.saved()                        # RuntimeError if forward did not run first
            self.weight.accumulate_grad((grad_output * x).sum(axis=0))   # dL/dw
            return grad_output * self.weight.data   # dL/dx
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Iterator

from .. import backend as B

_NO_CACHE = object()


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data: the values (NumPy or CuPy array).
        grad: dL/ddata with the same shape, or None before the first backward / after zero_grad.
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return B.device_of(self.data)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate_grad(self, grad: Any) -> None:
        """``grad += g`` (the first backward stores g itself; kernels return fresh arrays)."""
        if grad.shape != self.data.shape:
            raise ValueError(
                f"gradient of shape {tuple(grad.shape)} for a parameter of shape {self.shape}"
            )
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=False)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


class Module:
    """Base class of every layer and operation.

    Subclasses set parameters (:class:`Parameter`) and sub-modules as attributes in ``__init__``
    (after ``super().__init__()``), and implement ``forward`` and ``backward``.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", _NO_CACHE)

    # -- attribute registration ------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}: call super().__init__() at the start of __init__, "
                f"before setting self.{name}"
            )
        for table in (self._parameters, self._buffers, self._modules):
            if name in table and not (
                (table is self._parameters and isinstance(value, Parameter))
                or (table is self._modules and isinstance(value, Module))
                or table is self._buffers
            ):
                del table[name]
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Any) -> None:
        """A state array that is saved in the state dict but not trained (e.g. running means)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    # -- forward / backward ------------------------------------------------------------------
    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def backward(self, grad_output: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement backward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def save_for_backward(self, cache: Any) -> None:
        """Keep ``cache`` for the next backward (nothing is kept inside ``tinynet.no_grad()``)."""
        object.__setattr__(self, "_cache", cache if B.is_grad_enabled() else _NO_CACHE)

    def saved(self) -> Any:
        """Take the cache that forward kept; a backward without a forward before it is an error."""
        cache = self._cache
        if cache is _NO_CACHE:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a forward pass first: run the module on a "
                "batch (outside tinynet.no_grad()) before each backward; backward runs once per "
                "forward"
            )
        object.__setattr__(self, "_cache", _NO_CACHE)
        return cache

    def check_grad_output(self, grad_output: Any, expected_shape: tuple,
                          expected_dtype: Any = None) -> None:
        """A gradient must have the shape and dtype of the output it belongs to.

        ``expected_dtype`` defaults to the dtype of the module's parameters (if it has any): a
        float64 gradient sent into a float32 model is refused rather than silently upcasting it.
        """
        if tuple(getattr(grad_output, "shape", ())) != tuple(expected_shape):
            raise ValueError(
                f"{type(self).__name__}.backward: expected a gradient of shape "
                f"{tuple(expected_shape)} (the shape of the forward output), got "
                f"{tuple(getattr(grad_output, 'shape', ()))}"
            )
        expected_dtype = self.dtype if expected_dtype is None else expected_dtype
        if expected_dtype is not None and grad_output.dtype != expected_dtype:
            raise TypeError(
                f"{type(self).__name__}.backward: expected a {expected_dtype} gradient (the dtype "
                f"of the forward output), got {grad_output.dtype}; convert it with "
                f".astype('{expected_dtype}')"
            )

    # -- walking the tree ----------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    # -- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (the default): matters for layers like Dropout and BatchNorm."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (to None, or to zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # -- devices and dtypes ------------------------------------------------------------------
    @property
    def device(self) -> str | None:
        """The device of the parameters (None for a module without parameters or buffers)."""
        for p in self.parameters():
            return p.device
        for _, b in self.named_buffers():
            return B.device_of(b)
        return None

    @property
    def dtype(self):
        """The dtype of the parameters (None for a module without parameters)."""
        for p in self.parameters():
            return p.dtype
        return None

    def _apply(self, fn) -> Module:
        for m in self.modules():
            for p in m._parameters.values():
                p.data = fn(p.data)
                if p.grad is not None:
                    p.grad = fn(p.grad)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = fn(b)
            object.__setattr__(m, "_cache", _NO_CACHE)
        return self

    def to(self, device: Any = None, dtype: Any = None) -> Module:
        """Move parameters, gradients and buffers to ``device`` and/or cast them to ``dtype``."""
        if device is not None:
            name = B.normalize_device(device)
            B.get_backend(name)  # clear error when the device is unusable
            self._apply(lambda a: B.to_device(a, name))
        if dtype is not None:
            dt = B.normalize_dtype(dtype)
            self._apply(lambda a: a.astype(dt) if a.dtype.kind == "f" else a)
        return self

    def double(self) -> Module:
        """Cast floating parameters and buffers to float64 (for gradient checks)."""
        return self.to(dtype=B.float64)

    def float(self) -> Module:
        """Cast floating parameters and buffers to float32."""
        return self.to(dtype=B.float32)

    def copy(self) -> Module:
        """A deep copy (weights included, caches dropped)."""
        return copy.deepcopy(self)

    # -- state dict ----------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Parameters and buffers by PyTorch's key names (``0.weight``, ``conv1.bias``, ...).

        The values are the arrays themselves (on the module's device); use ``tinynet.save`` to
        write them to a file.
        """
        state = OrderedDict()
        for mod_name, mod in self.named_modules():  # PyTorch's order: each module's own
            prefix = f"{mod_name}." if mod_name else ""  # parameters, then its buffers
            for name, p in mod._parameters.items():
                state[prefix + name] = p.data
            for name, b in mod._buffers.items():
                if b is not None:
                    state[prefix + name] = b
        return state

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> Module:
        """Copy arrays from ``state_dict`` into the parameters and buffers (shapes must match).

        Accepts NumPy or CuPy arrays (and PyTorch tensors: anything with
        ``.detach().cpu().numpy()``);
        values are copied to each parameter's device and dtype. With ``strict``, a missing or
        unexpected key is an error naming the key.
        """
        targets = OrderedDict()
        for mod_name, mod in self.named_modules():
            for name in mod._parameters:
                targets[f"{mod_name}.{name}" if mod_name else name] = (mod, name, "p")
            for name, b in mod._buffers.items():
                if b is not None:  # an unused buffer is not part of the state
                    targets[f"{mod_name}.{name}" if mod_name else name] = (mod, name, "b")
        keys = list(state_dict.keys())
        if strict:
            missing = [k for k in targets if k not in state_dict]
            unexpected = [k for k in keys if k not in targets]
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"missing keys: {', '.join(missing)}")
                if unexpected:
                    parts.append(f"unexpected keys: {', '.join(unexpected)}")
                raise KeyError(
                    f"load_state_dict into {type(self).__name__}: " + "; ".join(parts)
                    + f". The model expects: {', '.join(targets) or '(nothing)'}"
                )
        for key, value in state_dict.items():
            if key not in targets:
                continue
            mod, name, kind = targets[key]
            if hasattr(value, "detach") and hasattr(value, "numpy"):
                value = value.detach().cpu().numpy()
            current = mod._parameters[name].data if kind == "p" else mod._buffers[name]
            shape = tuple(getattr(value, "shape", ()))
            if current is not None and shape != tuple(current.shape):
                raise ValueError(
                    f"load_state_dict: '{key}' has shape {shape} in the state dict but "
                    f"{tuple(current.shape)} in the model"
                )
            device = B.device_of(current) if current is not None else B.get_default_device()
            dtype = current.dtype if current is not None else None
            new = B.get_backend(device).asarray(B.to_numpy(value) if B.device_of(value) != device
                                                 else value, dtype=dtype)
            if kind == "p":
                mod._parameters[name].data = new.copy()
            else:
                mod._buffers[name] = new.copy()
        return self

    # -- printing ------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The arguments shown inside the parentheses of ``repr`` (override in subclasses)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        main = f"{type(self).__name__}({self.extra_repr()}"
        if lines:
            return main + "\n" + "\n".join(lines) + "\n)"
        return main + ")"


class Sequential(Module):
    """A chain of modules: forward runs them in order, backward in reverse order.

    Example::

        model = Sequential(Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(6*12*12, 10))
        logits = model(x)              # forward through every module
        dx = model.backward(dlogits)   # backward through every module, last first
        model.backward(dlogits, input_grad=False)   # the same, without dL/dx (returns None)

    Nobody needs dL/dx of the network's input when training (the images do not learn), and the
    first layer's dX is costly (for a convolution: a product and a col2im). With
    ``input_grad=False`` the first module skips it, if its class says it can
    (``accepts_input_grad = True``: Conv2d, Linear, Sequential); other first modules compute dX
    as usual and backward returns it.
    """

    accepts_input_grad = True  # a nested Sequential passes input_grad on to its own first module

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(
                    f"Sequential takes modules, got {type(m).__name__} at position {name}"
                )
            self._modules[name] = m

    def append(self, module: Module) -> Sequential:
        self._modules[str(len(self._modules))] = module
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice) -> Module:
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*mods[index])
        return mods[index]

    def forward(self, x: Any) -> Any:
        """Each module in turn: ``x = module(x)``."""
        for module in self:
            x = module(x)
        return x

    def backward(self, grad_output: Any, input_grad: bool = True) -> Any:
        """Backward through every module, last first; returns dL/dinput.

        ``input_grad=False``: the first module skips dL/dinput when it accepts the option
        (its class has ``accepts_input_grad = True``) and None is returned; otherwise dL/dinput is
        computed as usual. The weight gradients are the same either way.
        """
        modules = list(self)
        if not modules:  # an empty chain is the identity
            return grad_output
        for module in reversed(modules[1:]):
            grad_output = module.backward(grad_output)
        first = modules[0]
        if not input_grad and getattr(type(first), "accepts_input_grad", False):
            return first.backward(grad_output, input_grad=False)
        return first.backward(grad_output)
