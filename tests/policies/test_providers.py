"""Which onnxruntime execution provider the student runs on: CUDA when the build has it and a
device is present, the CPU otherwise, and the CPU when a CUDA session cannot be created. The
selection is tested without a GPU; a machine with one runs the CUDA path for real."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.metrics import Metrics
from service.policies import student_model
from service.policies.student_model import CPU, CUDA, cuda_device_count, load_model, select_providers

_MAC = Path(__file__).resolve().parents[2] / "models" / "student-mac"
SHIPPED = _MAC / (_MAC / "latest").read_text().strip()  # the version served by default


@pytest.mark.parametrize(
    ("available", "devices", "want"),
    [
        ([CUDA, CPU], 1, [CUDA, CPU]),
        ([CUDA, CPU], 0, [CPU]),  # the gpu build on a machine without a device
        ([CPU], 2, [CPU]),  # a device, but the CPU-only build
        (["TensorrtExecutionProvider", CUDA, CPU], 1, [CUDA, CPU]),
    ],
)
def test_cuda_is_chosen_only_with_the_gpu_build_and_a_device(
    available: list[str], devices: int, want: list[str]
) -> None:
    assert select_providers(available, devices) == want


def test_this_machine_gets_a_working_provider() -> None:
    provs = student_model.default_providers()
    assert provs[-1] == CPU and set(provs) <= set(ort.get_available_providers()) | {CPU}
    assert (CUDA in provs) == (CUDA in ort.get_available_providers() and cuda_device_count() > 0)
    model = load_model(SHIPPED, "mac")
    assert model.providers[0] == provs[0] and model.describe()["providers"] == model.providers


def test_a_cuda_session_that_fails_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    real = ort.InferenceSession

    def session(path, options, providers):
        if CUDA in providers:
            raise RuntimeError("CUDA driver version is insufficient")
        return real(path, options, providers=providers)

    monkeypatch.setattr(student_model, "default_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with caplog.at_level("WARNING", logger="gnbsched.student"):
        model = load_model(SHIPPED, "mac")
    assert model.providers == [CPU]
    assert "falling back to the CPU" in caplog.text


def test_the_provider_is_a_metric_label() -> None:
    m = Metrics()
    m.inference_providers("student", {"mac": {"providers": [CUDA, CPU]}, "spectrum": {"providers": [CPU]}})
    text = m.exposition()[0].decode()
    assert 'gnbsched_inference_provider{policy="student",preset="mac",provider="CUDAExecutionProvider"} 1.0' in text
    assert 'gnbsched_inference_provider{policy="student",preset="spectrum",provider="CPUExecutionProvider"} 1.0' in text
