"""The service package never imports torch (the trainer is the only PyTorch user)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import service
for mod in pkgutil.walk_packages(service.__path__, "service."):
    importlib.import_module(mod.name)
print("torch" in sys.modules)
"""


def test_importing_every_service_module_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "a module under service/ imported torch"
