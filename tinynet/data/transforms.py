"""Data augmentation on whole batches: random flips and random crops, on the batch's device.

Augmentation shows the network a slightly different version of each training image every epoch
(shifted by a pixel or two, mirrored), so it learns what a "shirt" looks like rather than the
exact pixels of 60,000 pictures: a regulariser, like dropout. Only the training loader uses it.

Each transform is a callable object ``t(x) -> x`` for a batch ``x`` of shape (N, C, H, W) (what
:class:`tinynet.data.DataLoader` passes as ``transform``). It works on the whole batch at once (no
Python loop over the images), on the batch's device with the backend's ``xp``, and keeps the shape
and the dtype. Labels are not touched (a flipped or shifted shirt is still a shirt).

Randomness: each transform owns a generator on the batch's device, seeded from tinynet's host
generator when the transform is created, so ``tinynet.manual_seed(s)`` before creating it makes
the augmentation reproducible (or pass ``seed=``). ``state_dict()`` / ``load_state_dict()`` save
and restore where the generators are, so a run resumed from a checkpoint draws the same crops and
flips as one that never stopped (:class:`~tinynet.data.DataLoader` saves its transform's state
with its own).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from .. import backend as B
from .._utils import pair
from ..functional._geometry import pad2d, window_view


class _RandomTransform:
    """Holds one generator per device, all derived from one seed."""

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int(B.host_rng().integers(2**63))
        self.seed = int(seed)
        self._rngs: dict[str, Any] = {}

    def _uniform(self, x: Any, n: int) -> Any:
        """n numbers from U[0, 1) (float64) on x's device, from this transform's generator."""
        backend = B.backend_of(x)
        rng = self._rngs.get(backend.device)
        if rng is None:
            # the device's own generator type (NumPy's or CuPy's), seeded with our seed
            rng = self._rngs[backend.device] = backend.make_rng(self.seed)
        return rng.random(n, dtype=B.float64)

    def state_dict(self) -> dict:
        """The seed and the state of each device generator drawn from so far (JSON-friendly)."""
        states = {}
        for device, rng in self._rngs.items():
            state = getattr(getattr(rng, "bit_generator", None), "state", None)
            if isinstance(state, dict):
                states[device] = copy.deepcopy(state)
        return {"seed": self.seed, "generators": states}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s data: the next draws are those that would follow."""
        if "seed" not in state or "generators" not in state:
            raise KeyError("not a transform state: expected the keys 'seed' and 'generators' "
                           "(what state_dict() returns)")
        self.seed = int(state["seed"])
        self._rngs = {}
        for device, generator_state in state["generators"].items():
            rng = self._rngs[device] = B.get_backend(device).make_rng(self.seed)
            rng.bit_generator.state = copy.deepcopy(generator_state)

    @staticmethod
    def _check(where: str, x: Any) -> None:
        if getattr(x, "ndim", 0) != 4:
            raise ValueError(f"{where}: expected a batch of images (N, C, H, W), got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")


class RandomHorizontalFlip(_RandomTransform):
    """Mirror each image left-right with probability ``p``: ``x[n] -> x[n, :, :, ::-1]``.

    Args:
        p: probability of flipping each image. Default: 0.5.
        seed: seed of the generator (default: drawn from tinynet's host generator).

    Shape:
        (N, C, H, W) -> (N, C, H, W), same dtype and device.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p}")
        self.p = float(p)
        super().__init__(seed)

    def __call__(self, x: Any) -> Any:
        self._check("RandomHorizontalFlip", x)
        xp = B.backend_of(x).xp
        flip = self._uniform(x, x.shape[0]) < self.p  # one decision per image
        # choose per image between x and its mirror (a reversed view, no copy until `where`)
        return xp.where(flip.reshape(-1, 1, 1, 1), x[:, :, :, ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop(_RandomTransform):
    """Pad each image by ``padding`` on every side, then cut a random ``size`` window out of it.

    With ``size`` equal to the image size this shifts each image by up to ``padding`` pixels in
    each direction (the usual augmentation for 28x28 digits and clothes).

    Args:
        size: output height and width (int or pair), at most the padded size.
        padding: pixels added on each side (int or pair). Default: 0.
        fill: the value of the padded pixels. Default: 0. For a normalised batch,
            ``(0 - mean) / std`` is the value of a black pixel (Fashion-MNIST's background).
        seed: seed of the generator (default: drawn from tinynet's host generator).

    Shape:
        (N, C, H, W) -> (N, C, size[0], size[1]), same dtype and device.

    How (vectorised): the padded batch's windows of the output size are a strided view
    (N, C, H_pad - h + 1, W_pad - w + 1, h, w) (no copy); picking window (top[n], left[n]) for each
    image n is one fancy-indexing gather.
    """

    def __init__(self, size: Any, padding: Any = 0, fill: float = 0.0,
                 seed: int | None = None) -> None:
        self.size = pair(size, "size")
        self.padding = pair(padding, "padding")
        if min(self.size) < 1 or min(self.padding) < 0:
            raise ValueError(f"RandomCrop: size must be positive and padding >= 0, got size "
                             f"{self.size}, padding {self.padding}")
        self.fill = float(fill)
        super().__init__(seed)

    def __call__(self, x: Any) -> Any:
        self._check("RandomCrop", x)
        xp = B.backend_of(x).xp
        N, C, H, W = x.shape
        (h, w), (ph, pw) = self.size, self.padding
        hp, wp = H + 2 * ph, W + 2 * pw
        if h > hp or w > wp:
            raise ValueError(f"RandomCrop: the crop {h}x{w} is larger than the padded image "
                             f"{hp}x{wp} (image {H}x{W}, padding {ph},{pw})")
        x_pad = xp.ascontiguousarray(pad2d(x, (ph, pw), value=self.fill))
        # every h x w window of every padded image, as a view (N, C, rows, cols, h, w)
        rows, cols = hp - h + 1, wp - w + 1
        windows = window_view(x_pad, (h, w), (1, 1), (rows, cols))
        # a random top-left corner per image: floor(u * count), u ~ U[0, 1)
        u = self._uniform(x, 2 * N)
        top = xp.minimum((u[:N] * rows).astype(xp.int64), rows - 1)
        left = xp.minimum((u[N:] * cols).astype(xp.int64), cols - 1)
        # the gather: image n takes its window (top[n], left[n]) -> (N, C, h, w)
        return windows[xp.arange(N), :, top, left]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"


class Compose:
    """Apply several transforms in order: ``Compose([RandomCrop(28, 2), RandomHorizontalFlip()])``.

    Args:
        transforms: callables ``t(x) -> x``.
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}")

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def state_dict(self) -> dict:
        """The states of the transforms that have one (None for the others), in order."""
        return {"transforms": [t.state_dict() if hasattr(t, "state_dict") else None
                               for t in self.transforms]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("transforms")
        if saved is None or len(saved) != len(self.transforms):
            raise ValueError(
                f"Compose: the saved state has {len(saved or [])} transforms, this Compose has "
                f"{len(self.transforms)}; build the same transforms in the same order")
        for t, t_state in zip(self.transforms, saved, strict=True):
            if t_state is not None:
                t.load_state_dict(t_state)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip"]
