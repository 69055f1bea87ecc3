"""Policy registry (Gymnasium-style ``register`` / ``make``) and the per-process ``PolicySet``.

The built-in policies are a name → module table resolved on first use: ``make("pf")`` imports
``service.policies.schedulers`` (whose ``@register`` decorators fill the registry) and nothing
else, so the registry imports no policy module at load time and no policy module imports back
into a cycle. ``names()`` lists the table and whatever else was registered, without importing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import UnknownPolicyError
from service.policies.base import Policy

#: built-in policy name -> the module that registers it
BUILTINS: dict[str, str] = {
    "km": "service.policies.assignment",
    "exhaustive": "service.policies.assignment",
    "grouped_km": "service.policies.assignment",
    "greedy": "service.policies.assignment",
    "random": "service.policies.assignment",
    "de": "service.policies.assignment",
    "rr": "service.policies.schedulers",
    "pf": "service.policies.schedulers",
    "pf_fair": "service.policies.schedulers",
    "pf_spread": "service.policies.schedulers",
    "max_weight": "service.policies.schedulers",
    "auction": "service.policies.sparse",
    "student": "service.policies.student",
    "teacher": "service.policies.teacher",
}

_REGISTRY: dict[str, Callable[..., Policy]] = {}


def register(name: str, factory: Callable[..., Policy] | None = None):
    """Register a policy factory under ``name`` (usable as a class decorator)."""

    def deco(f: Callable[..., Policy]) -> Callable[..., Policy]:
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"policy {name!r} is already registered")
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def factory(name: str) -> Callable[..., Policy]:
    """The factory registered under ``name``, importing its built-in module on first use."""
    f = _REGISTRY.get(name)
    if f is None and name in BUILTINS:
        importlib.import_module(BUILTINS[name])  # runs the module's @register decorators
        f = _REGISTRY.get(name)
    if f is None:
        raise UnknownPolicyError(name, names())
    return f


def make(name: str, **kwargs: Any) -> Policy:
    """Instantiate the policy registered under ``name``."""
    return factory(name)(**kwargs)


def names() -> list[str]:
    """Registered policy names (built-in and registered at run time), sorted."""
    return sorted(set(BUILTINS) | set(_REGISTRY))


@dataclass
class PolicySet:
    """Policy instances by name, created once (models loaded, sessions built) and reused."""

    factories: dict[str, Callable[[], Policy]] = field(default_factory=dict)
    _cache: dict[str, Policy] = field(default_factory=dict)

    def get(self, name: str) -> Policy:
        pol = self._cache.get(name)
        if pol is None:
            f = self.factories.get(name)
            pol = f() if f is not None else make(name)
            self._cache[name] = pol
        return pol

    def put(self, name: str, policy: Policy) -> None:
        """Install (or atomically replace) an instance, e.g. after a model reload."""
        self._cache[name] = policy

    def loaded(self) -> dict[str, Policy]:
        return dict(self._cache)
