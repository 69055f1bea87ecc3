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


def test_the_version_is_written_once_in_the_package_metadata() -> None:
    """``service.__version__`` (served by the OpenAPI document) is read from the installed
    package's metadata, whose one source is ``pyproject.toml``."""
    import tomllib
    from pathlib import Path

    import service

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert service.__version__ == project["version"]
    assert f'"{project["version"]}"' not in Path(service.__file__).read_text()  # not written a second time


def test_the_deployed_image_tag_is_the_package_version() -> None:
    """The Kubernetes base and compose run the image of this release: its tag is the package version."""
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((root / "deploy/k8s/base/kustomization.yaml").read_text())
    tags = {image["name"]: image.get("newTag") for image in kustomization.get("images", [])}
    assert tags and set(tags.values()) == {version}, tags
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    assert compose["services"]["gnbsched"]["image"] == f"gnbsched:{version}"
