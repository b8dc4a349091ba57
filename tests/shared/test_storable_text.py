"""Text the database can store: the rule, the one scan of raw JSON that passes nearly
every body, and the walk that names the fields when the scan finds something."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.shared.storable_text import (
    KEY_MESSAGE,
    MOST_NAMED,
    NUL_MESSAGE,
    SURROGATE_MESSAGE,
    is_storable,
    may_hold_unstorable,
    unstorable_fields,
)
from tests.factories import case_body


class TestIsStorable:
    @pytest.mark.parametrize(
        "text", ["", "NE23", "Mrs Zoë Åberg", "救急", "\U0001f691 ambulance", "tab\tnewline\n"]
    )
    def test_ordinary_text_is_storable(self, text: str) -> None:
        assert is_storable(text)

    @pytest.mark.parametrize(
        "text", ["\x00", "a\x00b", "\ud800", "a\udfffb", "\ud83d\ude91", "Zoë\x00"]
    )
    def test_a_nul_or_a_lone_surrogate_is_not(self, text: str) -> None:
        # "\ud83d\ude91" is a pair's two halves as two characters, which is not how
        # Python holds the character they stand for: neither half is storable alone.
        assert not is_storable(text)


def parsed_bodies() -> list[bytes]:
    """Bodies whose parsed value holds a NUL or a lone surrogate, each way JSON can."""
    body = case_body()
    escaped = json.dumps(body)
    return [
        escaped.replace("NE23", "NE\\u000023").encode(),
        escaped.replace("NE23", "NE\\ud80023").encode(),
        escaped.replace("NE23", "NE\\uDFFF23").encode(),
        escaped.replace('"callsign"', '"call\\u0000sign"').encode(),
        # a lone surrogate's UTF-8 form, which json.loads decodes with "surrogatepass"
        escaped.replace("NE23", "NE\ud800").encode("utf-8", "surrogatepass"),
        # UTF-16 and UTF-32, which json.loads detects and reads
        escaped.replace("NE23", "NE\\u0000").encode("utf-16"),
        escaped.replace("NE23", "NE\\u0000").encode("utf-32-le"),
    ]


class TestMayHoldUnstorable:
    def test_an_ordinary_case_passes_with_one_scan(self) -> None:
        assert not may_hold_unstorable(json.dumps(case_body()).encode())
        assert not may_hold_unstorable(json.dumps(case_body(), ensure_ascii=False).encode())

    def test_escapes_of_other_characters_pass(self) -> None:
        body = json.dumps({"text": 'Zoë "quoted" \\ back\tslash \u00e9'})
        assert "\\u" in body
        assert "\\\\" in body
        assert not may_hold_unstorable(body.encode())

    def test_an_escaped_surrogate_pair_is_suspected_but_the_walk_finds_nothing(self) -> None:
        raw = json.dumps({"text": "\U0001f691 on scene"}).encode()  # a pair of escapes
        assert may_hold_unstorable(raw)
        assert unstorable_fields(json.loads(raw)) == []

    @pytest.mark.parametrize("raw", parsed_bodies())
    def test_every_way_a_body_can_hold_unstorable_text_is_suspected(self, raw: bytes) -> None:
        assert unstorable_fields(json.loads(raw)), "the sample holds no unstorable text"
        assert may_hold_unstorable(raw)

    def test_an_escaped_backslash_is_suspected_but_the_walk_finds_nothing(self) -> None:
        raw = json.dumps({"text": "C:\\u0000 is a path, not a NUL"}).encode()
        assert b"\\\\u0000" in raw
        assert may_hold_unstorable(raw)
        assert unstorable_fields(json.loads(raw)) == []

    @pytest.mark.parametrize(
        ("raw", "suspect"),
        [
            ('{"type": "ping"}', False),
            ('{"type": "decline", "reason": "Zoë"}', False),
            ('{"type": "decline", "reason": "a\\u0000b"}', True),
            ('{"type": "decline", "reason": "a\\uD800b"}', True),
            ('{"type": "decline", "reason": "a\ud800b"}', True),  # decoded already
        ],
    )
    def test_text_already_decoded_is_judged_too(self, raw: str, suspect: bool) -> None:
        assert may_hold_unstorable(raw) is suspect


class TestUnstorableFields:
    def test_fields_are_named_by_their_paths_in_document_order(self) -> None:
        value: dict[str, Any] = {
            "incident": {"callsign": "NE\x0023", "cad_reference": "CAD-1"},
            "risk_flags": ["cannot_walk", "\ud800"],
            "handover": {"format": "ATMIST", "text": "fell\x00"},
            "age": 82,
            "ok": None,
        }
        assert [(p.path, p.message) for p in unstorable_fields(value)] == [
            ("incident.callsign", NUL_MESSAGE),
            ("risk_flags.1", SURROGATE_MESSAGE),
            ("handover.text", NUL_MESSAGE),
        ]

    def test_a_field_name_is_reported_at_its_object_and_not_repeated(self) -> None:
        value = {"incident": {"call\x00sign": "NE23"}, "pat\ud800ient": {}}
        problems = unstorable_fields(value)
        assert [(p.path, p.message) for p in problems] == [
            ("incident", KEY_MESSAGE),
            ("body", KEY_MESSAGE),
        ]

    def test_the_value_itself_is_named_by_the_root(self) -> None:
        assert [p.path for p in unstorable_fields("\x00", root="message")] == ["message"]

    def test_messages_never_repeat_the_text(self) -> None:
        problems = unstorable_fields({"text": "Marchetti\x00Blackwood", "x": "Marchetti\ud800"})
        assert all("Marchetti" not in p.message for p in problems)

    def test_a_body_nested_as_deep_as_the_parser_allows_is_walked(self) -> None:
        depth = 5000  # deeper than Python's recursion limit
        value: Any = "\x00"
        for _ in range(depth):
            value = [value]
        [problem] = unstorable_fields(value)
        assert problem.path == ".".join(["0"] * depth)

    def test_a_key_that_is_not_a_field_name_is_not_repeated(self) -> None:
        value = {"Jane Doe 4010232137": "\x00", "notes": {"4010232137": ["\x00"]}}
        assert [p.path for p in unstorable_fields(value)] == ["*", "notes.*.0"]

    def test_no_more_than_the_first_twenty_are_named(self) -> None:
        problems = unstorable_fields({"flags": ["\x00"] * 7_000})
        assert [p.path for p in problems] == [f"flags.{n}" for n in range(MOST_NAMED)]
        assert MOST_NAMED == 20
