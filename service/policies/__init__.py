"""Scheduling policies by name: classical baselines, exact solvers, learned student, LLM teacher."""

from service.policies.base import Policy, PolicyContext
from service.policies.registry import make, names, register

__all__ = ["Policy", "PolicyContext", "make", "names", "register"]
