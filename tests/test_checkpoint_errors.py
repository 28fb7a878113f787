"""Unreadable checkpoints: one CheckpointError that names the file, says what is wrong and what
to do (never "allow_pickle"), and a failed load that leaves everything exactly as it was.

Every damaged file is built here in ``tmp_path`` from a good checkpoint: a text file renamed
``.npz``, a file cut short, a zip entry cut short or with a flipped byte, entries of the wrong
dtype or shape, a metadata part that does not parse, a newer format version, missing and
unexpected keys, state that does not fit the optimizer, scheduler, loader or random generator.
Each one is loaded into a model, an optimizer, a scheduler and a DataLoader that are in the
middle of another run, and every array and state of those is compared before and after.
"""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinynet
from tinynet import backend as B
from tinynet import nn
from tinynet.checkpoint import CheckpointError, CheckpointNotFoundError
from tinynet.data import ArrayDataset, DataLoader
from tinynet.models import course_cnn
from tinynet.optim.lr_scheduler import StepLR

ADVICE = ("use the previous checkpoint", "--resume", "the file you meant")


# ----------------------------------------------------------------------------------------------
# A good checkpoint, and a run in progress to load it into
# ----------------------------------------------------------------------------------------------
def _batch(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, size=4)


def _step(model, opt, seed):
    loss_fn = nn.CrossEntropyLoss()
    x, y = _batch(seed)
    opt.zero_grad()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()


_DATA = ArrayDataset(np.zeros((40, 1, 28, 28), np.uint8), np.arange(40) % 10)


class Run:
    """A model, optimizer, scheduler and loader in the middle of training (seeded by ``seed``)."""

    def __init__(self, seed, lr=0.05, momentum=0.9, step_size=2, batch_size=8):
        tinynet.manual_seed(seed)
        self.model = course_cnn()
        self.opt = tinynet.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        _step(self.model, self.opt, seed)  # momentum buffers exist
        self.sched = StepLR(self.opt, step_size=step_size, gamma=0.5)
        self.sched.step()
        self.loader = DataLoader(_DATA, batch_size=batch_size, shuffle=True, seed=seed)
        self._it = iter(self.loader)
        next(self._it)  # mid-epoch
        B.host_rng().random(seed + 1)  # the generator away from its seeded state

    def snapshot(self):
        """Everything a load could change, copied: weights, optimizer, schedule, loader, RNG."""
        params = list(self.model.parameters())
        return {
            "weights": {k: v.copy() for k, v in self.model.state_dict().items()},
            "data_ids": [id(p.data) for p in params],
            "groups": copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                                     for g in self.opt.param_groups]),
            "group_params": [[id(p) for p in g["params"]] for g in self.opt.param_groups],
            "opt_state": {i: {k: (v.copy() if hasattr(v, "copy") else v)
                              for k, v in self.opt.state[id(p)].items()}
                          for i, p in enumerate(params) if id(p) in self.opt.state},
            "opt_keys": sorted(self.opt.state),
            "sched": copy.deepcopy(self.sched.state_dict()),
            "loader": copy.deepcopy(self.loader.state_dict()),
            "rng": copy.deepcopy(B.get_rng_state()),
        }

    def assert_unchanged(self, before, same_objects=True):
        after = self.snapshot()
        assert list(after["weights"]) == list(before["weights"])
        for key, value in before["weights"].items():
            assert after["weights"][key].dtype == value.dtype, key
            np.testing.assert_array_equal(after["weights"][key], value, err_msg=key)
        if same_objects:  # nothing was even replaced: the checks came before any write
            assert after["data_ids"] == before["data_ids"]
        assert after["groups"] == before["groups"]
        assert after["group_params"] == before["group_params"]
        assert after["opt_keys"] == before["opt_keys"]
        assert list(after["opt_state"]) == list(before["opt_state"])
        for i, entries in before["opt_state"].items():
            assert list(after["opt_state"][i]) == list(entries)
            for name, value in entries.items():
                got = after["opt_state"][i][name]
                if hasattr(value, "dtype"):
                    assert got.dtype == value.dtype, (i, name)
                np.testing.assert_array_equal(got, value, err_msg=f"{i}/{name}")
        assert after["sched"] == before["sched"]
        assert after["loader"] == before["loader"]
        assert after["rng"] == before["rng"]
        # and the loader continues with the very batches it would have handed out
        assert self.loader.state_dict() == before["loader"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A checkpoint as fit writes it (weights, momentum, schedule, loader, RNG, epoch)."""
    run = Run(seed=0)
    path = tmp_path_factory.mktemp("good") / "last.npz"
    tinynet.save(path, model=run.model, optimizer=run.opt, epochs_completed=1, batch=1,
                 partial=None, scheduler=run.sched.state_dict(),
                 train_loader=run.loader.state_dict(), rng=B.get_rng_state(),
                 scores=np.arange(3.0))
    return path


def _parts(path):
    """(arrays, info) of a checkpoint, to damage and write again."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    info = json.loads(bytes(arrays.pop("__json__")).decode("utf-8"))
    return arrays, info


def _write(path, arrays, info=None, json_bytes=None):
    if json_bytes is None:
        json_bytes = json.dumps(info).encode("utf-8")
    np.savez(path, __json__=np.frombuffer(json_bytes, np.uint8), **arrays)
    return path


def _rewrite(edit):
    """A builder: the good checkpoint with ``edit(arrays, info)`` applied."""
    def build(good, dst):
        arrays, info = _parts(good)
        edit(arrays, info)
        return _write(dst, arrays, info)
    return build


def _zip_member(member, change):
    """A builder: the good checkpoint with one zip entry's bytes replaced (the zip stays valid)."""
    def build(good, dst):
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(dst, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                zout.writestr(info, change(data) if info.filename == member else data)
        return dst
    return build


def _flip_inside(member):
    """A builder: one byte inside a zip entry's data flipped, in place (its CRC no longer fits)."""
    def build(good, dst):
        raw = bytearray(good.read_bytes())
        with zipfile.ZipFile(good) as z:
            data = z.read(member)
        at = raw.find(data[-64:]) + 10
        raw[at] ^= 0x40
        dst.write_bytes(bytes(raw))
        return dst
    return build


def _bytes(make):
    def build(good, dst):
        dst.write_bytes(make(good.read_bytes()))
        return dst
    return build


def _npy(good, dst):
    with open(dst, "wb") as f:
        np.save(f, np.arange(10.0))
    return dst


def _foreign_zip(good, dst):
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("weights.bin", b"\x00" * 16)
    return dst


def _plain_npz(good, dst):  # a state dict saved with np.savez: no __json__
    arrays, _ = _parts(good)
    np.savez(dst, **{k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
    return dst


def _object_entry(good, dst):  # a pickled object array where a weight should be
    arrays, info = _parts(good)
    arrays["model/0.weight"] = np.array([{"run": "code"}], dtype=object)
    return _write(dst, arrays, info)


def _json_bytes(change):
    def build(good, dst):
        arrays, info = _parts(good)
        return _write(dst, arrays, json_bytes=change(json.dumps(info).encode("utf-8")))
    return build


def _json_as_floats(good, dst):
    arrays, info = _parts(good)
    np.savez(dst, __json__=np.arange(5.0), **arrays)
    return dst


def _set(*keys, value):
    def edit(arrays, info):
        target = info
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return edit


def _drop_weight(arrays, info):  # the file lacks one layer's weights, consistently
    del arrays["model/7.weight"]
    info["model"].remove("7.weight")


def _extra_weight(arrays, info):
    arrays["model/12.weight"] = np.zeros((3, 3), np.float32)
    info["model"].append("12.weight")


def _array(key, make):
    def edit(arrays, info):
        arrays[key] = make(arrays[key])
    return edit


def _delete_array(key):
    def edit(arrays, info):
        del arrays[key]
    return edit


def _stray(arrays, info):
    arrays["notes"] = np.zeros(2)


def _saved_without(part):  # as save(path, model=None) or save(path, optimizer=None) writes it
    def edit(arrays, info):
        info[part] = None
        for key in [k for k in arrays if k.startswith(part + "/")]:
            del arrays[key]
    return edit


def _bad_state_index(arrays, info):
    state = info["optimizer"]["state"]
    state["99"] = state.pop("3")


# id: (builder, what the message says is wrong)
CASES = {
    # not a checkpoint at all
    "text renamed .npz": (_bytes(lambda b: b"epoch,loss\n1,0.52\n2,0.41\n"),
                          r"text file \(it starts with 'epoch,loss"),
    "empty file": (_bytes(lambda b: b""), r"empty \(0 bytes\)"),
    "zero bytes": (_bytes(lambda b: b"\x00" * 4096), r"only zero bytes"),
    "a .npy file": (_npy, r"single NumPy array \(\.npy"),
    "gzip file": (_bytes(lambda b: gzip.compress(b, mtime=0)), r"gzip-compressed"),
    "a pickle": (_bytes(lambda b: pickle.dumps({"w": [1.0]})), r"Python pickle"),
    "binary junk": (_bytes(lambda b: bytes(range(1, 60))), r"starts with the bytes 01 02"),
    "other zip": (_foreign_zip, r"zip archive but not an \.npz file .*readme\.txt"),
    "plain npz": (_plain_npz, r"no __json__ entry.*0\.weight"),
    "pickled entry": (_object_entry, r"entry 'model/0\.weight' holds Python objects"),
    # damaged
    "cut in half": (_bytes(lambda b: b[: len(b) // 2]), r"truncated or corrupted"),
    "last bytes missing": (_bytes(lambda b: b[:-30]), r"truncated or corrupted"),
    "entry cut short": (_zip_member("model/3.weight.npy", lambda d: d[: len(d) // 2]),
                        r"entry 'model/3\.weight' is cut short"),
    "entry longer": (_zip_member("model/3.bias.npy", lambda d: d + b"\x00" * 8),
                     r"entry 'model/3\.bias' has 8 bytes more"),
    "entry header damaged": (_zip_member("model/0.bias.npy", lambda d: d[:12] + b"!!" + d[14:]),
                             r"entry 'model/0\.bias' is cut short or damaged"),
    "flipped byte": (_flip_inside("model/7.weight.npy"),
                     r"corrupted: its entry 'model/7\.weight' is damaged .*CRC"),
    "json broken": (_json_bytes(lambda b: b[:-7]), r"does not parse as JSON \(.* line 1"),
    "json not utf-8": (_json_bytes(lambda b: b"\xff\xfe" + b), r"is not UTF-8 text"),
    "json not text": (_json_as_floats, r"float64 array of shape \(5,\), not the UTF-8 text"),
    "json a list": (_json_bytes(lambda b: b"[1, 2]"), r"format None"),
    # another writer, another version
    "other format": (_rewrite(_set("format", value="keras")), r"format 'keras'"),
    "newer version": (_rewrite(_set("version", value=2)),
                      r"newer tinynet: checkpoint format version 2.* up to 1"),
    "no version": (_rewrite(_set("version", value="1")), r"no valid format version \('1'\)"),
    # parts that do not fit together
    "listed weight absent": (_rewrite(_delete_array("model/7.weight")),
                             r"lists weights whose arrays are not in the file: 7\.weight"),
    "momentum absent": (_rewrite(_delete_array("optimizer/2/momentum_buffer")),
                        r"refers to an array 'optimizer/2/momentum_buffer' that is not"),
    "stray entry": (_rewrite(_stray), r"does not account for: notes"),
    "weight as text": (_rewrite(_array("model/0.weight", lambda a: np.full(a.shape, "abc"))),
                       r"'model/0\.weight' is stored as <U3 \(not numbers\)"),
    "momentum as ints": (_rewrite(_array("optimizer/0/momentum_buffer",
                                         lambda a: a.astype(np.int64))),
                         r"'optimizer/0/momentum_buffer' is stored as integer"),
    "state index not a number": (_rewrite(lambda a, i: i["optimizer"]["state"].update(x={})),
                                 r"entry 'x' that is not a parameter number"),
    # does not fit the model / optimizer / schedule / loader / generator
    "missing key": (_rewrite(_drop_weight), r"missing keys \(in the model, not in the file\): "
                    r"7\.weight$"),
    "unexpected key": (_rewrite(_extra_weight), r"unexpected keys \(in the file, not in the "
                       r"model\): 12\.weight"),
    "weight shape": (_rewrite(_array("model/0.weight", lambda a: np.zeros((8, 1, 5, 5),
                                                                          np.float32))),
                     r"wrong shape: '0\.weight' is \(8, 1, 5, 5\) in the file but \(6, 1, 5, 5\)"),
    "weight as ints": (_rewrite(_array("model/3.weight", lambda a: a.astype(np.int32))),
                       r"wrong dtype: '3\.weight' is stored as int32 \(integer\), the model's is "
                       r"float32"),
    "momentum shape": (_rewrite(_array("optimizer/3/momentum_buffer", lambda a: np.zeros(7))),
                       r"wrong shape: the 'momentum_buffer' of parameter 3 \(3\.bias\) is \(7,\)"),
    "state of parameter 99": (_rewrite(_bad_state_index), r"state is for parameter 99, but this "
                              r"SGD has 10 parameters"),
    "lr not a number": (_rewrite(_set("optimizer", "param_groups", 0, "lr", value="fast")),
                        r"param group 0's 'lr' is 'fast'"),
    "other optimizer": (_rewrite(_set("optimizer", "type", value="Adam")),
                        r"saved from Adam, but it is loaded into SGD"),
    "no weights": (_rewrite(_saved_without("model")), r"holds no model weights"),
    "no optimizer": (_rewrite(_saved_without("optimizer")), r"holds no optimizer state"),
    "other schedule": (_rewrite(_set("scheduler", "milestones", value=[1, 2])),
                       r"learning-rate schedule state does not fit this StepLR .*milestones"),
    "other loader": (_rewrite(_set("train_loader", "batch_size", value=5)),
                     r"DataLoader state does not fit .*batch_size=5"),
    "rng damaged": (_rewrite(_set("rng", "host", "state", value="garbage")),
                    r"random-generator state \('rng'\) cannot be restored"),
}

# cases that only concern the targets: plain tinynet.load(path) reads them fine
FITS_ONLY = {"missing key", "unexpected key", "weight shape", "weight as ints", "momentum shape",
             "state of parameter 99", "lr not a number", "other optimizer", "no weights",
             "no optimizer", "other schedule", "other loader", "rng damaged"}
# cases that tinynet.load(path, model, optimizer) cannot see (scheduler, loader, generator)
LOAD_INTO_ONLY = {"other schedule", "other loader", "rng damaged"}


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _assert_good_message(info, path, pattern):
    exc = info.value
    text = str(exc)
    assert isinstance(exc, CheckpointError) and isinstance(exc, ValueError)
    assert str(path) in text and exc.path == Path(path)
    assert "What to do:" in text
    for advice in ADVICE:
        assert advice in text, advice
    assert "Nothing was loaded" in text
    assert re.search(pattern, text, re.MULTILINE), text
    for link in _chain(exc):  # not in the message, nor in any exception chained to it
        assert "allow_pickle" not in str(link), str(link)


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_load_into_changes_nothing(case, good, tmp_path):
    build, pattern = CASES[case]
    (tmp_path / "run").mkdir()
    path = build(good, tmp_path / "run" / "last.npz")
    run = Run(seed=1, lr=0.01, momentum=0.5, step_size=3)
    before = run.snapshot()
    with pytest.raises(CheckpointError) as info:
        tinynet.load_into(path, run.model, run.opt, scheduler=run.sched, loader=run.loader)
    _assert_good_message(info, path, pattern)
    run.assert_unchanged(before)


@pytest.mark.parametrize("case", [c for c in CASES if c not in LOAD_INTO_ONLY])
def test_damaged_file_load_changes_nothing(case, good, tmp_path):
    build, pattern = CASES[case]
    path = build(good, tmp_path / "c.npz")
    run = Run(seed=2, lr=0.02)
    before = run.snapshot()
    with pytest.raises(CheckpointError) as info:
        tinynet.load(path, model=run.model, optimizer=run.opt)
    _assert_good_message(info, path, pattern)
    run.assert_unchanged(before)
    if case in FITS_ONLY:
        assert isinstance(tinynet.load(path), dict)  # the file itself is readable
    else:
        with pytest.raises(CheckpointError) as info:
            tinynet.load(path)
        _assert_good_message(info, path, pattern)


def test_the_good_file_loads(good):
    """The builders damage a file that does load: each error above comes from the damage."""
    run = Run(seed=1, lr=0.01, momentum=0.5, step_size=3)
    ckpt = tinynet.load_into(good, run.model, run.opt, scheduler=run.sched, loader=run.loader,
                             require=("epochs_completed",))
    assert ckpt["epochs_completed"] == 1 and run.opt.param_groups[0]["lr"] == 0.05
    np.testing.assert_array_equal(ckpt["scores"], np.arange(3.0))
    assert run.loader.state_dict()["batch_size"] == 8


def test_a_pytorch_file_is_named_as_such(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.npz"
    torch.save({"0.weight": torch.zeros(2, 2)}, path)
    run = Run(seed=1)
    before = run.snapshot()
    with pytest.raises(CheckpointError) as info:
        tinynet.load_into(path, run.model, run.opt)
    _assert_good_message(info, path, r"PyTorch file \(torch\.save\).*model\.load_state_dict")
    run.assert_unchanged(before)


def test_missing_file_is_also_a_file_not_found_error(good, tmp_path):
    missing = good.parent / "lats.npz"
    with pytest.raises(FileNotFoundError) as info:
        tinynet.load(missing)
    assert isinstance(info.value, CheckpointNotFoundError)
    text = str(info.value)
    assert str(missing) in text and "no such file" in text and "last.npz" in text
    assert "check the path" in text
    with pytest.raises(CheckpointNotFoundError, match="does not exist either"):
        tinynet.load(tmp_path / "nowhere" / "last.npz")


def test_a_folder_instead_of_a_file(good):
    with pytest.raises(CheckpointError) as info:
        tinynet.load(good.parent)
    _assert_good_message(info, good.parent, rf"a folder, not a file; did you mean .*{good.name}")


def test_an_optimizer_over_other_parameters(good):
    run = Run(seed=1)
    fewer = tinynet.optim.SGD(list(run.model.parameters())[:4], lr=0.3, momentum=0.9)
    _step(run.model, fewer, 5)
    before = run.snapshot()
    state_before = {k: {n: v.copy() for n, v in s.items()} for k, s in fewer.state.items()}
    with pytest.raises(CheckpointError) as info:
        tinynet.load_into(good, run.model, fewer)
    _assert_good_message(info, good, r"saved optimizer has \[10\] parameters per group, this "
                         r"SGD has \[4\]")
    run.assert_unchanged(before)
    assert fewer.param_groups[0]["lr"] == 0.3 and list(fewer.state) == list(state_before)
    for k, s in state_before.items():
        np.testing.assert_array_equal(fewer.state[k]["momentum_buffer"], s["momentum_buffer"])


def test_required_entries_are_checked_first(good):
    run = Run(seed=1)
    before = run.snapshot()
    with pytest.raises(CheckpointError) as info:
        tinynet.load_into(good, run.model, run.opt, scheduler=run.sched, loader=run.loader,
                          require=("epochs_completed", "history"))
    _assert_good_message(info, good, r"no 'history' entry, which resuming needs")
    assert "pass start_epoch to fit" in str(info.value)
    run.assert_unchanged(before)
    with pytest.raises(CheckpointError, match=r"no 'history', 'seconds' entries, which resuming"):
        tinynet.load_into(good, run.model, require=("history", "seconds"))
    run.assert_unchanged(before)


def test_every_problem_is_listed_at_once(good, tmp_path):
    def edit(arrays, info):
        _drop_weight(arrays, info)
        arrays["model/0.weight"] = np.zeros((8, 1, 5, 5), np.float32)
    path = _rewrite(edit)(good, tmp_path / "c.npz")
    run = Run(seed=1)
    with pytest.raises(CheckpointError) as info:
        tinynet.load_into(path, run.model, run.opt)
    text = str(info.value)
    assert "missing keys (in the model, not in the file): 7.weight" in text
    assert "wrong shape: '0.weight'" in text
    assert "expects 0.weight, 0.bias, 3.weight" in text  # the model's own keys, in order


def test_a_loaders_augmentation_is_left_as_it_was(tmp_path):
    """The loader's saved state fits (it is tried on a copy, augmentation included), a later
    part does not: the augmentation's generators, changed in place by a load, are untouched."""
    from tinynet.data.transforms import RandomHorizontalFlip

    saved_loader = DataLoader(_DATA, batch_size=8, shuffle=True, seed=4,
                              transform=RandomHorizontalFlip(seed=11))
    for _ in saved_loader:  # the flip's generator has drawn: its state is in the loader's
        pass
    run = Run(seed=1)
    path = tinynet.save(tmp_path / "c.npz", model=run.model, optimizer=run.opt,
                        train_loader=saved_loader.state_dict(),
                        rng={"host": {"bit_generator": "PCG64", "state": "garbage"}})
    flip = RandomHorizontalFlip(seed=12)
    loader = DataLoader(_DATA, batch_size=8, shuffle=True, seed=4, transform=flip)
    next(iter(loader))
    before = copy.deepcopy(flip.state_dict())
    assert before != saved_loader.state_dict()["transform"]
    with pytest.raises(CheckpointError, match=r"random-generator state \('rng'\)"):
        tinynet.load_into(path, run.model, run.opt, loader=loader)
    assert flip.state_dict() == before
    assert flip.seed == 12


@pytest.mark.parametrize("fail", ["rng", "optimizer"])
def test_a_load_that_fails_part_way_is_undone(good, monkeypatch, fail):
    """Should a load fail after the checks (it cannot, today), what was loaded is put back."""
    run = Run(seed=1, lr=0.01, momentum=0.5, step_size=3)
    before = run.snapshot()
    if fail == "rng":
        real, calls = B.set_rng_state, []

        def broken(state):  # the first call (the load) fails; the undo's call works
            calls.append(state)
            if len(calls) == 1:
                raise RuntimeError("device generator gone")
            real(state)

        monkeypatch.setattr(B, "set_rng_state", broken)
    else:
        real_load = run.opt.load_state_dict

        def broken(state):  # writes part of the state, then fails
            run.opt.param_groups[0]["lr"] = 123.0
            run.opt.state = {}
            raise RuntimeError("out of memory")

        run.opt.load_state_dict = broken
    with pytest.raises(CheckpointError, match="failed part way .*put back") as info:
        tinynet.load_into(good, run.model, run.opt, scheduler=run.sched, loader=run.loader)
    assert str(good) in str(info.value)
    monkeypatch.undo()
    if fail == "optimizer":
        run.opt.load_state_dict = real_load
    run.assert_unchanged(before, same_objects=False)


def test_files_from_before_the_optimizer_type_load(good, tmp_path):
    arrays, info = _parts(good)
    del info["optimizer"]["type"]
    path = _write(tmp_path / "old.npz", arrays, info)
    run = Run(seed=1)
    tinynet.load_into(path, run.model, run.opt)
    saved, _ = _parts(good)
    np.testing.assert_array_equal(run.model.state_dict()["0.weight"], saved["model/0.weight"])


# ----------------------------------------------------------------------------------------------
# Any cut and any flipped byte: a CheckpointError (never another exception), or the same data
# ----------------------------------------------------------------------------------------------
def _weights(path):
    return _parts(path)[0]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_cut_or_flipped_byte(good, tmp_path, data):
    raw = good.read_bytes()
    if data.draw(st.booleans(), label="cut"):
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="position")
        bit = data.draw(st.integers(0, 7), label="bit")
        damaged = raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1:]
    path = tmp_path / "fuzz.npz"
    path.write_bytes(damaged)
    run = Run(seed=3)
    before = run.snapshot()
    try:
        tinynet.load_into(path, run.model, run.opt, scheduler=run.sched, loader=run.loader)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "What to do:" in str(exc)
        assert all("allow_pickle" not in str(link) for link in _chain(exc))
        run.assert_unchanged(before)
    else:  # the flip hit a byte that holds no data (a timestamp): the data is the good data
        expected = _weights(good)
        for key, value in run.model.state_dict().items():
            np.testing.assert_array_equal(value, expected[f"model/{key}"], err_msg=key)
