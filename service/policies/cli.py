"""``gnbsched policies``: list the registered policies and what they serve."""

from __future__ import annotations

import argparse

from service.policies.registry import factory, names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    for name in names():
        f = factory(name)
        doc = (f.__doc__ or "").strip().splitlines()[0] if f.__doc__ else ""
        presets = ",".join(getattr(f, "presets", ()))
        print(f"{name:12s} [{presets}] {doc}")
    return 0
