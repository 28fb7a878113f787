"""tinynet.experiments: grid names, the results table, skipping, resuming, files, the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from script_loader import load_script

import tinynet
from tinynet import nn
from tinynet.data import ArrayDataset, DataLoader, FashionMNIST
from tinynet.experiments import Results, Run, grid, plot_runs, read_history, run_grid
from tinynet.models import course_cnn

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# grid: the product and the names
# ----------------------------------------------------------------------------------------------
_values = st.one_of(
    st.integers(-1000, 10**6),
    st.floats(1e-8, 10.0, allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.from_regex(r"[a-z][a-z0-9_.+-]{0,6}", fullmatch=True),
)
_settings = st.dictionaries(
    st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True).filter(
        lambda k: k not in ("items", "name", "settings")),
    st.lists(_values, min_size=1, max_size=3, unique_by=lambda v: (type(v), repr(v))),
    min_size=1, max_size=3,
).filter(lambda d: all(len({repr(v) for v in vs}) == len(vs) for vs in d.values()))


@given(settings=_settings)
def test_grid_is_the_product_in_order_with_readable_unique_names(settings):
    runs = grid(**settings)
    combos = list(itertools.product(*settings.values()))
    assert len(runs) == int(np.prod([len(v) for v in settings.values()]))
    assert [tuple(r.settings.values()) for r in runs] == combos  # first setting changes slowest
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    for run, combo in zip(runs, combos, strict=True):
        assert list(run.settings) == list(settings)  # the order of the keywords
        parts = run.name.split(",")
        assert [p.split("=")[0] for p in parts] == list(settings)
        assert [p.split("=", 1)[1] for p in parts] == [str(v) for v in combo]
        assert "/" not in run.name and " " not in run.name and "\\" not in run.name
        for key, value in zip(settings, combo, strict=True):
            assert getattr(run, key) == value and run[key] == value


def test_grid_names_by_hand():
    runs = grid(lr=[0.01, 0.001], batch_size=[64, 256])
    assert [r.name for r in runs] == ["lr=0.01,batch_size=64", "lr=0.01,batch_size=256",
                                      "lr=0.001,batch_size=64", "lr=0.001,batch_size=256"]
    assert runs[1].lr == 0.01 and runs[1].batch_size == 256
    assert repr(runs[0]) == "Run(lr=0.01, batch_size=64)"
    # NumPy scalars name a run as the Python number does; a single value is one value to try
    assert grid(lr=np.float32(0.5), seed=[np.int64(3)])[0].name == "lr=0.5,seed=3"
    assert grid(lr=[1e-5])[0].name == "lr=1e-05"
    assert grid(lr=[0.1, 0.2])[0] == grid(lr=[0.1])[0]  # stable: the same settings, the same run
    with pytest.raises(dataclasses.FrozenInstanceError):
        runs[0].name = "x"
    with pytest.raises(AttributeError, match="has no setting 'momentum'"):
        _ = runs[0].momentum


@pytest.mark.parametrize("settings, match", [
    ({"lr": []}, "no values"),
    ({"lr": [0.1, 0.1]}, "share the name"),
    ({"opt": ["sgd with momentum"]}, "folder name"),
    ({"opt": ["a/b"]}, "folder name"),
    ({"lr": [float("nan")]}, "finite"),
    ({"name": [1]}, "cannot be a setting"),
])
def test_grid_refuses_what_cannot_name_a_folder(settings, match):
    with pytest.raises(ValueError, match=match):
        grid(**settings)


def test_grid_refuses_values_without_a_readable_name():
    with pytest.raises(TypeError, match="numbers"):
        grid(shape=[(1, 2)])


# ----------------------------------------------------------------------------------------------
# A tiny setup: the course network on 64 sample images (4 batches of 16), 64 validation images
# ----------------------------------------------------------------------------------------------
class InterruptingLoader(DataLoader):
    """A DataLoader that raises KeyboardInterrupt (as Ctrl-C would) at one (epoch, batch)."""

    interrupt_at: tuple[int, int] | None = None
    batches_given = 0  # batches handed to training (a resumed run skips the ones done before)

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if (self.epoch - 1, i) == self.interrupt_at:
                raise KeyboardInterrupt
            self.batches_given += 1
            yield batch


class TinySetup:
    def __init__(self, interrupt: dict | None = None, data: str = "tiny"):
        images = FashionMNIST(train=True, sample=True)
        self.train = ArrayDataset(images.images[:64], images.labels[:64])
        self.val = ArrayDataset(images.images[64:128], images.labels[64:128])
        self.interrupt = interrupt or {}  # run name -> (epoch index, batch index)
        self.data = data
        self.calls: list[str] = []
        self.loaders: dict[str, InterruptingLoader] = {}

    def describe(self):
        return {"data": self.data}

    def __call__(self, run: Run) -> dict:
        self.calls.append(run.name)
        tinynet.manual_seed(0)
        model = course_cnn()
        loader = InterruptingLoader(self.train, batch_size=16, shuffle=True, seed=1)
        loader.interrupt_at = self.interrupt.get(run.name)
        self.loaders[run.name] = loader
        return {"model": model, "loss_fn": nn.CrossEntropyLoss(),
                "optimizer": tinynet.optim.SGD(model.parameters(), lr=run.lr, momentum=0.9),
                "train_loader": loader, "val_loader": DataLoader(self.val, batch_size=64)}


def _lines(folder: Path) -> list[dict]:
    return [json.loads(s) for s in (folder / "history.jsonl").read_text().splitlines()]


def _quiet(runs, setup, out, epochs=2, **kw):
    return run_grid(runs, setup, epochs=epochs, out=out, progress=False, verbose=False,
                    plot=False, **kw)


RUNS = grid(lr=[0.0, 0.05, 0.02])  # lr 0 learns nothing: the accuracies differ


def test_results_sorted_by_validation_accuracy_and_files_equal_the_histories(tmp_path):
    results = _quiet(RUNS, TinySetup(), tmp_path)
    accs = [r["val_acc"] for r in results]
    assert accs == sorted(accs, reverse=True) and len(set(accs)) > 1
    assert sorted(r["name"] for r in results) == sorted(r.name for r in RUNS)
    assert results.best is results[0] and results.status == "completed"
    # the printed table and results.md: one row per run, in the same order
    table_rows = results.table().splitlines()[1:]
    assert [line.split()[0] for line in table_rows] == [r["name"] for r in results]
    md_rows = (tmp_path / "results.md").read_text().splitlines()[2:]
    assert [line.split("`")[1] for line in md_rows] == [r["name"] for r in results]
    # results.json holds exactly the histories on disk, and the table's numbers are the last epoch
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in doc["runs"]] == [r["name"] for r in results]
    for row in doc["runs"]:
        history = _lines(tmp_path / row["name"])
        assert row["history"] == history and len(history) == 2 == row["epochs"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert row[key] == history[-1][key]
        assert row["seconds"] == pytest.approx(sum(h["seconds"] for h in history))
        assert row["status"] == "completed" and row["action"] == "trained"
        info = json.loads((tmp_path / row["name"] / "run.json").read_text())
        assert info["settings"] == row["settings"] and info["status"] == "completed"


def test_results_table_order_by_hand():
    rows = [{"name": n, "val_acc": a, "epochs": 1} for n, a in
            (("a", 0.5), ("b", None), ("c", 0.9), ("d", 0.5))]
    from tinynet.experiments import _sorted

    assert [r["name"] for r in _sorted(Results(rows))] == ["c", "a", "d", "b"]  # ties: grid order


def test_finished_runs_are_skipped_and_read_back(tmp_path):
    setup = TinySetup()
    first = _quiet(RUNS, setup, tmp_path)
    before = {r.name: (tmp_path / r.name / "history.jsonl").read_bytes() for r in RUNS}
    ckpt_times = {r.name: (tmp_path / r.name / "last.npz").stat().st_mtime_ns for r in RUNS}
    setup.calls.clear()
    again = _quiet(RUNS, setup, tmp_path)
    assert setup.calls == []  # nothing was built, nothing trained
    assert [r["action"] for r in again] == ["skipped"] * 3
    for a, b in zip(first, again, strict=True):
        assert a["name"] == b["name"] and a["history"] == b["history"]
    for run in RUNS:
        assert (tmp_path / run.name / "history.jsonl").read_bytes() == before[run.name]
        assert (tmp_path / run.name / "last.npz").stat().st_mtime_ns == ckpt_times[run.name]
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 3


def test_an_interrupted_grid_resumes_exactly_without_duplicates(tmp_path, capsys):
    straight = _quiet(RUNS, TinySetup(), tmp_path / "straight")
    second = RUNS[1].name
    setup = TinySetup(interrupt={second: (1, 2)})  # run 2, epoch 2, while fetching batch 3
    stopped = _quiet(RUNS, setup, tmp_path / "grid", continue_hint="the same command")
    assert stopped.status == "interrupted"
    err = capsys.readouterr().err
    assert "The grid stopped (Ctrl-C) at run 2 of 3" in err
    assert "To continue: the same command" in err and stopped.message in err
    assert setup.calls == [RUNS[0].name, second]  # run 3 was not started
    assert not (tmp_path / "grid" / RUNS[2].name).exists()
    assert [e["epoch"] for e in _lines(tmp_path / "grid" / second)] == [1]
    assert tinynet.load(tmp_path / "grid" / second / "last.npz")["status"] == "interrupted"
    by_name = {r["name"]: r for r in stopped}
    assert by_name[second]["status"] == "interrupted" and by_name[second]["epochs"] == 1
    doc = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert doc["status"] == "interrupted" and len(doc["runs"]) == 2
    epoch_1 = (tmp_path / "grid" / second / "history.jsonl").read_text()

    setup = TinySetup()
    resumed = _quiet(RUNS, setup, tmp_path / "grid")
    assert setup.calls == [second, RUNS[2].name]  # the finished run 1 was skipped
    # run 2 trained only the 2 batches of epoch 2 it had not done (of 4 per epoch), and kept
    # its epoch-1 line as written before the Ctrl-C (retraining would rewrite its seconds)
    assert setup.loaders[second].batches_given == 2
    assert setup.loaders[RUNS[2].name].batches_given == 8
    assert (tmp_path / "grid" / second / "history.jsonl").read_text().startswith(epoch_1)
    actions = {r["name"]: r["action"] for r in resumed}
    assert actions == {RUNS[0].name: "skipped", second: "resumed", RUNS[2].name: "trained"}
    expected = {r["name"]: r["history"] for r in straight}
    for row in resumed:
        history = _lines(tmp_path / "grid" / row["name"])
        assert [e["epoch"] for e in history] == [1, 2]  # each epoch once
        assert row["history"] == history
        for got, want in zip(history, expected[row["name"]], strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                assert got[key] == want[key], (row["name"], key)  # resumed exactly
    doc = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert doc["status"] == "completed" and len(doc["runs"]) == 3


def test_more_epochs_continue_the_finished_runs(tmp_path):
    runs = RUNS[1:2]
    _quiet(runs, TinySetup(), tmp_path, epochs=1)
    results = _quiet(runs, TinySetup(), tmp_path, epochs=2)
    assert results[0]["action"] == "resumed" and results[0]["epochs"] == 2
    assert [e["epoch"] for e in _lines(tmp_path / runs[0].name)] == [1, 2]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes it diverge
def test_a_diverged_run_is_a_result_and_is_not_retrained(tmp_path):
    runs = grid(lr=[1e30, 0.05])
    setup = TinySetup()
    results = _quiet(runs, setup, tmp_path, epochs=1)
    by_name = {r["name"]: r for r in results}
    assert by_name["lr=1e+30"]["status"] == "diverged"
    assert "learning rate" in by_name["lr=1e+30"]["message"]
    assert results[-1]["name"] == "lr=1e+30"  # no validation accuracy: last
    assert by_name["lr=0.05"]["status"] == "completed"
    setup.calls.clear()
    again = _quiet(runs, setup, tmp_path, epochs=1)
    assert setup.calls == [] and {r["status"] for r in again} == {"diverged", "completed"}


def test_runs_trained_on_other_data_are_not_mixed(tmp_path):
    _quiet(RUNS[:1], TinySetup(), tmp_path, epochs=1)
    with pytest.raises(ValueError, match="Results on different data do not compare"):
        _quiet(RUNS[:1], TinySetup(data="other"), tmp_path, epochs=1)


def test_run_grid_refuses_a_bad_setup(tmp_path):
    with pytest.raises(TypeError, match="needs model, optimizer, train_loader"):
        _quiet(RUNS[:1], lambda run: {"model": None}, tmp_path)
    with pytest.raises(ValueError, match="more than once"):
        _quiet(RUNS[:1] * 2, TinySetup(), tmp_path)


def test_plot_runs_draws_every_run(tmp_path):
    pytest.importorskip("matplotlib")
    results = _quiet(RUNS[:2], TinySetup(), tmp_path, epochs=1)
    fig = plot_runs(tmp_path, path=tmp_path / "runs.png")  # read back from results.json
    loss_ax, acc_ax = fig.axes
    assert len(acc_ax.lines) == 2 * len(results)  # training and validation per run
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [r["name"]
                                                                       for r in results]
    assert (tmp_path / "runs.png").read_bytes()[:8] == PNG_SIGNATURE
    assert read_history(tmp_path / results[0]["name"]) == results[0]["history"]


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compare_runs():
    return load_script(ROOT / "examples" / "compare_runs.py", "compare_runs_example")


def test_the_command_line_on_a_tiny_setting(compare_runs, tmp_path, capsys):
    args = ["--lr", "0.05", "0.01", "--batch-size", "32", "--epochs", "1", "--data", "sample",
            "--limit", "64", "--out", str(tmp_path), "--no-progress", "--no-plot"]
    assert compare_runs.main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs: lr [0.05, 0.01] x batch_size [32]" in out
    assert "fixed: momentum=0.9" in out and "64 training images" in out
    doc = json.loads((tmp_path / "results.json").read_text())
    names = {r["name"] for r in doc["runs"]}
    assert names == {"lr=0.05,batch_size=32", "lr=0.01,batch_size=32"}
    table = out.split("best validation accuracy first")[1]
    assert all(name in table for name in names) and "best: lr=" in out
    info = json.loads((tmp_path / "lr=0.05,batch_size=32" / "run.json").read_text())
    assert info["setup"]["data"] == "sample" and info["setup"]["train_images"] == 64
    # the same command again trains nothing
    assert compare_runs.main(args) == 0
    assert compare_runs.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done before (1 epochs done), skipped") == 4
    for name in names:
        assert len(_lines(tmp_path / name)) == 1
    # other data in the same folder is refused with a clear message
    assert compare_runs.main([*args[:-6], "--limit", "32", "--out", str(tmp_path),
                              "--no-plot"]) == 2
    assert "use another out folder (--out)" in capsys.readouterr().err


def test_the_command_line_stops_on_ctrl_c_and_the_same_command_continues(compare_runs, tmp_path,
                                                                         capsys, monkeypatch):
    class CtrlCInTheFirstRun(compare_runs.CourseSetup):
        def __call__(self, run):
            pieces = super().__call__(run)
            if run.lr == 0.05 and not calls:
                pieces["train_loader"].__class__ = InterruptingLoader
                pieces["train_loader"].interrupt_at = (0, 1)  # epoch 1, fetching batch 2
            calls.append(run.name)
            return pieces

    calls: list[str] = []
    monkeypatch.setattr(compare_runs, "CourseSetup", CtrlCInTheFirstRun)
    args = ["--lr", "0.05", "0.01", "--epochs", "1", "--data", "sample", "--limit", "128",
            "--out", str(tmp_path), "--no-progress", "--no-plot"]  # 2 batches of 64 per epoch
    assert compare_runs.main(args) == 130  # the shell's code for Ctrl-C
    err = capsys.readouterr().err
    assert "The grid stopped (Ctrl-C) at run 1 of 2 (lr=0.05)" in err
    assert "To continue: python examples/compare_runs.py --lr 0.05 0.01" in err
    assert calls == ["lr=0.05"]
    assert compare_runs.main(args) == 0
    assert calls == ["lr=0.05", "lr=0.05", "lr=0.01"]
    rows = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["name"]: r["action"] for r in rows} == {"lr=0.05": "resumed", "lr=0.01": "trained"}
    assert all(len(_lines(tmp_path / r["name"])) == 1 for r in rows)
