"""Scheduling policies by name: classical baselines, exact solvers, learned student, LLM teacher."""

from service.policies.base import Policy, PolicyContext, make, names, register

__all__ = ["Policy", "PolicyContext", "make", "names", "register"]
