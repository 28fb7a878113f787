"""Checkpoints: a model's weights, its optimizer's state and anything else, in one ``.npz`` file.

A checkpoint is what you need to continue training later exactly where you stopped:

* the weights (``model.state_dict()``),
* the optimizer's state (SGD's momentum buffers) and hyperparameters (learning rate, ...),
* where training was: the epoch, the DataLoader's position and shuffling generator, a learning-rate
  schedule's state, tinynet's random generator (:func:`tinynet.backend.get_rng_state`).

The file format is plain NumPy ``.npz`` (a zip of ``.npy`` arrays) **without pickle**: each
entry is read with ``numpy.lib.format.read_array(..., allow_pickle=False)``, so opening a
checkpoint can never run code hidden in it. Inside the zip:

* ``model/<key>``: the weights, e.g. ``model/0.weight`` (host NumPy arrays, PyTorch's key names);
* ``optimizer/<index>/<name>``: the optimizer's per-parameter arrays, e.g.
  ``optimizer/0/momentum_buffer`` (parameters are numbered in ``model.parameters()`` order);
* ``meta/<key>``: top-level metadata values that are arrays;
* ``__json__``: everything else (optimizer hyperparameters, epoch, loader, schedule and RNG state,
  your own ``**meta``) as one UTF-8 JSON text stored as a uint8 array.

Writing is atomic: the file is written to a temporary file in the same folder, flushed to disk
(``fsync``) and then renamed over the old checkpoint with ``os.replace``. A crash, a full disk or a
Ctrl-C in the middle leaves the previous checkpoint as it was (and no temporary file behind).

Reading is all or nothing: the whole file is read and checked (every entry to its last byte, so
the zip's CRC-32 checksums catch a flipped byte), then checked against the model, optimizer,
scheduler and loader it goes into (keys, shapes, dtypes, number of parameters); only then is
anything written into them. Every way a file can be unreadable or not fit ends in one
:class:`CheckpointError` that names the file, says what is wrong and what to do.

Example::

    tinynet.save("run/last.npz", model=model, optimizer=optimizer, epoch=3)
    ...
    ckpt = tinynet.load_into("run/last.npz", model, optimizer)   # weights + momentum restored
    print(ckpt["epoch"])                                        # 3
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
    """A checkpoint cannot be loaded (or a value cannot be stored in one), said in words.

    Raised for every way a file can be unreadable (not an .npz file, truncated or corrupted, not
    written by :func:`save`, a newer format version, a metadata part that does not parse) and
    when its contents do not fit the model or optimizer they are loaded into. The message names
    the file, says what is wrong and what to do; it never suggests unpickling.

    Attributes:
        path: the checkpoint (a Path), or None for errors of :func:`save`.
        problem: what is wrong, in words (None for errors of :func:`save`).
        advice: what to do about it (None for errors of :func:`save`).
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 problem: str | None = None, advice: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.advice = advice


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
                             "param_groups": state.get("param_groups", []),
                             # the optimizer's class, so that loading SGD's state into an Adam
                             # says so (None for a plain dict; files without it load as before)
                             "type": type(optimizer).__name__
                             if hasattr(optimizer, "state_dict") else None}

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


# ----------------------------------------------------------------------------------------------
# Reading. Every way a file can be unreadable ends in one CheckpointError that names the file,
# says what is wrong and what to do; nothing is written into a model or optimizer until the
# whole file has been read and checked against them (all or nothing).
# ----------------------------------------------------------------------------------------------
_ADVICE_DAMAGED = (
    "the file is damaged and what is missing cannot be recovered: use the previous checkpoint if "
    "you kept one, or re-run training with --resume from an earlier checkpoint file (from the "
    "start if there is none); and check that this is the file you meant"
)
_ADVICE_FOREIGN = (
    "check that this is the file you meant: a tinynet checkpoint is the .npz file that "
    "tinynet.save or tinynet.train.fit writes (e.g. out_dir/last.npz); otherwise use the previous "
    "checkpoint, or re-run training with --resume from an earlier checkpoint file"
)
_ADVICE_NEWER = (
    "load it with the newer tinynet that wrote it (pip install --upgrade tinynet), use the "
    "previous checkpoint if this version wrote it, or re-run training with --resume from an "
    "earlier checkpoint file; and check that this is the file you meant"
)
_ADVICE_MISMATCH = (
    "build the model and optimizer exactly as in the run that saved the checkpoint (same layers, "
    "sizes and order, same kind of optimizer), and check that this is the file you meant; "
    "otherwise use the previous checkpoint, or re-run training with --resume from an earlier "
    "checkpoint file"
)
_ADVICE_REQUIRED = (
    "check that this is the file you meant (fit writes out_dir/last.npz); to continue from a "
    "checkpoint saved by hand, load it with tinynet.load_into and pass start_epoch to fit; "
    "otherwise use the previous checkpoint, or re-run training with --resume from an earlier "
    "checkpoint file"
)
_UNCHANGED = "Nothing was loaded: the model, optimizer, scheduler and loader are as they were."


def _error(path: Path, problem: str, advice: str,
           cls: type[CheckpointError] = CheckpointError) -> CheckpointError:
    """One CheckpointError: the path, what is wrong, what to do, and that nothing changed."""
    message = (f"cannot load the checkpoint {path}: {problem}\n"
               f"What to do: {advice}.\n{_UNCHANGED}")
    return cls(message, path=path, problem=problem, advice=advice)


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """There is no file at the checkpoint's path (also a FileNotFoundError)."""


def _not_found(path: Path) -> CheckpointError:
    problem = "there is no such file"
    folder = path.parent
    if not folder.is_dir():
        problem += f" (the folder {folder} does not exist either)"
    else:
        others = sorted(p.name for p in folder.glob("*.npz"))
        shown = ", ".join(others[:8]) + (" ..." if len(others) > 8 else "")
        problem += f"; {folder} holds {shown}" if others else f"; {folder} holds no .npz file"
    return _error(path, problem, "check the path (a typo? another run's out_dir?); to start "
                  "training afresh, run it without --resume", CheckpointNotFoundError)


def _looks_like(head: bytes) -> tuple[str, str]:
    """(what the file seems to be, the advice), from the first bytes of a file that is no zip."""
    if not head.strip(b"\x00"):
        return ("it holds only zero bytes: the data never reached the disk (a crash or a full "
                "disk while it was written by a tool other than tinynet.save?)"), _ADVICE_DAMAGED
    if head.startswith(b"\x93NUMPY"):
        return ("it is a single NumPy array (.npy, as np.save writes), not an .npz checkpoint "
                "written by tinynet.save"), _ADVICE_FOREIGN
    if head.startswith(b"\x1f\x8b"):
        return "it is a gzip-compressed file, not an .npz (zip) file", _ADVICE_FOREIGN
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (e.g. a Keras .h5 model), not an .npz file", _ADVICE_FOREIGN
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("it is a Python pickle (e.g. an old-style torch.save file), not an .npz file; "
                "tinynet never opens pickles, because loading one can run code hidden in "
                "it"), _ADVICE_FOREIGN
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\t\r\n\ufffd" for c in text):
        snippet = text.replace("\ufffd", "")[:40]
        return (f"it is a text file (it starts with {snippet!r}), not an .npz (zip) file; "
                f"only its name ends in .npz"), _ADVICE_FOREIGN
    return (f"it is not an .npz (zip) file: it starts with the bytes {head[:8].hex(' ')}, where "
            f"a zip file starts with 50 4b ('PK')"), _ADVICE_FOREIGN


def _read_entry(path: Path, zf: zipfile.ZipFile, member: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` entry of the zip, read without pickle and checked to its last byte."""
    name = member.filename[: -len(".npy")]
    pickled = False
    try:
        with zf.open(member) as f:
            array = np.lib.format.read_array(f, allow_pickle=False)
            rest = f.read()  # reading to the end also checks the entry's CRC-32 checksum
    except ValueError as exc:
        if "pickle" not in str(exc).lower() and "object" not in str(exc).lower():
            raise _error(path, f"the entry {name!r} is cut short or damaged (NumPy says: "
                         f"{exc})", _ADVICE_DAMAGED) from exc
        pickled = True  # raised below, outside this block: NumPy's message (which advises
        #                 allow_pickle, i.e. running the code) is then not even chained to ours
    # (a damaged header can also claim encryption or an unknown compression method)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        raise _error(path, f"the file is corrupted: its entry {name!r} is damaged (zip says: "
                     f"{exc})", _ADVICE_DAMAGED) from exc
    if pickled:
        raise _error(path, f"the entry {name!r} holds Python objects (pickled data), which a "
                     f"tinynet checkpoint never contains: opening it could run code hidden in it, "
                     f"so tinynet refuses. The file was not written by tinynet.save, or it was "
                     f"altered", _ADVICE_FOREIGN)
    if rest:
        raise _error(path, f"the entry {name!r} has {len(rest)} bytes more than its header "
                     f"says: it is damaged", _ADVICE_DAMAGED)
    return array


_NUMBER_KINDS = {"f": "floating point", "i": "integer", "u": "integer", "b": "boolean"}


def _kind(dtype: Any) -> str:
    """A dtype's family in words: 'floating point', 'integer', 'boolean', or its name."""
    return _NUMBER_KINDS.get(np.dtype(dtype).kind, f"{np.dtype(dtype)} (not numbers)")


def _check_structure(info: Any, arrays: dict[str, np.ndarray]) -> list[str]:
    """What does not add up between the JSON part and the arrays (empty when all is well)."""
    if not isinstance(info, dict):
        return [f"its metadata is a JSON {type(info).__name__}, not the object tinynet.save "
                f"writes"]
    problems, used = [], set()
    keys = info.get("model", ...)
    if keys is ...:
        problems.append("its metadata has no 'model' entry")
    elif keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            problems.append("its metadata's 'model' entry is not a list of weight names")
        else:
            absent = [k for k in keys if f"model/{k}" not in arrays]
            if absent:
                problems.append(f"its metadata lists weights whose arrays are not in the file: "
                                f"{', '.join(absent)}")
            used |= {f"model/{k}" for k in keys}
    for key in sorted(k for k in arrays if k.startswith("model/")):
        if arrays[key].dtype.kind not in _NUMBER_KINDS:
            problems.append(f"the entry {key!r} is stored as {_kind(arrays[key].dtype)}")
    opt = info.get("optimizer", ...)
    if opt is ...:
        problems.append("its metadata has no 'optimizer' entry")
    elif opt is not None:
        state, groups = (opt.get("state"), opt.get("param_groups")) if isinstance(opt, dict) \
            else (None, None)
        if not isinstance(state, dict) or not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
        ):
            problems.append("its optimizer part is not {'state': {...}, 'param_groups': [...]} "
                            "with a 'params' list in every group")
            state = {}
        for index, entries in state.items():
            if not str(index).isdigit() or not isinstance(entries, dict):
                problems.append(f"its optimizer state has an entry {index!r} that is not a "
                                f"parameter number with its state")
                continue
            for value in entries.values():
                if isinstance(value, dict) and "__array__" in value:
                    ref = value["__array__"]
                    if ref not in arrays:
                        problems.append(f"its optimizer state refers to an array {ref!r} that "
                                        f"is not in the file")
                    elif arrays[ref].dtype.kind != "f":
                        problems.append(f"the entry {ref!r} is stored as "
                                        f"{_kind(arrays[ref].dtype)}, where optimizer state is "
                                        f"floating point")
                    used.add(ref)
    stray = [k for k in arrays if k not in used and not k.startswith("meta/")]
    if stray:
        problems.append(f"it has entries that its metadata does not account for: "
                        f"{', '.join(sorted(stray))}")
    return problems


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(the JSON part, every array by name), after checking the whole file; else CheckpointError.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise _not_found(path) from None
    except IsADirectoryError:
        inside = path / "last.npz"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        raise _error(path, f"it is a folder, not a file{hint}", _ADVICE_FOREIGN) from None
    except OSError as exc:
        raise _error(path, f"the file cannot be opened ({exc.strerror or exc})",
                     "check the path and that you may read the file") from exc
    if size == 0:
        raise _error(path, "the file is empty (0 bytes): it was never written completely (a "
                     "crash, a full disk, or a copy that failed)", _ADVICE_DAMAGED)
    if not head.startswith(b"PK"):
        problem, advice = _looks_like(head)
        raise _error(path, problem, advice)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise _error(path, f"the file is truncated or corrupted: it starts like an .npz (zip) "
                     f"file, but the table of contents that ends a complete one is missing or "
                     f"damaged ({size:,} bytes; zip says: {exc}). A copy that stopped early or "
                     f"a full disk cuts a file short like this", _ADVICE_DAMAGED) from exc
    with zf:
        names = zf.namelist()
        if not all(n.endswith(".npy") for n in names):
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                what = ("it is a PyTorch file (torch.save), not a tinynet checkpoint. To use "
                        "PyTorch weights: torch.load them in PyTorch and pass the state dict to "
                        "model.load_state_dict, which takes tensors")
            else:
                shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
                what = (f"it is a zip archive but not an .npz file written by tinynet.save (it "
                        f"holds {shown}, not .npy arrays)")
            raise _error(path, what, _ADVICE_FOREIGN)
        members = {m.filename[: -len(".npy")]: m for m in zf.infolist()}
        if _JSON_KEY not in members:
            shown = ", ".join(list(members)[:6]) + (" ..." if len(members) > 6 else "")
            raise _error(path, f"it is an .npz file, but not one written by tinynet.save: it has "
                         f"no {_JSON_KEY} entry, the metadata every tinynet checkpoint has (its "
                         f"entries: {shown or 'none'}). If these are weights, np.load the file "
                         f"and pass them to model.load_state_dict", _ADVICE_FOREIGN)
        raw = _read_entry(path, zf, members[_JSON_KEY])
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise _error(path, f"its {_JSON_KEY} entry is a {raw.dtype} array of shape "
                         f"{raw.shape}, not the UTF-8 text that tinynet.save writes: the file "
                         f"was not written by tinynet.save", _ADVICE_FOREIGN)
        try:
            info = json.loads(raw.tobytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _error(path, f"its metadata part ({_JSON_KEY}) is not UTF-8 text ({exc}): it "
                         f"is damaged", _ADVICE_DAMAGED) from exc
        except json.JSONDecodeError as exc:
            raise _error(path, f"its metadata part ({_JSON_KEY}) does not parse as JSON "
                         f"({exc.msg} at line {exc.lineno}, column {exc.colno}): it is damaged",
                         _ADVICE_DAMAGED) from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            found = info.get("format") if isinstance(info, dict) else None
            raise _error(path, f"it is an .npz file with a {_JSON_KEY} entry, but not one "
                         f"written by tinynet.save (format {found!r}, expected {FORMAT!r})",
                         _ADVICE_FOREIGN)
        version = info.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise _error(path, f"its metadata has no valid format version ({version!r}): it is "
                         f"damaged or was not written by tinynet.save", _ADVICE_FOREIGN)
        if version > VERSION:
            raise _error(path, f"it was written by a newer tinynet: checkpoint format version "
                         f"{version}, while this tinynet ({_tinynet_version()}) reads versions up "
                         f"to {VERSION}", _ADVICE_NEWER)
        arrays = {name: _read_entry(path, zf, m) for name, m in members.items()
                  if name != _JSON_KEY}
    problems = _check_structure(info, arrays)
    if problems:
        raise _error(path, "its parts do not fit together, so it is damaged or was not written "
                     "by tinynet.save:\n  - " + "\n  - ".join(problems), _ADVICE_FOREIGN)
    return info, arrays


def _tinynet_version() -> str:
    try:
        return importlib.metadata.version("tinynet")
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def _assemble(info: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The dict that :func:`load` returns, from a checked file."""
    info = dict(info)
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
    return result


def _same_kind(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b)


def _model_problems(saved: OrderedDict | None, model: Any) -> list[str]:
    """How the file's weights do not fit ``model`` (PyTorch's key names), or []."""
    if saved is None:
        return ["it holds no model weights (it was saved with model=None)"]
    current = model.state_dict()
    name = type(model).__name__
    problems = []
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing:
        problems.append(f"missing keys (in the model, not in the file): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the model): "
                        f"{', '.join(unexpected)}")
    if missing or unexpected:
        problems.append(f"this {name} expects {', '.join(current) or '(nothing)'}")
    for key in (k for k in current if k in saved):
        have, want = saved[key], current[key]
        if tuple(have.shape) != tuple(want.shape):
            problems.append(f"wrong shape: {key!r} is {tuple(have.shape)} in the file but "
                            f"{tuple(want.shape)} in the model")
        elif not _same_kind(have.dtype, want.dtype):
            problems.append(f"wrong dtype: {key!r} is stored as {have.dtype} "
                            f"({_kind(have.dtype)}), the model's is {want.dtype} "
                            f"({_kind(want.dtype)})")
    return problems


def _optimizer_problems(saved: dict | None, saved_type: str | None, optimizer: Any,
                        model: Any) -> list[str]:
    """How the file's optimizer state does not fit ``optimizer``, or []."""
    if saved is None:
        return ["it holds no optimizer state (it was saved with optimizer=None)"]
    mine = type(optimizer).__name__
    if saved_type is not None and saved_type != mine:
        return [f"its optimizer state was saved from {saved_type}, but it is loaded into {mine}"]
    groups = optimizer.param_groups
    counts = [len(g["params"]) for g in groups]
    saved_counts = [len(g["params"]) for g in saved["param_groups"]]
    if saved_counts != counts:
        return [f"the saved optimizer has {saved_counts} parameters per group, this {mine} has "
                f"{counts}"]
    problems = []
    for i, (g, mine_g) in enumerate(zip(saved["param_groups"], groups, strict=True)):
        for key, value in g.items():
            current = mine_g.get(key)
            number = isinstance(current, (int, float)) and not isinstance(current, bool)
            if key != "params" and number and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                problems.append(f"param group {i}'s {key!r} is {value!r} in the file, where "
                                f"this optimizer has a number ({current!r})")
    params = [p for g in groups for p in g["params"]]
    names = {}
    if model is not None and hasattr(model, "named_parameters"):
        names = {id(p): f" ({n})" for n, p in model.named_parameters()}
    for index, entries in saved["state"].items():
        if not 0 <= index < len(params):
            problems.append(f"its optimizer state is for parameter {index}, but this {mine} has "
                            f"{len(params)} parameters (0..{len(params) - 1})")
            continue
        p = params[index]
        for key, value in entries.items():
            if not _is_array(value):
                continue
            where = f"the {key!r} of parameter {index}{names.get(id(p), '')}"
            if tuple(value.shape) != tuple(p.data.shape):
                problems.append(f"wrong shape: {where} is {tuple(value.shape)} in the file, "
                                f"the parameter is {tuple(p.data.shape)}")
            elif not _same_kind(value.dtype, p.data.dtype):
                problems.append(f"wrong dtype: {where} is stored as {value.dtype}, the "
                                f"parameter is {p.data.dtype}")
    return problems


def _dry_run(obj: Any, state: Any, what: str) -> list[str]:
    """Load ``state`` into a copy of ``obj`` (a scheduler or a DataLoader) to see if it fits."""
    trial = copy.copy(obj)  # load_state_dict assigns attributes: the copy's, not obj's
    if getattr(obj, "transform", None) is not None:
        try:  # a transform's load_state_dict would change the shared transform: copy it too
            trial.transform = copy.deepcopy(obj.transform)
        except Exception:  # cannot be copied: the real load still checks it (and is undone)
            trial.transform = None
    try:
        trial.load_state_dict(copy.deepcopy(state))
    except Exception as exc:  # noqa: BLE001 (its own check says what does not fit)
        return [f"the saved {what} state does not fit this {type(obj).__name__} "
                f"({type(exc).__name__}: {exc})"]
    return []


def _rng_problems(state: Any) -> list[str]:
    """Whether the saved random-generator state can be restored (its host part is tried)."""
    host = state.get("host", state) if isinstance(state, dict) else None
    try:
        generator = getattr(np.random, host["bit_generator"])()
        generator.state = host
    except Exception as exc:  # noqa: BLE001
        return [f"its random-generator state ('rng') cannot be restored "
                f"({type(exc).__name__}: {exc})"]
    return []


def _restore(path: str | os.PathLike, model: Any, optimizer: Any, scheduler: Any, loader: Any,
             restore_rng: bool, require: Iterable[str]) -> dict:
    """Read and check ``path``, check it against every target, then load into all of them."""
    path = Path(path)
    info, arrays = _read(path)
    ckpt = _assemble(info, arrays)

    problems = []
    missing = [key for key in require if key not in ckpt]
    if missing:
        entries = "entry" if len(missing) == 1 else "entries"
        problems.append(f"it has no {', '.join(map(repr, missing))} {entries}, which resuming "
                        f"needs (tinynet.train.fit writes them into out_dir/last.npz; a "
                        f"tinynet.save by hand has only what was passed to it)")
    if model is not None:
        problems += _model_problems(ckpt["model"], model)
    if optimizer is not None:
        saved_type = info["optimizer"].get("type") if info["optimizer"] is not None else None
        problems += _optimizer_problems(ckpt["optimizer"], saved_type, optimizer, model)
    use_scheduler = scheduler is not None and ckpt.get("scheduler") is not None
    use_loader = loader is not None and ckpt.get("train_loader") is not None
    use_rng = restore_rng and ckpt.get("rng") is not None
    if use_scheduler:
        problems += _dry_run(scheduler, ckpt["scheduler"], "learning-rate schedule")
    if use_loader:
        problems += _dry_run(loader, ckpt["train_loader"], "DataLoader")
    if use_rng:
        problems += _rng_problems(ckpt["rng"])
    if problems:
        advice = _ADVICE_MISMATCH if len(problems) > bool(missing) else _ADVICE_REQUIRED
        raise _error(path, "it does not fit what it is loaded into:\n  - "
                     + "\n  - ".join(problems), advice)

    # Everything fits: load. Should a load still fail, what was already loaded is undone.
    undo: list[Callable[[], Any]] = []
    try:
        if model is not None:
            weights = OrderedDict((k, v.copy()) for k, v in model.state_dict().items())
            undo.append(lambda: model.load_state_dict(weights))
            model.load_state_dict(ckpt["model"])
        if optimizer is not None:
            hyper = [{k: v for k, v in g.items() if k != "params"}
                     for g in optimizer.param_groups]
            state = {pid: {k: (v.copy() if _is_array(v) else v) for k, v in s.items()}
                     for pid, s in optimizer.state.items()}
            undo.append(lambda: _put_back_optimizer(optimizer, hyper, state))
            optimizer.load_state_dict(ckpt["optimizer"])
        if use_scheduler:
            undo.append(_attributes_undo(scheduler))
            scheduler.load_state_dict(copy.deepcopy(ckpt["scheduler"]))
        if use_loader:
            undo.append(_attributes_undo(loader))
            loader.load_state_dict(copy.deepcopy(ckpt["train_loader"]))
        if use_rng:
            rng = B.get_rng_state()
            undo.append(lambda: B.set_rng_state(rng))
            B.set_rng_state(ckpt["rng"])
    except Exception as exc:
        for step in reversed(undo):
            step()
        raise _error(path, f"loading it failed part way ({type(exc).__name__}: {exc}); what had "
                     f"been loaded was put back", _ADVICE_MISMATCH) from exc
    return ckpt


def _attributes_undo(obj: Any) -> Callable[[], None]:
    """What puts a scheduler or DataLoader back exactly as it is now (a mid-epoch loader too).

    Their ``load_state_dict`` assigns new attribute values (a new generator, new counters), so
    the current values, kept aside, are the state; a transform's generators are changed in
    place, so its own state is kept too.
    """
    attributes = dict(vars(obj))
    transform = getattr(obj, "transform", None)
    has_state = hasattr(transform, "state_dict") and hasattr(transform, "load_state_dict")
    transform_state = copy.deepcopy(transform.state_dict()) if has_state else None

    def put_back() -> None:
        vars(obj).clear()
        vars(obj).update(attributes)
        if has_state:
            transform.load_state_dict(transform_state)
    return put_back


def _put_back_optimizer(optimizer: Any, hyper: list[dict], state: dict) -> None:
    for group, saved in zip(optimizer.param_groups, hyper, strict=True):
        for key in [k for k in group if k != "params"]:
            del group[key]
        group.update(saved)
    optimizer.state = state


def load(path: str | os.PathLike, model: Any = None, optimizer: Any = None) -> dict:
    """Read a checkpoint written by :func:`save` (without pickle: no code can run).

    The whole file is read and checked first, then checked against ``model`` and ``optimizer``
    (keys, shapes, dtypes, number of parameters); only when everything fits is anything copied
    into them. A failed load leaves them exactly as they were.

    Args:
        path: the ``.npz`` file.
        model: optional module to copy the weights into (onto the model's device and dtype).
        optimizer: optional optimizer to restore (momentum buffers go to each parameter's device).

    Returns:
        A dict with ``'model'`` (an OrderedDict of host NumPy arrays, or None), ``'optimizer'``
        (a state dict ``{'state': {index: {name: array}}, 'param_groups': [...]}``, or None) and
        every ``**meta`` value given to :func:`save`.

    Raises:
        CheckpointError (a ValueError) naming the file, saying what is wrong and what to do: not
        an .npz file, truncated or corrupted, not written by ``tinynet.save``, a newer format
        version, a metadata part that does not parse, or weights/state that do not fit
        ``model``/``optimizer`` (missing or unexpected keys, wrong shapes or dtypes).
        :class:`CheckpointNotFoundError` (also a FileNotFoundError) when there is no file.

    Example of the message, for a checkpoint cut short by a copy that stopped early::

        cannot load the checkpoint run/last.npz: the file is truncated or corrupted: it starts
        like an .npz (zip) file, but the table of contents that ends a complete one is missing
        ...
        What to do: the file is damaged ...: use the previous checkpoint if you kept one, or
        re-run training with --resume from an earlier checkpoint file ...
    """
    return _restore(path, model, optimizer, None, None, False, ())


def load_into(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    restore_rng: bool = True,
    require: Iterable[str] = (),
) -> dict:
    """Restore a training run from a checkpoint written by ``tinynet.train.fit`` (or :func:`save`).

    All or nothing: the file is read and checked, and its parts are checked against every object
    given (the scheduler's and loader's states are tried on copies of them), before anything is
    written; a failure leaves the model, optimizer, scheduler, loader and random generators as
    they were, and raises one :class:`CheckpointError` naming the file.

    Args:
        path: the checkpoint.
        model: gets the weights (on its own device and dtype).
        optimizer: gets the momentum buffers and hyperparameters (learning rate, ...).
        scheduler: gets the saved ``'scheduler'`` state (``load_state_dict``), if there is one.
        loader: a DataLoader that gets the saved ``'train_loader'`` state, so that its next epoch
            draws the same shuffled order as the uninterrupted run would have.
        restore_rng: restore tinynet's host random generator from the saved ``'rng'`` state.
        require: metadata keys the checkpoint must have (e.g. ``('epochs_completed',)`` to
            resume a ``fit`` run), checked before anything is loaded.

    Returns:
        The whole checkpoint, as :func:`load` returns it (e.g. ``ckpt['epoch']``).

    Raises:
        CheckpointError: as :func:`load`; also when a required key is missing or the scheduler's
        or loader's saved state does not fit them.
    """
    return _restore(path, model, optimizer, scheduler, loader, restore_rng, require)


__all__ = ["CheckpointError", "CheckpointNotFoundError", "load", "load_into", "save"]
