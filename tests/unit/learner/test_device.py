from __future__ import annotations

import pytest
import torch

from learner import device as device_module
from learner.device import resolve_device


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)


@pytest.mark.usefixtures("cpu_only")
def test_auto_falls_back_to_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


@pytest.mark.usefixtures("with_cuda")
def test_auto_prefers_cuda_over_mps() -> None:
    assert resolve_device("auto").type == "cuda"


def test_auto_takes_mps_when_there_is_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert resolve_device("auto").type == "mps"


@pytest.mark.usefixtures("with_cuda")
def test_explicit_choice_overrides_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" MPS ").type == "mps"
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.usefixtures("cpu_only")
@pytest.mark.parametrize(("name", "message"), [("cuda", "CUDA is not available"), ("mps", "MPS")])
def test_unavailable_device_is_an_error_not_a_silent_fallback(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


@pytest.mark.usefixtures("with_cuda")
def test_cuda_index_beyond_device_count() -> None:
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cuda:x"])
def test_unknown_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)
