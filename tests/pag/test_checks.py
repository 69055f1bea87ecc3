"""PAG checks on raw outputs (SPEC §4, use 2): every violation kind, every input form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.pag import check, check_dcm, is_valid
from service.pag.checks import (
    BUSY_RESOURCE,
    CAP_EXCEEDED,
    CONTENTION,
    INELIGIBLE_USER,
    OUT_OF_DOMAIN,
    UNPARSABLE,
    VIOLATION_KINDS,
    WRONG_LENGTH,
    parse_text,
)
from service.types import make_slot


@pytest.fixture
def state():
    """3 users (ids 11, 12, 13; 13 ineligible), 4 resources (ids 101..104; 103 busy), cap 2."""
    util = np.array([[5.0, 1.0, 1.0, 2.0], [4.0, 6.0, 1.0, 1.0], [9.0, 9.0, 9.0, 9.0]])
    return make_slot(
        "mac",
        [11, 12, 13],
        [101, 102, 103, 104],
        utility=util,
        max_resources_per_user=2,
        resource_available=[True, True, False, True],
        user_eligible=[True, True, False],
    )


def kinds(result):
    return [v.kind for v in result.violations]


def test_valid_dcm_passes_with_its_pairs(state):
    res = check(state, np.array([1, 2, 0, 1]))
    assert res.valid and res.violations == []
    assert res.pair_user.tolist() == [0, 1, 0] and res.pair_res.tolist() == [0, 1, 3]
    assert res.legal.all() and res.dcm.tolist() == [1, 2, 0, 1]
    assert is_valid(state, np.array([0, 0, 0, 0]))
    for dtype in (np.int32, np.uint8, np.int16):
        assert check_dcm(state, np.array([1, 2, 0, 1], dtype)).valid


@pytest.mark.parametrize(
    ("raw", "kind", "needle"),
    [
        (np.array([1, 2, 0]), WRONG_LENGTH, "expected 4 tokens"),
        (np.array([1, 2, 0, 1, 0]), WRONG_LENGTH, "got 5"),
        (np.array([[1, 2, 0, 1]]), WRONG_LENGTH, "shape (1, 4)"),
        (np.array([1, 4, 0, 0]), OUT_OF_DOMAIN, "token 4 is outside the domain 0..3"),
        (np.array([-1, 0, 0, 0]), OUT_OF_DOMAIN, "outside the domain"),
        (np.array([1.5, 0, 0, 0]), OUT_OF_DOMAIN, "not an integer"),
        (np.array([np.nan, 0, 0, 0]), OUT_OF_DOMAIN, "not an integer"),
        (np.array([0, 0, 1, 0]), BUSY_RESOURCE, "resource 103 is busy but granted to user 11"),
        (np.array([3, 0, 0, 0]), INELIGIBLE_USER, "user 13 is not eligible but gets resource 101"),
        (np.array([1, 1, 0, 1]), CAP_EXCEEDED, "user 11 holds 3 resources, cap is 2"),
        ({11: [101], 12: [101]}, CONTENTION, "resource 101 is claimed by 2 users"),
        ({11: [101, 102, 104]}, CAP_EXCEEDED, "user 11 holds 3 resources"),
        ({99: 101}, OUT_OF_DOMAIN, "unknown user id 99"),
        ({11: 999}, OUT_OF_DOMAIN, "unknown resource id 999"),
        ({"abc": 101}, OUT_OF_DOMAIN, "not an integer id"),
        ({11: [1.5]}, OUT_OF_DOMAIN, "not an integer id"),
        ({11: [[101]]}, OUT_OF_DOMAIN, "not an integer id"),
        ({12: 103}, BUSY_RESOURCE, "resource 103 is busy"),
        ({13: 101}, INELIGIBLE_USER, "user 13 is not eligible"),
        ("I would give everything to user 11.", UNPARSABLE, "no JSON"),
        ('{"owner": [11, 12, ', UNPARSABLE, "invalid JSON"),
        ('"just a string"', UNPARSABLE, "no JSON"),
        (np.array(["a", "b", "c", "d"]), UNPARSABLE, "not numbers"),
        ([None, 11, 12, 0], UNPARSABLE, "unsupported output type"),
        (object(), UNPARSABLE, "unsupported output type object"),
        (b"\x01\x02\x00\x01", UNPARSABLE, "unsupported output type bytes"),
        ('{"owner": [11, "x", null, null]}', OUT_OF_DOMAIN, "position 1"),
        ('{"owner": [11, 99, null, null]}', OUT_OF_DOMAIN, "unknown user id 99"),
        ('{"owner": [11, 12, null]}', WRONG_LENGTH, "expected 4 tokens"),
    ],
)
def test_every_violation_kind_is_reported_with_a_message(state, raw, kind, needle):
    res = check(state, raw)
    assert not res.valid
    assert kind in kinds(res), kinds(res)
    messages = [v.message for v in res.violations if v.kind == kind]
    assert any(needle in m for m in messages), messages
    assert all(v.kind in VIOLATION_KINDS and v.message for v in res.violations)
    assert all(set(v.as_dict()) == {"kind", "message"} for v in res.violations)


def test_all_violations_of_one_output_are_reported(state):
    res = check(state, np.array([3, 1, 1, 7, 1]))  # length, ineligible, busy, out of domain
    assert set(kinds(res)) == {WRONG_LENGTH, INELIGIBLE_USER, BUSY_RESOURCE, OUT_OF_DOMAIN}
    res2 = check(state, {11: [101, 102, 104], 12: [101, 103], 13: 104, 77: 101})
    assert set(kinds(res2)) == {CAP_EXCEEDED, CONTENTION, BUSY_RESOURCE, INELIGIBLE_USER, OUT_OF_DOMAIN}


def test_violations_point_at_the_resource_and_user(state):
    (busy,) = check(state, np.array([0, 0, 2, 0])).violations
    assert (busy.resource, busy.user) == (2, 1)
    (cap,) = check(state, np.array([1, 1, 0, 1])).violations
    assert cap.user == 0 and cap.resource is None


def test_legal_marks_pairs_that_survive_step_one(state):
    res = check(state, np.array([3, 1, 1, 2]))
    # pairs in output order: (u2, r0) ineligible, (u0, r1) ok, (u0, r2) busy, (u1, r3) ok
    assert res.pair_user.tolist() == [2, 0, 0, 1]
    assert res.legal.tolist() == [False, True, False, True]
    assert res.dcm.tolist() == [3, 1, 1, 2]  # a full-length DCM is kept for repair


def test_contention_is_only_counted_between_legal_claims(state):
    res = check(state, {11: 101, 13: 101})  # 13 is ineligible: its claim is dropped, no contention
    assert kinds(res) == [INELIGIBLE_USER]


def test_user_to_resource_forms(state):
    valid = check(state, {11: [101, 104], 12: 102})
    assert valid.valid and valid.dcm is None
    assert sorted(zip(valid.pair_user.tolist(), valid.pair_res.tolist(), strict=True)) == [(0, 0), (0, 3), (1, 1)]
    assert check(state, {"11": ["101"], "12": None}).valid  # JSON-ish strings and nulls
    assert check(state, {11: [101, 101]}).valid  # one pair named twice is one claim
    assert check(state, {11: 101.0}).valid  # integral floats are ids
    assert check(state, {}).valid  # nothing allocated


@pytest.mark.parametrize(
    "text",
    [
        '{"owner": [11, 12, null, 11]}',
        '{"owner": [11, 12, 0, 11]}',  # 0 = unused when no user has id 0
        "[11, 12, null, 11]",
        '{"allocation": {"11": [101, 104], "12": [102]}}',
        '{"11": [101, 104], "12": 102}',
        'Here is my answer:\n```json\n{"owner": [11, 12, null, 11]}\n```\nDone.',
        "```\n[11, 12, null, 11]\n```",
        'Sure! {"allocation": {"11": [101, 104], "12": 102}} hope this helps',
    ],
)
def test_json_text_forms_are_parsed_as_data(state, text):
    res = check(state, text)
    assert res.valid, res.violations
    pairs = sorted(zip(res.pair_user.tolist(), res.pair_res.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 3), (1, 1)]


def test_text_is_never_evaluated(state):
    res = check(state, "__import__('os').system('false')")
    assert kinds(res) == [UNPARSABLE]
    res = check(state, '{"owner": [__import__("os"), 11, null, null]}')
    assert kinds(res) == [UNPARSABLE]


def test_json_with_non_finite_numbers_is_out_of_domain_not_a_crash(state):
    assert OUT_OF_DOMAIN in kinds(check(state, "[11, Infinity, null, NaN]"))
    assert OUT_OF_DOMAIN in kinds(check(state, '{"11": [Infinity]}'))
    assert OUT_OF_DOMAIN in kinds(check(state, {float("inf"): 101}))
    assert OUT_OF_DOMAIN in kinds(check(state, {True: 101}))  # a bool is not an id


def test_parse_text_returns_one_form(state):
    tokens, mapping, violations = parse_text(state, '{"owner": [12, null, null, 11]}')
    assert tokens.tolist() == [2, 0, 0, 1] and mapping is None and violations == []
    tokens, mapping, violations = parse_text(state, json.dumps({"allocation": {"12": 104}}))
    assert tokens is None and mapping == {"12": 104}
    tokens, mapping, violations = parse_text(state, "no json here")
    assert tokens is None and mapping is None and [v.kind for v in violations] == [UNPARSABLE]


def test_user_id_zero_is_a_user_when_it_exists():
    st = make_slot("spectrum", [0, 1], [5, 6], rate_bps=np.ones((2, 2)))
    res = check(st, '{"owner": [0, 1]}')
    assert res.valid and res.dcm.tolist() == [1, 2]


def test_check_never_raises_on_content(state):
    junk = [
        None,
        3,
        2.5,
        "",
        "{",
        "[[[",
        '{"owner": "x"}',
        '{"owner": [[1]]}',
        [1, [2]],
        {None: None},
        {11: {"a": 1}},
        np.zeros((0,)),
        np.zeros((2, 2)),
        np.array([2**62, -(2**62), 0, 0]),
        np.array([1e300, -1e300, 0, 0]),
        np.array([True, False, True, False]),
    ]
    for raw in junk:
        res = check(state, raw)
        assert isinstance(res.valid, bool)
