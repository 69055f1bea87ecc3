"""The OpenAPI description of ``POST /schedule``: pydantic models built from the contract table.

``ScheduleRequest`` and its ``User`` / ``Resource`` / ``Feedback`` members are generated from
``service.api.contract.RULES`` (types, ranges, defaults, units, meanings), so the published
schema states exactly what both transports enforce. They document; the hot path
(``service.api.rest.codec``) never builds them. ``ScheduleResponse`` and ``ErrorBody``
describe the answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.api.contract import RULES, Rule

__all__ = ["REQUEST_EXAMPLES", "BatchRequest", "BatchResponse", "ErrorBody", "ScheduleRequest", "ScheduleResponse"]

_SPECTRUM_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-7",
    "slot": 1042,
    "preset": "spectrum",
    "policy": "km",
    "deadline_ms": 5.0,
    "users": [
        {"id": 11, "rx_power_dbm": -71.5},
        {"id": 12, "rx_power_dbm": -88.0},
        {"id": 13, "rx_power_dbm": -80.2, "eligible": False},
    ],
    "resources": [
        {"id": 1, "bandwidth_hz": 5.0e6, "available": True},
        {"id": 2, "bandwidth_hz": 2.0e6, "available": False},
        {"id": 3, "bandwidth_hz": 10.0e6, "available": True, "interference_dbm": -100.0},
    ],
}
_MAC_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-3",
    "slot": 77,
    "preset": "mac",
    "policy": "pf",
    "tti_s": 0.0005,
    "users": [
        {"id": 1, "spectral_efficiency": 1.1758, "buffer_bits": 2048},
        {"id": 2, "spectral_efficiency": 0.2344, "buffer_bits": 512},
        {"id": 3, "spectral_efficiency": 0.6016, "buffer_bits": 0},
    ],
    "resources": [{"id": r, "bandwidth_hz": 1.44e6} for r in range(4)],
    "feedback": {"delivered_bits": {"1": 790.0, "2": 0.0}},
}
_MAC_RETX_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-3",
    "slot": 78,
    "preset": "mac",
    "policy": "pf",
    # user 2's 1600-bit transport block waits for a HARQ retransmission in 2 RBGs: it is served
    # before new data (PAG rule retx_not_first), even with an empty queue
    "users": [
        {"id": 1, "spectral_efficiency": 1.1758, "buffer_bits": 2048},
        {"id": 2, "spectral_efficiency": 0.6016, "buffer_bits": 0, "retx_bits": 1600, "retx_rbgs": 2},
        {"id": 3, "spectral_efficiency": 0.2344, "buffer_bits": 512},
    ],
    "resources": [{"id": r, "bandwidth_hz": 1.44e6} for r in range(4)],
}
_RATE_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-9",
    "slot": 5,
    "preset": "spectrum",
    "users": [{"id": 1}, {"id": 2}],
    "resources": [{"id": 10, "bandwidth_hz": 1e6}, {"id": 20, "bandwidth_hz": 1e6}],
    "rate_bps": [[4.1e6, 2.0e6], [3.9e6, 0.5e6]],
}
_MAC_RATE_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-4",
    "slot": 12,
    "preset": "mac",
    "policy": "pf",
    "tti_s": 0.0005,
    # achievable rate per RBG in bit/s (one RBG = 4 PRBs = 1.44 MHz; SE 1.1758 -> ~1.69 Mbit/s);
    # the utility is rate_bps * tti_s bits per RBG per slot (~847 bits), compared with buffer_bits
    "users": [{"id": 1, "buffer_bits": 2048}, {"id": 2, "buffer_bits": 512}],
    "resources": [{"id": r, "bandwidth_hz": 1.44e6} for r in range(3)],
    "rate_bps": [[1.69e6, 1.52e6, 1.69e6], [0.87e6, 0.87e6, 0.34e6]],
}
_UTILITY_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-5",
    "slot": 3,
    "preset": "spectrum",
    "users": [{"id": 1}, {"id": 2}],
    "resources": [{"id": 10}, {"id": 20}],
    "utility": [[0.9, 0.2], [0.7, 0.6]],
}
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "spectrum": {"summary": "spectrum access (LSA): channels from received powers", "value": _SPECTRUM_EXAMPLE},
    "mac": {"summary": "uplink RBG scheduling (UDTS) with the previous slot's feedback", "value": _MAC_EXAMPLE},
    "mac_retx": {
        "summary": "mac with a HARQ retransmission pending (served before new data)",
        "value": _MAC_RETX_EXAMPLE,
    },
    "rate_matrix": {"summary": "caller-provided rate matrix in bit/s as the utility", "value": _RATE_EXAMPLE},
    "mac_rate_matrix": {
        "summary": "mac with caller-provided rates in bit/s (utility = rate_bps * tti_s bits)",
        "value": _MAC_RATE_EXAMPLE,
    },
    "utility_matrix": {"summary": "caller-provided unitless utility weights, used as given", "value": _UTILITY_EXAMPLE},
}


def _field(rule: Rule, annotation: Any, *, required: bool = False) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of one rule: range, default and description with the unit."""
    unit = f" [{rule.unit}]" if rule.unit and rule.unit != "characters" else ""
    default = ... if required else None
    extra: dict[str, Any] = {}
    if rule.kind in ("int", "float") and rule.lo is not None:
        extra["gt" if rule.lo_open else "ge"] = rule.lo
    if rule.kind in ("int", "float") and rule.hi is not None:
        extra["le"] = rule.hi
    if rule.kind == "str" and rule.lo is not None:
        extra.update(min_length=int(rule.lo), max_length=int(rule.hi or 0))
    desc = rule.doc + unit + (f"; default {rule.default}" if rule.default is not None else "")
    return (annotation if required else annotation | None), Field(default, description=desc, **extra)


def _model(
    name: str, doc: str, group: str, annotations: dict[str, Any], required: set[str], config: ConfigDict | None = None
) -> type[BaseModel]:
    fields = {
        r.name: _field(r, annotations.get(r.name, _ANNOTATION[r.kind]), required=r.name in required)
        for r in RULES.values()
        if r.group == group
    }
    model = create_model(name, __config__=config or ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]
    model.__doc__ = doc
    return model


_ANNOTATION: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "matrix": list[list[float]]}

User = _model(
    "User",
    "One user (UE) of the slot.",
    "users",
    {"spectral_efficiency": float | list[float], "fading_gain": list[float]},
    {"id"},
)
Resource = _model("Resource", "One resource: a channel (spectrum) or an RBG (mac).", "resources", {}, {"id"})
_delivered = RULES["delivered_bits"]
Feedback = create_model(
    "Feedback",
    __config__=ConfigDict(extra="forbid"),
    delivered_bits=(
        dict[str, float],
        Field(
            default_factory=dict,
            description=(
                f"{_delivered.doc} [{_delivered.unit}], each in {_delivered.bounds()}; keys are canonical "
                "decimal user ids of the slot's users"
            ),
        ),
    ),
)
Feedback.__doc__ = "What happened in the previous slot of this cell."

_top = {
    r.name: _field(r, _ANNOTATION[r.kind], required=r.name in ("cell_id", "slot", "preset"))
    for r in RULES.values()
    if r.group in ("top", "matrix")
}
_top["preset"] = (Literal["spectrum", "mac"], Field(description=RULES["preset"].doc))
_USERS: Any = list[User]  # type: ignore[valid-type]  # a model built at run time
_RESOURCES: Any = list[Resource]  # type: ignore[valid-type]
ScheduleRequest = create_model(  # type: ignore[call-overload]
    "ScheduleRequest",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [_SPECTRUM_EXAMPLE, _MAC_EXAMPLE]}),
    **_top,
    users=(_USERS, Field(min_length=1, description="the slot's users; rows of rate_bps / utility in this order")),
    resources=(_RESOURCES, Field(min_length=1, description="the slot's resources; owner is aligned with it")),
    feedback=(Feedback | None, None),
)
ScheduleRequest.__doc__ = "One slot of one cell."


class ViolationOut(BaseModel):
    kind: str = Field(description="PAG rule: unparsable, wrong_length, out_of_domain, busy_resource, ...")
    message: str


class ScheduleResponse(BaseModel):
    """The slot's decision (always PAG-valid after repair)."""

    cell_id: str
    slot: int = Field(description="slot (TTI) number, unitless, echoed from the request")
    owner: list[int | None] = Field(description="per resource (request order): the owning user id or null")
    allocation: dict[str, list[int]] = Field(description="user id -> resource ids")
    policy: str = Field(description="the policy that produced the decision")
    policy_version: str
    fallback: str | None = Field(description="null, or why the requested policy did not serve")
    fallback_reason: str | None = Field(description="bounded label: deadline, error, unavailable, ...")
    valid_before_repair: bool = Field(description="the raw policy output passed the PAG checks")
    violations: list[ViolationOut] = Field(description="PAG violations of the raw output (repaired)")
    utility: float = Field(
        description="objective of the decision: sum-rate in bit/s (spectrum) or scheduled bits "
        "(mac); in the request's unit when it gave a unitless utility matrix"
    )
    timings_us: dict[str, float] = Field(
        description="per stage, in µs: serialize, policy, check, repair, total, decode"
    )
    notes: dict[str, Any] = Field(description="policy notes (e.g. an anytime policy cut at the deadline)")
    replayed: bool = Field(
        False,
        description="true: this (cell, slot) was applied before with the same request and "
        "this is its stored decision (a retry); the cell's state was not touched",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "cell_id": "cell-7",
                    "slot": 1042,
                    "owner": [11, None, 12],
                    "allocation": {"11": [1], "12": [3]},
                    "policy": "km",
                    "policy_version": "1",
                    "fallback": None,
                    "fallback_reason": None,
                    "valid_before_repair": True,
                    "violations": [],
                    "utility": 6.1e7,
                    "timings_us": {
                        "serialize": 0.4,
                        "policy": 61.0,
                        "check": 9.5,
                        "repair": 3.1,
                        "total": 88.0,
                        "decode": 40.0,
                    },
                    "notes": {},
                }
            ]
        }
    )


class ErrorBody(BaseModel):
    """A rejected request: which field and why."""

    error: str = Field(description="invalid_json, invalid_request, limit_exceeded, body_too_large, ...")
    field: str = Field(description="dotted path of the offending field (users[3].buffer_bits), or body")
    message: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": "invalid_request", "field": "resources[2].bandwidth_hz", "message": "must be > 0, got -5"}
            ]
        }
    )


class CellError(ErrorBody):
    """A cell of a batch that got no decision (answered in its place)."""

    status: int = Field(description="what POST /schedule would have answered for this cell (422, 409, 503, ...)")


class BatchResponse(BaseModel):
    """One answer per cell of the request, in its order."""

    decisions: list[ScheduleResponse | CellError]


BatchRequest = create_model(
    "BatchRequest",
    __config__=ConfigDict(extra="forbid"),
    cells=(list[ScheduleRequest], Field(description="one POST /schedule body per cell of the TTI")),
)
BatchRequest.__doc__ = "Every cell of one TTI (typically all cells of a DU); each cell is decided as by POST /schedule."
