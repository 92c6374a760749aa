"""Execution providers: names, the TensorRT/CUDA requests this CPU machine cannot honour, fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lfm_deploy.errors import BackendUnavailable, InputError
from lfm_deploy.runtime import Segmenter, available_providers, resolve_providers
from lfm_deploy.runtime.providers import check_session

from . import synthetic_queries, synthetic_support

CPU = "CPUExecutionProvider"
TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"


def test_resolve_names():
    assert resolve_providers(None) == [(CPU, {})]
    assert resolve_providers("cpu") == [(CPU, {})]
    assert resolve_providers("TensorRT, cuda") == [(TRT, {}), (CUDA, {}), (CPU, {})]
    assert resolve_providers(["trt", "CUDAExecutionProvider", "cuda"]) == [(TRT, {}), (CUDA, {}), (CPU, {})]
    assert resolve_providers([("cuda", {"device_id": 1}), "cpu"]) == [(CUDA, {"device_id": 1}), (CPU, {})]
    assert resolve_providers(["cuda"])[-1] == (CPU, {})  # CPU always last resort


@pytest.mark.parametrize("bad", ["tensorflow", ["cpu", ""], [("cuda",)], [], [("cuda", "x")]])
def test_resolve_rejects(bad):
    with pytest.raises(InputError):
        resolve_providers(bad)


def _needs_missing(name):
    if name in available_providers():
        pytest.skip(f"{name} is available on this machine; the refusal path cannot be exercised")


@pytest.mark.parametrize("request_", ["tensorrt", "cuda", ["tensorrt", "cuda", "cpu"], TRT])
def test_missing_accelerator_is_refused(exported, request_):
    _needs_missing(TRT)
    _needs_missing(CUDA)
    with pytest.raises(BackendUnavailable, match=r"(Tensorrt|CUDA)ExecutionProvider.* not available .*available: .*CPUExecutionProvider"):
        Segmenter.from_artifacts(exported(shots=1).out_dir, providers=request_, verify=False)


def test_tensorrt_fallback_allowed(exported, caplog):
    _needs_missing(TRT)
    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        seg = Segmenter.from_artifacts(exported(shots=1).out_dir, providers="tensorrt", allow_fallback=True,
                                       threads=2, verify=False)
    assert TRT in caplog.text and "falling back" in caplog.text
    assert seg.providers == [CPU]
    seg.set_support(*synthetic_support(1, 160))
    assert seg.predict(synthetic_queries(1, 160)[0]).shape == (160, 160)


class _FakeSession:
    def __init__(self, providers):
        self._providers = providers

    def get_providers(self):
        return self._providers


def test_silent_fallback_after_session_creation_is_caught(caplog):
    """onnxruntime drops an EP it cannot load (e.g. missing CUDA libraries) without raising."""
    requested = resolve_providers("cuda")
    with pytest.raises(BackendUnavailable, match=r"asked for CUDAExecutionProvider, CPUExecutionProvider, .*activated only CPUExecutionProvider"):
        check_session(_FakeSession([CPU]), requested, allow_fallback=False, what="head graph")
    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        assert check_session(_FakeSession([CPU]), requested, allow_fallback=True, what="head graph") == [CPU]
    assert "continuing on CPUExecutionProvider" in caplog.text
    assert check_session(_FakeSession([CUDA, CPU]), requested, allow_fallback=False, what="head graph") == [CUDA, CPU]


def test_full_cpu_name_and_options(exported):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, providers=["CPUExecutionProvider"], threads=1,
                                   graph_optimization="extended", verify=False)
    assert seg.providers == [CPU]
    seg.set_support(*synthetic_support(1, 160))
    assert seg.predict(np.zeros((50, 60, 3), np.uint8)).shape == (50, 60)
