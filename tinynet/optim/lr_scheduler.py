"""Learning-rate schedules: change ``group['lr']`` of an optimizer as training goes on.

A schedule is stepped once per epoch or once per batch (``scheduler.step()`` after
``optimizer.step()``); each step sets the learning rate of every parameter group. The formulas and
the stepping convention are PyTorch's, so the same schedule gives the same numbers:

* creating the scheduler is step 0 (it sets the first learning rate);
* ``get_last_lr()`` is the list of learning rates it set last, one per parameter group;
* ``state_dict()`` / ``load_state_dict()`` save and restore it as JSON-friendly data, for
  checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

from .optimizer import Optimizer


class LRScheduler:
    """Base class: keeps ``last_epoch`` (how many times ``step()`` ran) and sets the learning rates.

    Subclasses implement :meth:`get_lr`, the learning rates for step ``last_epoch``.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs a tinynet optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", float(group["lr"]))
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{type(self).__name__}: resuming with last_epoch={last_epoch} needs "
                        f"'initial_lr' in param_groups[{i}] (load the optimizer's state first)"
                    )
        self.base_lrs: list[float] = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self._last_lr: list[float] = []
        self.step()  # step 0: set the first learning rate

    def get_lr(self) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_lr()")

    def step(self) -> None:
        """Advance the schedule by one epoch (or batch) and set the new learning rates."""
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = float(lr)
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``step()``, one per parameter group."""
        return list(self._last_lr)

    # attributes that are not plain state (the optimizer itself)
    _not_state = ("optimizer",)

    def state_dict(self) -> dict:
        """The schedule's position and settings, as JSON-friendly data (numbers, lists, strings)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if k not in self._not_state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned (the optimizer's own state is loaded apart)."""
        unknown = set(state_dict) - set(self.__dict__)
        if unknown:
            raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected keys "
                           f"{sorted(unknown)}; is this the state of another kind of schedule?")
        self.__dict__.update(state_dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` steps.

    ``lr_t = base_lr * gamma ** floor(t / step_size)`` (computed step by step, as PyTorch does).

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        step_size: steps (usually epochs) between two decays.
        gamma: the decay factor. Default: 0.1.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [g["lr"] for g in self.optimizer.param_groups]
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]


class CosineAnnealingLR(LRScheduler):
    r"""Lower the learning rate along half a cosine, from its initial value to ``eta_min``.

    ``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``: flat at the start,
    steepest in the middle, flat at the end; after T_max steps it climbs back (PyTorch's
    recursive form, which is what we compute, agrees with this formula for t <= T_max).

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        T_max: steps from the initial learning rate to ``eta_min``.
        eta_min: the final learning rate. Default: 0.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive int, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups, t, T, eta = self.optimizer.param_groups, self.last_epoch, self.T_max, self.eta_min
        if t == 0:
            return [g["lr"] for g in groups]
        if self._step_count == 1 and t > 0:  # resumed at step t: the closed form
            return [eta + (base - eta) * (1 + math.cos(t * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # at the bottom of the cosine, heading back up
            return [g["lr"] + (base - eta) * (1 - math.cos(math.pi / T)) / 2
                    for base, g in zip(self.base_lrs, groups, strict=True)]
        # ratio of consecutive values of the cosine curve, applied to the current learning rate
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (g["lr"] - eta) + eta for g in groups]


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin, 2018): warm up to ``max_lr``, then anneal far below.

    Stepped once per BATCH. With ``initial_lr = max_lr / div_factor`` and
    ``min_lr = initial_lr / final_div_factor``, over ``total_steps`` steps:

    * phase 1 (the first ``pct_start * total_steps`` steps): lr from initial_lr up to max_lr;
    * phase 2: lr from max_lr down to min_lr
      (``three_phase=True``: down to initial_lr in as many steps as phase 1, then to min_lr).

    Each phase interpolates with ``anneal(start, end, pct)``, pct going 0 -> 1 within the phase:
    ``'cos'``: ``end + (start - end) / 2 * (1 + cos(pi * pct))``; ``'linear'``:
    ``start + (end - start) * pct``. Phase ends are at steps ``pct_start*total_steps - 1`` and
    ``total_steps - 1`` (PyTorch's convention).

    With ``cycle_momentum`` (the default, as in PyTorch) the momentum moves the other way: from
    ``max_momentum`` down to ``base_momentum`` while the lr rises, and back up while it falls. It
    sets ``group['momentum']`` for SGD (overwriting the momentum it was created with, as PyTorch
    does) and beta1 of ``group['betas']`` for Adam/AdamW.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        max_lr: the peak learning rate.
        total_steps: the number of steps (batches) of the whole cycle; or give ``epochs`` and
            ``steps_per_epoch`` (total_steps = epochs * steps_per_epoch).
        pct_start: fraction of the cycle spent warming up. Default: 0.3.
        anneal_strategy: ``'cos'`` (default) or ``'linear'``.
        cycle_momentum: cycle the momentum / beta1 too. Default: True.
        base_momentum, max_momentum: the momentum range. Defaults: 0.85, 0.95.
        div_factor: initial_lr = max_lr / div_factor. Default: 25.
        final_div_factor: min_lr = initial_lr / final_div_factor. Default: 1e4.
        three_phase: the three-phase variant (see above). Default: False.

    Stepping more than ``total_steps - 1`` times after creation raises ValueError (PyTorch's rule).
    """

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or both epochs and "
                                 "steps_per_epoch (total_steps = epochs * steps_per_epoch)")
            if epochs <= 0 or steps_per_epoch <= 0:
                raise ValueError(f"OneCycleLR: epochs and steps_per_epoch must be positive, got "
                                 f"{epochs} and {steps_per_epoch}")
            total_steps = int(epochs) * int(steps_per_epoch)
        if total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be positive, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.total_steps = int(total_steps)
        self.anneal_strategy = anneal_strategy
        p = float(pct_start)
        if three_phase:
            self._schedule_phases = [
                dict(end_step=p * self.total_steps - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=2 * p * self.total_steps - 2, start_lr="max_lr",
                     end_lr="initial_lr", start_momentum="base_momentum",
                     end_momentum="max_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="initial_lr", end_lr="min_lr",
                     start_momentum="max_momentum", end_momentum="max_momentum"),
            ]
        else:
            self._schedule_phases = [
                dict(end_step=p * self.total_steps - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="max_lr", end_lr="min_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum"),
            ]
        groups = optimizer.param_groups
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * len(groups)
        if len(max_lrs) != len(groups):
            raise ValueError(f"OneCycleLR: {len(max_lrs)} values of max_lr for {len(groups)} "
                             "parameter groups")
        if last_epoch == -1:
            for group, m in zip(groups, max_lrs, strict=True):
                group["initial_lr"] = float(m) / float(div_factor)
                group["max_lr"] = float(m)
                group["min_lr"] = group["initial_lr"] / float(final_div_factor)
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = False
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("OneCycleLR: cycle_momentum needs an optimizer with 'momentum' "
                                 "(SGD) or 'betas' (Adam); pass cycle_momentum=False")
            self.use_beta1 = "betas" in optimizer.defaults
            bases = _per_group(base_momentum, len(groups))
            maxes = _per_group(max_momentum, len(groups))
            if last_epoch == -1:
                for group, b, m in zip(groups, bases, maxes, strict=True):
                    if self.use_beta1:
                        group["betas"] = (m, *group["betas"][1:])
                    else:
                        group["momentum"] = m
                    group["max_momentum"] = m
                    group["base_momentum"] = b
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; total_steps is "
                             f"{self.total_steps}. Give total_steps = epochs * batches per epoch")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step <= end_step or i == len(self._schedule_phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        mom = self._anneal(group[phase["start_momentum"]],
                                           group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (float(mom), *group["betas"][1:])
                else:
                    group["momentum"] = float(mom)
        return lrs


def _per_group(value: Any, n: int) -> list[float]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"OneCycleLR: {len(value)} values for {n} parameter groups")
        return [float(v) for v in value]
    return [float(value)] * n
