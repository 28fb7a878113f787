"""fit / evaluate: learning, history, checkpoints, Ctrl-C, divergence, schedulers; course_cnn."""

from __future__ import annotations

import io
import json
import signal
import sys

import numpy as np
import pytest

import tinynet
from tinynet import backend as B
from tinynet import nn
from tinynet.data import ArrayDataset, DataLoader, FashionMNIST
from tinynet.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from tinynet.models import course_cnn
from tinynet.train import HISTORY_KEYS, TrainingDiverged, evaluate, fit


@pytest.fixture(scope="module")
def sample():
    return FashionMNIST(train=True, sample=True), FashionMNIST(train=False, sample=True)


def _subset(dataset, n):
    return ArrayDataset(dataset.images[:n], dataset.labels[:n])


def _setup(data, seed=0, lr=0.05, momentum=0.9, batch_size=32, loader_cls=DataLoader, **kw):
    tinynet.manual_seed(seed)
    model = course_cnn()
    opt = tinynet.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = loader_cls(data, batch_size=batch_size, shuffle=True, seed=seed, **kw)
    return model, nn.CrossEntropyLoss(), opt, loader


def _weights(model):
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ----------------------------------------------------------------------------------------------
# the course network
# ----------------------------------------------------------------------------------------------
def test_course_cnn_layers_shapes_and_keys():
    model = course_cnn()
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "0.weight": (6, 1, 5, 5), "0.bias": (6,), "3.weight": (12, 6, 5, 5), "3.bias": (12,),
        "7.weight": (120, 192), "7.bias": (120,), "9.weight": (60, 120), "9.bias": (60,),
        "11.weight": (10, 60), "11.bias": (10,),
    }
    assert sum(p.size for p in model.parameters()) == 32998  # the number in the docstring
    x = np.zeros((3, 1, 28, 28), np.float32)
    y = model(x)
    assert y.shape == (3, 10) and y.dtype == np.float32
    assert model[:7](x).shape == (3, 192)  # flatten: 12 channels * 4 * 4
    assert course_cnn(dtype=np.float64).dtype == np.float64
    assert course_cnn(device="cpu").device == "cpu"


def test_course_cnn_matches_pytorch():
    torch = pytest.importorskip("torch")
    tn = torch.nn
    ref = tn.Sequential(tn.Conv2d(1, 6, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(6, 12, 5),
                        tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(192, 120), tn.ReLU(),
                        tn.Linear(120, 60), tn.ReLU(), tn.Linear(60, 10)).double()
    model = course_cnn(dtype=np.float64)
    model.load_state_dict(ref.state_dict())  # same keys, same layouts
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28))
    np.testing.assert_allclose(model(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10,
                               atol=1e-12)


# ----------------------------------------------------------------------------------------------
# fit and evaluate
# ----------------------------------------------------------------------------------------------
def test_fit_learns_and_writes_history(sample, tmp_path, capsys):
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 256))
    val = DataLoader(_subset(sample[1], 100), batch_size=50)
    history = fit(model, loss_fn, opt, loader, epochs=3, val_loader=val, out_dir=tmp_path,
                  progress=False)
    assert history.status == "completed" and len(history) == 3
    assert [e["epoch"] for e in history] == [1, 2, 3]
    for entry in history:
        assert tuple(entry) == HISTORY_KEYS
        assert 0 <= entry["train_acc"] <= 1 and 0 <= entry["val_acc"] <= 1
        assert entry["lr"] == 0.05 and entry["seconds"] > 0 and entry["images_per_s"] > 0
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == list(history)
    assert history.checkpoint == tmp_path / "last.npz"
    ckpt = tinynet.load(history.checkpoint)
    assert ckpt["epochs_completed"] == 3 and ckpt["batch"] == 0 and ckpt["status"] == "epoch_end"
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "images/s" in out  # the one line per epoch
    # the last val numbers are evaluate()'s
    result = evaluate(model, val, loss_fn)
    assert result["accuracy"] == history[-1]["val_acc"]
    assert result["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)


@pytest.mark.usefixtures("kernel_path")
def test_fit_on_the_fused_copy_equals_fit_on_the_plain_model(sample):
    """fit(fuse=True) (the default) trains a fused copy sharing the model's Parameters: the same
    history and weights bit for bit as fit(fuse=False), which runs the modules one by one; and
    the reference kernels alone learn the same (to rounding)."""
    train, test = _subset(sample[0], 256), _subset(sample[1], 128)
    runs = []
    for fuse in (True, False):
        model, loss_fn, opt, loader = _setup(train)
        history = fit(model, loss_fn, opt, loader, epochs=2, val_loader=DataLoader(test, 64),
                      progress=False, verbose=False, fuse=fuse)
        runs.append(([(e["train_loss"], e["val_loss"]) for e in history], _weights(model)))
    assert runs[0][0] == runs[1][0]
    _assert_same_weights(runs[0][1], runs[1][1])


def test_fit_without_validation_or_out_dir(sample):
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 64))
    history = fit(model, loss_fn, opt, loader, epochs=1, progress=False, verbose=False)
    assert history[0]["val_loss"] is None and history[0]["val_acc"] is None
    assert history.checkpoint is None


def test_evaluate_modes_no_cache_and_uneven_batches(sample):
    model = course_cnn()
    data = _subset(sample[1], 70)
    one = evaluate(model, DataLoader(data, batch_size=70))
    uneven = evaluate(model, DataLoader(data, batch_size=32))  # 32 + 32 + 6
    assert uneven["accuracy"] == one["accuracy"]
    assert uneven["loss"] == pytest.approx(one["loss"], rel=1e-5)
    x, y = next(iter(DataLoader(data, batch_size=70)))
    assert one["accuracy"] == float((model(x).argmax(axis=1) == y).mean())
    assert model.training  # put back into training mode
    model.eval()
    evaluate(model, DataLoader(data, batch_size=32))
    assert not model.training  # and evaluation mode stays evaluation mode
    # inside no_grad: no module kept a backward cache
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        model.backward(np.ones((6, 10), np.float32))


def test_progress_bar_on_a_terminal_and_fallbacks(sample, monkeypatch, capsys):
    import tinynet.train as T

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    fake = Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.delenv("TINYNET_PROGRESS", raising=False)
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 64))
    fit(model, loss_fn, opt, loader, epochs=1, progress=True)
    bar = fake.getvalue()
    assert "epoch 1/1" in bar and "loss=" in bar and "acc=" in bar and "img_s=" in bar
    assert T._progress_bar(False, 2, 0, "x") is None  # asked off
    monkeypatch.setenv("TINYNET_PROGRESS", "0")
    assert T._progress_bar(True, 2, 0, "x") is None  # off by the environment
    monkeypatch.delenv("TINYNET_PROGRESS")
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm not installed
    assert T._progress_bar(True, 2, 0, "x") is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    monkeypatch.delitem(sys.modules, "tqdm.auto")
    assert T._progress_bar(True, 2, 0, "x") is None
    fit(model, loss_fn, opt, loader, epochs=2, start_epoch=1, progress=True)
    assert "epoch 2/2" in capsys.readouterr().out  # the plain line per epoch remains


class CountingScheduler:
    """The scheduler protocol: step(), state_dict(), load_state_dict(); halves the lr."""

    def __init__(self, optimizer):
        self.optimizer, self.steps = optimizer, 0

    def step(self):
        self.steps += 1
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.mark.parametrize("interval", ["epoch", "batch"])
def test_scheduler_protocol(sample, tmp_path, interval):
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 96), lr=0.04)
    sched = CountingScheduler(opt)
    history = fit(model, loss_fn, opt, loader, epochs=2, scheduler=sched, out_dir=tmp_path,
                  progress=False, verbose=False, scheduler_interval=interval)
    per_epoch = 1 if interval == "epoch" else len(loader)
    assert sched.steps == 2 * per_epoch
    assert [e["lr"] for e in history] == [0.04, 0.04 * 0.5 ** per_epoch]
    assert tinynet.load(tmp_path / "last.npz")["scheduler"] == {"steps": 2 * per_epoch}
    with pytest.raises(ValueError, match="scheduler_interval"):
        fit(model, loss_fn, opt, loader, 1, scheduler=sched, scheduler_interval="step")
    with pytest.raises(TypeError, match="state_dict"):
        fit(model, loss_fn, opt, loader, 1, scheduler=object())


def test_resume_in_process_equals_straight_run(sample, tmp_path):
    data = _subset(sample[0], 100)
    model, loss_fn, opt, loader = _setup(data)
    straight = fit(model, loss_fn, opt, loader, epochs=2, out_dir=tmp_path / "a", progress=False,
                   verbose=False)
    expected = _weights(model)

    model, loss_fn, opt, loader = _setup(data)
    fit(model, loss_fn, opt, loader, epochs=1, out_dir=tmp_path / "b", progress=False,
        verbose=False)
    model, loss_fn, opt, loader = _setup(data, seed=7, lr=1.0)  # all of it gets overwritten
    resumed = fit(model, loss_fn, opt, loader, epochs=2, out_dir=tmp_path / "b", progress=False,
                  verbose=False, resume=tmp_path / "b" / "last.npz")
    _assert_same_weights(_weights(model), expected)
    assert [e["train_loss"] for e in resumed] == [e["train_loss"] for e in straight]
    lines = (tmp_path / "b" / "history.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


# ----------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------
class InterruptingLoader(DataLoader):
    """A DataLoader that raises KeyboardInterrupt (as Ctrl-C would) at one (epoch, batch)."""

    interrupt_at: tuple[int, int] | None = None

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if (self.epoch - 1, i) == self.interrupt_at:
                raise KeyboardInterrupt
            yield batch


def _augment(seed, augment=True):
    """Loader keywords: random crops and flips with these seeds (or none)."""
    if not augment:
        return {}
    return dict(transform=Compose([RandomCrop(28, padding=2, seed=seed),
                                   RandomHorizontalFlip(seed=seed + 1)]))


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_interrupt_mid_epoch_saves_and_resumes_exactly(sample, tmp_path, capsys, augment):
    data = _subset(sample[0], 160)  # 5 batches of 32
    model, loss_fn, opt, loader = _setup(data, **_augment(11, augment))
    straight = fit(model, loss_fn, opt, loader, epochs=2, progress=False, verbose=False)
    expected = _weights(model)

    model, loss_fn, opt, loader = _setup(data, loader_cls=InterruptingLoader,
                                         **_augment(11, augment))
    loader.interrupt_at = (1, 3)  # epoch 2, while fetching its 4th batch
    history = fit(model, loss_fn, opt, loader, epochs=2, out_dir=tmp_path, progress=False,
                  verbose=False, resume_hint="python train.py --resume")
    assert history.status == "interrupted" and len(history) == 1
    err = capsys.readouterr().err
    assert "interrupted" in err and "epoch 2, after batch 3/5" in err
    assert "To resume: python train.py --resume" in err
    assert history.message in err
    ckpt = tinynet.load(tmp_path / "last.npz")
    assert ckpt["status"] == "interrupted"
    assert (ckpt["epochs_completed"], ckpt["batch"]) == (1, 3)
    assert ckpt["train_loader"]["batch"] == 3 and ckpt["partial"]["seen"] == 96

    # other seeds for everything: the checkpoint restores them all
    model, loss_fn, opt, loader = _setup(data, seed=3, **_augment(98, augment))
    resumed = fit(model, loss_fn, opt, loader, epochs=2, out_dir=tmp_path, progress=False,
                  verbose=False, resume=tmp_path / "last.npz")
    assert resumed.status == "completed"
    _assert_same_weights(_weights(model), expected)
    for a, b in zip(resumed, straight, strict=True):
        for key in ("epoch", "train_loss", "train_acc", "lr"):
            assert a[key] == b[key], key


class SigintDuringUpdate(tinynet.optim.SGD):
    """Sends a real SIGINT (Ctrl-C) to this process in the middle of the 3rd weight update."""

    calls = 0

    def step(self):
        self.calls += 1
        groups = self.param_groups
        if self.calls == 3:
            half = dict(groups[0], params=groups[0]["params"][:4])
            rest = dict(groups[0], params=groups[0]["params"][4:])
            self.param_groups = [half]
            super().step()
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after 4 of 10 parameters
            self.param_groups = [rest]
            super().step()
            self.param_groups = groups
        else:
            super().step()


def test_ctrl_c_during_the_update_waits_for_it(sample, tmp_path):
    data = _subset(sample[0], 160)
    tinynet.manual_seed(0)
    model = course_cnn()
    opt = SigintDuringUpdate(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(data, batch_size=32, shuffle=True, seed=0)
    history = fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=2, out_dir=tmp_path,
                  progress=False, verbose=False)
    assert history.status == "interrupted"
    ckpt = tinynet.load(tmp_path / "last.npz")
    assert (ckpt["epochs_completed"], ckpt["batch"]) == (0, 3)  # the 3rd update completed
    _assert_same_weights({k: v for k, v in ckpt["model"].items()}, _weights(model))
    # the same three updates without any interruption give the same weights
    model2, loss_fn, opt2, loader2 = _setup(data)
    for i, (x, y) in enumerate(loader2):
        if i == 3:
            break
        opt2.zero_grad()
        loss_fn(model2(x), y)
        model2.backward(loss_fn.backward())
        opt2.step()
    _assert_same_weights(_weights(model2), _weights(model))


def test_interrupt_without_out_dir_says_nothing_was_saved(sample, capsys):
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 64), loader_cls=InterruptingLoader)
    loader.interrupt_at = (0, 1)
    history = fit(model, loss_fn, opt, loader, epochs=1, progress=False, verbose=False)
    assert history.status == "interrupted"
    assert "Nothing was saved" in capsys.readouterr().err


def test_resume_with_a_plain_list_of_batches(sample, tmp_path):
    data = _subset(sample[0], 96)
    batches = list(DataLoader(data, batch_size=32))  # no state_dict: a plain iterable

    class Interrupting(list):
        def __iter__(self):
            for i, b in enumerate(list.__iter__(self)):
                if i == 2:
                    raise KeyboardInterrupt
                yield b

    tinynet.manual_seed(0)
    model = course_cnn()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(model, nn.CrossEntropyLoss(), opt, batches, epochs=2, progress=False, verbose=False)
    expected = _weights(model)

    tinynet.manual_seed(0)
    model = course_cnn()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(model, nn.CrossEntropyLoss(), opt, batches, epochs=1, out_dir=tmp_path, progress=False,
        verbose=False)
    fit(model, nn.CrossEntropyLoss(), opt, Interrupting(batches), epochs=2, out_dir=tmp_path,
        progress=False, verbose=False, start_epoch=1)
    assert tinynet.load(tmp_path / "last.npz")["batch"] == 2
    fit(model, nn.CrossEntropyLoss(), opt, batches, epochs=2, out_dir=tmp_path, progress=False,
        verbose=False, resume=tmp_path / "last.npz")
    _assert_same_weights(_weights(model), expected)


# ----------------------------------------------------------------------------------------------
# divergence
# ----------------------------------------------------------------------------------------------
class NaNAfter(nn.Module):
    """Passes x through, until `armed`: then returns NaN (a network that has blown up)."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return x * np.float32("nan") if self.armed else x

    def backward(self, grad_output):
        return grad_output


class NaNLoss(nn.CrossEntropyLoss):
    """The loss itself turns NaN (finite logits) after `after` calls."""

    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, logits, labels):
        self.calls += 1
        loss = super().forward(logits, labels)
        return loss * np.float32("nan") if self.calls > self.after else loss


@pytest.mark.parametrize("path", ["nan_logits", "nan_loss"])
def test_divergence_stops_and_keeps_last_good_checkpoint(sample, tmp_path, path):
    data = _subset(sample[0], 64)
    tinynet.manual_seed(0)
    model = nn.Sequential(*course_cnn(), NaNAfter())
    opt = tinynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(data, batch_size=32, shuffle=True, seed=0)
    loss_fn = nn.CrossEntropyLoss() if path == "nan_logits" else NaNLoss(after=3)
    fit(model, loss_fn, opt, loader, epochs=1, out_dir=tmp_path, progress=False, verbose=False)
    good = (tmp_path / "last.npz").read_bytes()
    if path == "nan_logits":
        model[-1].armed = True
    with pytest.raises(TrainingDiverged) as info:
        fit(model, loss_fn, opt, loader, epochs=3, out_dir=tmp_path, progress=False,
            verbose=False, resume=tmp_path / "last.npz")
    exc = info.value
    assert isinstance(exc, RuntimeError)
    assert "diverged in epoch 2, batch" in str(exc) and "lower" in str(exc)
    assert "0.005" in str(exc)  # the suggested learning rate
    assert "last good checkpoint is kept" in str(exc)
    assert exc.checkpoint == tmp_path / "last.npz" and len(exc.history) == 1
    assert (tmp_path / "last.npz").read_bytes() == good
    weights = tinynet.load(tmp_path / "last.npz")["model"]
    assert all(np.isfinite(w).all() for w in weights.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflows on the way to NaN
def test_huge_learning_rate_diverges(sample):
    model, loss_fn, opt, loader = _setup(_subset(sample[0], 256), lr=1e4, momentum=0.9)
    with pytest.raises(TrainingDiverged, match="No checkpoint had been written") as info:
        fit(model, loss_fn, opt, loader, epochs=2, progress=False, verbose=False)
    assert info.value.epoch == 1 and not np.isfinite(info.value.loss)


def test_wrong_labels_are_not_mistaken_for_divergence(sample):
    data = ArrayDataset(sample[0].images[:32], np.full(32, 12))  # class 12 of 10
    model, loss_fn, opt, loader = _setup(data)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit(model, loss_fn, opt, loader, epochs=1, progress=False, verbose=False)


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_epoch_on_the_sample_reaches_60_percent(sample):
    tinynet.manual_seed(0)
    model = course_cnn()
    opt = tinynet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(sample[0], batch_size=8, shuffle=True, seed=0)
    history = fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False,
                  verbose=False)
    result = evaluate(model, DataLoader(sample[1], batch_size=250))
    assert history[0]["seconds"] < 60
    assert result["accuracy"] >= 0.6, result
