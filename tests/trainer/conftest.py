"""Fixtures of the trainer tests: untrained students exported to a temporary model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer.export import export_initialised


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("models")
    for preset in ("spectrum", "mac"):
        export_initialised(tmp, preset, "v1", seed=1)
    return tmp
