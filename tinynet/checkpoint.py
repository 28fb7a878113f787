"""Checkpoints: a model's weights, its optimizer's state and anything else, in one ``.npz`` file.

A checkpoint is what you need to continue training later exactly where you stopped:

* the weights (``model.state_dict()``),
* the optimizer's state (SGD's momentum buffers) and hyperparameters (learning rate, ...),
* where training was: the epoch, the DataLoader's position and shuffling generator, a learning-rate
  schedule's state, tinynet's random generator (:func:`tinynet.backend.get_rng_state`).

The file format is plain NumPy ``.npz`` (a zip of ``.npy`` arrays) **without pickle**: loading
uses ``np.load(path, allow_pickle=False)``, so opening a checkpoint can never run code hidden in
it. Inside the zip:

* ``model/<key>``: the weights, e.g. ``model/0.weight`` (host NumPy arrays, PyTorch's key names);
* ``optimizer/<index>/<name>``: the optimizer's per-parameter arrays, e.g.
  ``optimizer/0/momentum_buffer`` (parameters are numbered in ``model.parameters()`` order);
* ``meta/<key>``: top-level metadata values that are arrays;
* ``__json__``: everything else (optimizer hyperparameters, epoch, loader, schedule and RNG state,
  your own ``**meta``) as one UTF-8 JSON text stored as a uint8 array.

Writing is atomic: the file is written to a temporary file in the same folder, flushed to disk
(``fsync``) and then renamed over the old checkpoint with ``os.replace``. A crash, a full disk or a
Ctrl-C in the middle leaves the previous checkpoint as it was (and no temporary file behind).

Example::

    tinynet.save("run/last.npz", model=model, optimizer=optimizer, epoch=3)
    ...
    ckpt = tinynet.load_into("run/last.npz", model, optimizer)   # weights + momentum restored
    print(ckpt["epoch"])                                        # 3
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np  # host side only: checkpoints are host files

from . import backend as B

FORMAT = "tinynet-checkpoint"
VERSION = 1
_JSON_KEY = "__json__"
# Keys of the JSON part that save() itself fills in; **meta may not use them.
_RESERVED = {"format", "version", "model", "optimizer"}


class CheckpointError(ValueError):
    """A file is not a tinynet checkpoint, or a value cannot be stored in one."""


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 0) > 0


def _to_json(value: Any) -> Any:
    """Turn NumPy scalars and 0-d arrays into Python numbers so that ``json`` can write them."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "shape") and getattr(value, "ndim", None) == 0:  # 0-d NumPy/CuPy array
        return _to_json(B.to_numpy(value).item())
    if _is_array(value):
        raise CheckpointError(
            f"an array of shape {tuple(value.shape)} is nested inside the metadata; tinynet.save "
            f"stores arrays only as top-level keyword arguments (e.g. save(path, mask=array))"
        )
    if value is None or isinstance(value, (int, float, str)):
        return value
    raise CheckpointError(
        f"tinynet.save cannot store a {type(value).__name__} in a checkpoint: metadata must be "
        f"numbers, strings, booleans, None, lists, dicts or arrays (no pickle, by design)"
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); silently skipped where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: str | os.PathLike, model: Any = None, optimizer: Any = None, **meta: Any) -> Path:
    """Write a checkpoint: ``model``'s weights, ``optimizer``'s state and ``**meta``, atomically.

    Args:
        path: the file to write (e.g. ``runs/fashion-mnist/last.npz``); its folder is created.
        model: a :class:`tinynet.nn.Module` (its ``state_dict()``), a dict of arrays, or None.
        optimizer: a :class:`tinynet.optim.Optimizer` (its ``state_dict()``), or None.
        **meta: anything else: numbers, strings, lists, dicts (e.g. ``epoch=3``,
            ``scheduler=sched.state_dict()``, ``rng=tinynet.backend.get_rng_state()``), and
            top-level arrays.

    Returns:
        The path written. Arrays on a GPU are copied to the host first; the file loads on any
        device.

    Raises:
        CheckpointError: a value cannot be stored without pickle (e.g. an arbitrary object).
    """
    path = Path(path)
    bad = _RESERVED & set(meta)
    if bad:
        raise CheckpointError(f"tinynet.save: the names {sorted(bad)} are reserved; rename them")
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": None, "optimizer": None}

    if model is not None:
        state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
        info["model"] = list(state.keys())  # keeps the order of the keys
        for key, value in state.items():
            arrays[f"model/{key}"] = B.to_numpy(value)

    if optimizer is not None:
        state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else dict(optimizer)
        per_param: dict[str, dict[str, Any]] = {}
        for index, entries in state.get("state", {}).items():
            kept = {}
            for name, value in entries.items():
                if _is_array(value):
                    arrays[f"optimizer/{int(index)}/{name}"] = B.to_numpy(value)
                    kept[name] = {"__array__": f"optimizer/{int(index)}/{name}"}
                else:
                    kept[name] = value
            per_param[str(int(index))] = kept
        info["optimizer"] = {"state": per_param,
                             "param_groups": state.get("param_groups", [])}

    json_meta = {}
    for key, value in meta.items():
        if _is_array(value):
            arrays[f"meta/{key}"] = B.to_numpy(value)
        else:
            json_meta[key] = value
    info.update(json_meta)
    text = json.dumps(_to_json(info), allow_nan=True)
    arrays[_JSON_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    # Atomic write: temp file in the same folder (same file system, so the rename is atomic),
    # flushed and fsync'ed, then os.replace over the target. On any failure the temp file goes.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:  # also KeyboardInterrupt: never leave a half-written file behind
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load(path: str | os.PathLike, model: Any = None, optimizer: Any = None) -> dict:
    """Read a checkpoint written by :func:`save` (``allow_pickle=False``: no code can run).

    Args:
        path: the ``.npz`` file.
        model: optional module to copy the weights into (onto the model's device and dtype).
        optimizer: optional optimizer to restore (momentum buffers go to each parameter's device).

    Returns:
        A dict with ``'model'`` (an OrderedDict of host NumPy arrays, or None), ``'optimizer'``
        (a state dict ``{'state': {index: {name: array}}, 'param_groups': [...]}``, or None) and
        every ``**meta`` value given to :func:`save`.

    Raises:
        CheckpointError: the file is not a tinynet checkpoint.
        FileNotFoundError: there is no file at ``path``.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        if _JSON_KEY not in data.files:
            raise CheckpointError(
                f"{path} is an .npz file but not a tinynet checkpoint (no {_JSON_KEY} entry); "
                f"write checkpoints with tinynet.save"
            )
        info = json.loads(bytes(data[_JSON_KEY]).decode("utf-8"))
        if info.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {info.get('format')!r}")
        if info.get("version", 0) > VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {info['version']} is newer than this tinynet "
                f"understands ({VERSION}); upgrade tinynet"
            )
        arrays = {key: data[key] for key in data.files if key != _JSON_KEY}

    result: dict[str, Any] = {}
    keys = info.pop("model")
    result["model"] = None if keys is None else OrderedDict(
        (key, arrays[f"model/{key}"]) for key in keys
    )
    opt = info.pop("optimizer")
    if opt is not None:
        state = {}
        for index, entries in opt["state"].items():
            state[int(index)] = {
                name: (arrays[value["__array__"]]
                       if isinstance(value, dict) and "__array__" in value else value)
                for name, value in entries.items()
            }
        opt = {"state": state, "param_groups": opt["param_groups"]}
    result["optimizer"] = opt
    for key, value in arrays.items():
        if key.startswith("meta/"):
            result[key[len("meta/"):]] = value
    for key, value in info.items():
        if key not in ("format", "version"):
            result[key] = value

    if model is not None:
        if result["model"] is None:
            raise CheckpointError(f"{path} holds no model weights (it was saved with model=None)")
        model.load_state_dict(result["model"])
    if optimizer is not None:
        if result["optimizer"] is None:
            raise CheckpointError(f"{path} holds no optimizer state (saved with optimizer=None)")
        optimizer.load_state_dict(result["optimizer"])
    return result


def load_into(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    restore_rng: bool = True,
) -> dict:
    """Restore a training run from a checkpoint written by ``tinynet.train.fit`` (or :func:`save`).

    Args:
        path: the checkpoint.
        model: gets the weights (on its own device and dtype).
        optimizer: gets the momentum buffers and hyperparameters (learning rate, ...).
        scheduler: gets the saved ``'scheduler'`` state (``load_state_dict``), if there is one.
        loader: a DataLoader that gets the saved ``'train_loader'`` state, so that its next epoch
            draws the same shuffled order as the uninterrupted run would have.
        restore_rng: restore tinynet's host random generator from the saved ``'rng'`` state.

    Returns:
        The whole checkpoint, as :func:`load` returns it (e.g. ``ckpt['epoch']``).
    """
    ckpt = load(path, model=model, optimizer=optimizer)
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if loader is not None and ckpt.get("train_loader") is not None:
        loader.load_state_dict(ckpt["train_loader"])
    if restore_rng and ckpt.get("rng") is not None:
        B.set_rng_state(ckpt["rng"])
    return ckpt


__all__ = ["CheckpointError", "load", "load_into", "save"]
