"""``gnbsched policies``: list the registered policies and what they serve."""

from __future__ import annotations

import argparse

from service.policies.base import _REGISTRY, names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    for name in names():
        factory = _REGISTRY[name]
        doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        presets = ",".join(getattr(factory, "presets", ()))
        print(f"{name:12s} [{presets}] {doc}")
    return 0
