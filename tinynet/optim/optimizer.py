"""Optimizer base class: parameter groups, per-parameter state, zero_grad, state dicts."""

from __future__ import annotations

from typing import Any, Iterable

from .. import backend as B
from ..nn.module import Parameter


class Optimizer:
    """Holds the parameters to update (in groups with their own hyperparameters) and their state.

    ``param_groups`` is a list of dicts: ``{'params': [Parameter, ...], 'lr': 0.01, ...}``; a
    learning-rate schedule changes ``group['lr']``. ``state`` maps a parameter to its state
    (e.g. SGD's momentum buffer), on the parameter's device.
    """

    def __init__(self, params: Iterable, defaults: dict) -> None:
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if isinstance(params[0], dict):
            groups = params
        else:
            groups = [{"params": params}]
        self.param_groups: list[dict] = []
        for group in groups:
            self.add_param_group(group)
        self.state: dict[int, dict] = {}  # id(param) -> state

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        ps = list(group["params"])
        for p in ps:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} optimizes tinynet Parameters, got {type(p).__name__}; "
                    "pass model.parameters()"
                )
        group["params"] = ps
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        # hyperparameters as Python numbers: a NumPy float64 scalar would upcast float32 weights
        for key, value in list(group.items()):
            if key != "params" and isinstance(value, (int, float)) and not isinstance(value, bool):
                group[key] = float(value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter this optimizer updates."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self) -> None:
        raise NotImplementedError

    def _params(self) -> list[Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    # -- state dicts: parameters are named by their position, as in PyTorch --------------------
    def state_dict(self) -> dict:
        """``{'state': {index: {name: array}}, 'param_groups': [hyperparameters, param indices]}``.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[pid]: dict(s) for pid, s in self.state.items() if pid in index}
        groups = []
        for g in self.param_groups:
            entry = {k: v for k, v in g.items() if k != "params"}
            entry["params"] = [index[id(p)] for p in g["params"]]
            groups.append(entry)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state (arrays go to each parameter's device).
        """
        params = self._params()
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"])
            for g, mine in zip(groups, self.param_groups, strict=True)
        ):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved optimizer has "
                f"{[len(g['params']) for g in groups]} parameters per group, this one "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        for saved, mine in zip(groups, self.param_groups, strict=True):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = v
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            backend = B.get_backend(p.device)
            self.state[id(p)] = {
                k: (backend.asarray(B.to_numpy(v), dtype=p.dtype) if hasattr(v, "shape") and
                    getattr(v, "ndim", 0) > 0 else v)
                for k, v in s.items()
            }

    def to(self, device: Any) -> Optimizer:
        """Move the optimizer state (e.g. momentum buffers) to ``device``."""
        for s in self.state.values():
            for k, v in s.items():
                if hasattr(v, "shape"):
                    s[k] = B.to_device(v, device)
        return self

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"
