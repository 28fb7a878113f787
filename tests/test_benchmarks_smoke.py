"""The benchmarks run end to end in --quick mode (a few seconds) and write their JSON and table.

These are not timing tests: they only check that the scripts work and report what they promise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, tmp_path: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(BENCH / script), "--quick", "--out-dir", str(tmp_path), *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    assert any(h in out for h in ("| framework", "| layer", "| net", "| what")), out
    (path,) = tmp_path.glob("*.json")
    return json.loads(path.read_text())


def test_bench_layers_quick(tmp_path):
    data = _run("bench_layers.py", tmp_path)
    names = [r["layer"] for r in data["layers"]]
    assert names[0].startswith("conv1") and any("32->64" in n for n in names)
    for r in data["layers"]:
        assert r["tinynet_fwd_ms"] > 0
    assert data["machine"]["threads"] == 2 and data["machine"]["cpu"]


def test_gemm_floor_quick(tmp_path):
    data = _run("gemm_floor.py", tmp_path)
    assert [r["layer"] for r in data["layers"]][0].startswith("larger conv")
    for r in data["layers"]:
        assert 0 < r["products_ms"] and 0 < r["tinynet_ms"]
        assert ("torch_ms" in r) == ("products_over_torch" in r)


def test_probe_winograd_quick(tmp_path):
    """The dropped Winograd convolutions still compute the reference's numbers."""
    data = _run("probe_winograd.py", tmp_path)
    methods = [r["method"] for r in data["layers"]]
    assert methods.count("F(2x2, 3x3)") == 6 and methods.count("F(4x4, 3x3)") == 5  # (not 14x14)
    for r in data["layers"]:  # (F(4x4, 3x3) rounds about 10x more: its transforms' larger numbers)
        bound = 1e-5 if r["method"] == "F(2x2, 3x3)" else 5e-5
        assert r["max_relative_error"] < bound and r["winograd_ms"] > 0


def test_ab_blas_core_quick(tmp_path):
    """Both ways measured every round, each in its own process, and the kernels of each named."""
    data = _run("ab_blas_core.py", tmp_path)
    assert [r["what"] for r in data["results"]] == ["vgg", "bn", "conv"]
    for r in data["results"]:
        assert len(r["default_ms"]) == len(r["core_ms"]) == len(r["ratios"]) == 2
        assert min(r["default_ms"] + r["core_ms"]) > 0
    assert set(data["kernels"]) == {"default", "Haswell"} and all(data["kernels"].values())


def test_bench_train_quick(tmp_path):
    pytest.importorskip("tinynet.data")
    data = _run("bench_train.py", tmp_path, "--frameworks", "tinynet", "--sample",
                "--max-batches", "5")
    (run,) = data["runs"]
    assert run["framework"] == "tinynet" and run["batch_size"] == 64
    assert run["images"] == 5 * 64 and run["train_s"] > 0 and run["eval_s"] > 0
    assert 0 < run["peak_rss_mb"] < 2000
    assert 0.0 <= run["accuracy"] <= 1.0


@pytest.mark.parametrize("net, fused", [("course", False), ("bn", False), ("bn", True)])
def test_profile_step_quick(tmp_path, net, fused):
    cmd = [sys.executable, str(BENCH / "profile_step.py"), "--quick", "--net", net,
           "--batch-size", "8", "--out-dir", str(tmp_path)] + (["--fused"] if fused else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "| module" in out and "SGD step" in out
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    first = data["modules"][0]
    assert first["module"].startswith("Conv2d(1,") and first["fwd_ms"] > 0 and first["bwd_ms"] > 0
    parts = sum(m["fwd_ms"] + m["bwd_ms"] for m in data["modules"])
    # the timed parts are the step, less the loop's own few statements
    assert parts + data["loss_ms"] + data["update_ms"] <= data["step_ms"] * 1.01
    assert parts > 0.5 * data["step_ms"]
    names = [m["module"].split("(")[0] for m in data["modules"]]
    if fused:  # the BN network's ConvBN groups, their modules one by one, pooling before ReLU
        assert names[:4] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    else:
        assert "ConvBN" not in names and (net != "bn" or names[2] == "ReLU")


def test_ab_conv_quick(tmp_path):
    cmd = [sys.executable, str(BENCH / "ab_conv.py"), "--quick", "--sample", "--batch-sizes", "8",
           "--out-dir", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "| case" in out
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    cases = [r["case"] for r in data["results"]]
    assert cases == ["training step, batch 8", "fuse: training step, batch 8",
                     "engine: training step, batch 8", "fuse-eval", "conv1-dw"]
    for r in data["results"]:
        assert len(r["ways"]) == 2 and all(w["median_ms"] > 0 for w in r["ways"].values())


def test_bench_nets_quick(tmp_path):
    """The BN network's epoch (5 batches of the sample) and the VGG-style step, against PyTorch
    when it is installed: same weights in both, a median per framework, the ratios per round."""
    data = _run("bench_nets.py", tmp_path)
    frameworks = {r["framework"] for r in data["runs"]}
    assert "tinynet" in frameworks
    by = {(r["framework"], r["net"]): r for r in data["runs"]}
    bn, vgg = by["tinynet", "bn"], by["tinynet", "vgg"]
    assert bn["images"] == 5 * 128 and bn["train_s"] > 0 and bn["eval_s"] > 0
    assert 0.0 <= bn["accuracy"] <= 1.0 and bn["peak_rss_mb"] > 0
    assert vgg["steps"] == 2 and vgg["step_ms"] > 0
    if "torch" in frameworks:
        assert [r["net"] for r in data["ratios"]] == ["bn", "vgg"]
        assert len(data["ratios"][0]["epoch_s"]) == 1
        # the same initial weights: the first batches' losses agree closely
        assert abs(by["torch", "vgg"]["loss"] - vgg["loss"]) < 0.5


def test_ab_nets_quick(tmp_path):
    cmd = [sys.executable, str(BENCH / "ab_nets.py"), "--quick", "--out-dir", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "| case" in out
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    cases = [r["case"].split(":")[0] for r in data["results"]]
    assert cases == ["sliced", "sliced-vgg", "dx-conv", "plain", "pool-first", "pool-first-vgg",
                     "big-conv", "fold-eval", "same-rows", "same-rows-vgg", "same-rows-big",
                     "spaced-rows-big", "images-first", "images-first-vgg", "offset", "offset-vgg",
                     "offset-big", "winograd", "winograd-vgg", "winograd-big"]
    for r in data["results"]:
        assert len(r["ways"]) == 2 and all(w["median_ms"] > 0 for w in r["ways"].values())
