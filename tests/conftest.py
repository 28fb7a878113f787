"""Shared test setup: hypothesis profiles, the ``device`` fixture, and a clean default state.

Hypothesis profiles:
    * ``ci``  (loaded when the environment variable ``CI`` is set): derandomized, so a CI run is
      reproducible; no deadline (the first call of a kernel can be slow); 25 examples per property.
    * ``dev`` (otherwise): the same sizes, random examples (a local run explores new cases and
      remembers failures in ``.hypothesis/``).
    * ``thorough``: 400 examples per property, for an occasional long hunt.
Pick one explicitly with ``pytest --hypothesis-profile=ci``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import tinynet
from tinynet import backend as B

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.register_profile(
    "dev", deadline=None, max_examples=25, suppress_health_check=_SUPPRESSED,
)
# a long hunt for rare cases: pytest --hypothesis-profile=thorough (minutes, not for every run)
settings.register_profile(
    "thorough", deadline=None, max_examples=400, suppress_health_check=_SUPPRESSED,
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def _device_params():
    cuda_ok, why = B.cuda_status()
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not cuda_ok,
                                                      reason=f"device 'cuda' unavailable: {why}")),
    ]


@pytest.fixture(params=_device_params())
def device(request):
    """Every available device: 'cpu' always, 'cuda' when CuPy sees a GPU (skipped otherwise)."""
    return request.param


@pytest.fixture(params=["fast", "reference"])
def kernel_path(request, monkeypatch):
    """Run a test on both kernel paths: the fast engine (the default) and the reference kernels
    alone (``tinynet.use_reference()``)."""
    monkeypatch.setattr(tinynet.kernels, "_mode", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _restore_defaults():
    """A test may change the default dtype or device; the next test starts from the defaults."""
    device = tinynet.get_default_device()
    yield
    tinynet.set_default_dtype(tinynet.float32)
    tinynet.set_default_device(device)
