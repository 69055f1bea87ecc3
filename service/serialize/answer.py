"""The answer the teacher is asked for: its JSON schema, its GBNF grammar, the output-schema block
of the prompt and the ideal answer text (SPEC §5).

Two answer forms, both parsed by ``service.pag.checks.parse_text``:

* ``owner``: ``{"owner": [user_id | null, ...]}``, exactly R entries aligned with the slot's
  resources; a busy resource is ``null``, an available one an eligible user id or ``null``;
* ``allocation``: ``{"allocation": {"<user_id>": [resource_id, ...]}}`` over the detailed
  eligible users and available resources, distinct resource ids, at most
  ``min(max_resources_per_user, R')`` per user; users left out get nothing.

``owner_schema`` / ``allocation_schema`` give the exact schema (the decoding constraint),
``compact_schema`` its structure without the id enumerations, ``gbnf_grammar`` the same
constraint for llama.cpp, ``output_block`` the PAG in words, and ``answer_text`` the JSON a
perfect teacher gives for a DCM ``owner`` int64 [R] (SFT targets). Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.serialize.prompt_options import Prompt
from service.types import SlotState


def compact_json(obj: Any) -> str:
    """``obj`` as JSON without spaces (few tokens; the prompt's cache key hashes this text)."""
    return json.dumps(obj, separators=(",", ":"))


def owner_schema(state: SlotState) -> dict[str, Any]:
    """Exact JSON schema of the owner form: R positions, a busy one is null, an available one an
    eligible user id or null (per-user caps cannot be expressed: PAG check / repair catch them)."""
    uids = [int(state.user_ids[u]) for u in np.flatnonzero(state.user_eligible)]
    items = [{"$ref": "#/$defs/user"} if a else {"type": "null"} for a in state.resource_available.tolist()]
    r = state.num_res
    return {
        "type": "object",
        "properties": {"owner": {"type": "array", "prefixItems": items, "items": False, "minItems": r, "maxItems": r}},
        "required": ["owner"],
        "additionalProperties": False,
        "$defs": {"user": {"enum": [*uids, None]}},
    }


def allocation_schema(state: SlotState, users: np.ndarray, resources: np.ndarray) -> dict[str, Any]:
    """Exact JSON schema of the allocation form over detailed eligible ``users`` and available
    ``resources`` (indices): keys are user ids, values arrays of distinct resource ids, at most
    ``max_resources_per_user`` each. Users may be omitted (they get nothing)."""
    uids = sorted(int(state.user_ids[u]) for u in users if state.user_eligible[u])
    rids = sorted(int(state.resource_ids[r]) for r in resources if state.resource_available[r])
    cap = min(state.max_resources_per_user, max(len(rids), 1))
    res_def: dict[str, Any] = {"type": "array", "items": {"enum": rids}, "maxItems": cap, "uniqueItems": True}
    return {
        "type": "object",
        "properties": {
            "allocation": {
                "type": "object",
                "properties": {str(u): {"$ref": "#/$defs/resources"} for u in uids},
                "additionalProperties": False,
            }
        },
        "required": ["allocation"],
        "additionalProperties": False,
        "$defs": {"resources": res_def},
    }


def compact_schema(state: SlotState, form: str) -> dict[str, Any]:
    """Structure of the answer without the id enumerations (shown when the exact one does not fit)."""
    if form == "owner":
        r = state.num_res
        return {
            "type": "object",
            "properties": {
                "owner": {"type": "array", "minItems": r, "maxItems": r, "items": {"type": ["integer", "null"]}}
            },
            "required": ["owner"],
        }
    return {
        "type": "object",
        "properties": {
            "allocation": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "maxItems": state.max_resources_per_user,
                },
            }
        },
        "required": ["allocation"],
    }


def _gbnf_alt(values: list[str]) -> str:
    return " | ".join(f'"{v}"' for v in values) if values else '"null"'


def gbnf_grammar(state: SlotState, form: str, users: np.ndarray, resources: np.ndarray) -> str:
    """The answer constraint as a GBNF grammar (llama.cpp / llama-cpp-python ``grammar`` field).

    owner: exactly R positions, busy ones ``null``; allocation: an object whose keys are the
    detailed eligible user ids and whose values are arrays of at most ``cap`` detailed available
    resource ids. Whitespace is limited to one optional space so tokens go to content.
    """
    lines: list[str] = []
    if form == "owner":
        uids = [str(int(state.user_ids[u])) for u in np.flatnonzero(state.user_eligible)]
        cells = ["item" if a else '"null"' for a in state.resource_available.tolist()]
        body = ' "," ws '.join(cells)
        lines.append(f'root ::= "{{" ws "\\"owner\\"" ws ":" ws "[" ws {body} ws "]" ws "}}"')
        lines.append(f"item ::= {_gbnf_alt([*uids, 'null'])}")
    else:
        uid_list = sorted(int(state.user_ids[u]) for u in users if state.user_eligible[u])
        rid_list = sorted(int(state.resource_ids[r]) for r in resources if state.resource_available[r])
        uids, rids = [str(u) for u in uid_list], [str(r) for r in rid_list]
        cap = min(state.max_resources_per_user, max(len(rids), 1))
        more = "" if cap <= 1 else ' ("," ws rid)*' if cap >= len(rids) else f' ("," ws rid){{0,{cap - 1}}}'
        if not uids or not rids:  # nothing assignable: only the empty allocation
            lines.append('root ::= "{" ws "\\"allocation\\"" ws ":" ws "{" ws "}" ws "}"')
        else:
            lines.append('root ::= "{" ws "\\"allocation\\"" ws ":" ws "{" ws ( pair ( "," ws pair )* )? "}" ws "}"')
            lines.append(f'pair ::= "\\"" uid "\\"" ws ":" ws "[" ws ( rid ws{more} )? "]" ws')
            lines.append(f"uid ::= {_gbnf_alt(uids)}")
            lines.append(f"rid ::= {_gbnf_alt(rids)}")
    lines.append('ws ::= " "?')
    return "\n".join(lines) + "\n"


def output_block(state: SlotState, form: str, schema: dict[str, Any], exact: bool) -> str:
    """Output schema block: the PAG in words, then the JSON schema."""
    res_word = "channel" if state.preset == "spectrum" else "RBG"
    cap = min(state.max_resources_per_user, state.num_res)
    marker = "<Action candidate> " if state.preset == "mac" else ""
    if form == "owner":
        order = " ".join(str(int(r)) for r in state.resource_ids)
        busy = [str(int(r)) for r in state.resource_ids[~state.resource_available]]
        pag = (
            f'{marker}DCM: a list "owner" of exactly {state.num_res} entries, entry i for {res_word} id '
            f"number i of: {order}. Each entry is the id of an active user (the most critical are "
            f"listed above) or null "
            f"(null = {res_word} unused). Busy {res_word}s must be null"
            + (f" (busy: {' '.join(busy)})" if busy else "")
            + f". A user appears at most {cap} time{'s' if cap > 1 else ''}."
        )
    else:
        pag = (
            f'{marker}DCM as a mapping "allocation": user id (string key) -> list of {res_word} ids. '
            f"Use only active users and available {res_word}s listed above; each {res_word} at most "
            f"once over all users; at most {cap} {res_word}{'s' if cap > 1 else ''} per user; users "
            f"left out get nothing."
        )
    note = "" if exact else " (id enumerations omitted; ids are those listed above)"
    return f"## Output schema\n{pag}\nJSON schema of the answer{note}:\n{compact_json(schema)}"


def answer_text(state: SlotState, owner: np.ndarray, prompt: Prompt) -> str:
    """The JSON answer a perfect teacher would give for DCM ``owner`` [R] under ``prompt``'s
    answer form (SFT targets). In the allocation form only pairs between detailed users and
    detailed resources can be expressed; the others are left out."""
    owner = np.asarray(owner, np.int64)
    if prompt.answer_form == "owner":
        ids = [None if k == 0 else int(state.user_ids[k - 1]) for k in owner.tolist()]
        return compact_json({"owner": ids})
    users = set(prompt.users.tolist())
    res = set(prompt.resources.tolist())
    alloc: dict[str, list[int]] = {}
    for r, k in enumerate(owner.tolist()):
        if k and (k - 1) in users and r in res:
            alloc.setdefault(str(int(state.user_ids[k - 1])), []).append(int(state.resource_ids[r]))
    # keys in increasing id order: the order of the schema's properties (constrained decoding)
    return compact_json({"allocation": dict(sorted(alloc.items(), key=lambda kv: int(kv[0])))})
