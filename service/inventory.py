"""What a running service holds: its policies (name, version, presets, loaded) and models.

Read by the operations endpoints (``GET /v1/policies``, ``GET /models``); transport-free.
"""

from __future__ import annotations

import os
from typing import Any

from service.core import ServiceCore
from service.policies.registry import factory, names


def registered(name: str) -> Any:
    """The registered factory of ``name``, or None when its module cannot be imported."""
    try:
        return factory(name)
    except Exception:  # a policy whose optional dependency is missing is listed, not loaded
        return None


def policy_metadata(core: ServiceCore) -> list[dict[str, Any]]:
    loaded = core.policies.loaded()
    out = []
    for name in sorted(set(names()) | set(core.policies.factories) | set(loaded)):
        pol = loaded.get(name)
        cls = core.policies.factories.get(name) or registered(name)
        if pol is not None:
            meta = {**pol.metadata(), "name": name, "loaded": True}
        else:
            meta = {
                "name": name,
                "version": str(getattr(cls, "version", "")),
                "presets": list(getattr(cls, "presets", ())),
                "loaded": False,
            }
        doc = (getattr(pol or cls, "__doc__", None) or "").strip()
        meta.setdefault("description", " ".join(doc.split("\n\n")[0].split()))
        meta["blocking_io"] = bool(getattr(pol or cls, "blocking_io", False))
        out.append(meta)
    return out


def models_report(core: ServiceCore) -> dict[str, Any]:
    """``GET /models``: per preset, the model each loaded model-backed policy serves (duck-typed:
    a policy with ``out_of_range_report()``, the student) and its out-of-range counts since start."""
    models: dict[str, dict[str, Any]] = {}
    for name, pol in sorted(core.policies.loaded().items()):
        report: Any = getattr(pol, "out_of_range_report", None)
        if callable(report):
            for preset, entry in report().items():
                models.setdefault(preset, {**entry, "policy": name})
    return {
        "models": models,
        "pid": os.getpid(),
        "note": "counts since this worker started; a model-backed policy appears once loaded (first use or preload)",
    }
