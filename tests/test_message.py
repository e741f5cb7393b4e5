"""The v1 envelope: JSON only, every field validated on receipt, bad input refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from decortask import ArgumentEncodingError, MessageError, PayloadTooLargeError
from decortask.message import Message, decode


def _body(**changes: Any) -> bytes:
    data = Message(id="abc", task="t.add", args=[1, 2], created_at=1.0).to_dict()
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not _DROP}).encode()


_DROP = object()


def test_round_trip_keeps_every_field() -> None:
    message = Message(
        id="abc",
        task="t.add",
        args=[1, "x", [2]],
        kwargs={"k": {"n": None}},
        attempt=2,
        eta=10.5,
        expires=20.0,
        created_at=1.0,
        idempotency_key="key",
        tags={"tenant": "acme"},
        priority=7,
        parent_id="p",
        root_id="r",
        workflow={"step": 1},
    )
    assert decode(message.encode(), "application/json") == message


def test_unknown_fields_are_ignored() -> None:
    assert decode(_body(future_field=123), "application/json").id == "abc"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": _DROP}, "invalid_envelope"),
        ({"id": 5}, "invalid_envelope"),
        ({"id": ""}, "invalid_envelope"),
        ({"task": _DROP}, "invalid_envelope"),
        ({"task": ["x"]}, "invalid_envelope"),
        ({"args": {"a": 1}}, "invalid_envelope"),
        ({"kwargs": [1]}, "invalid_envelope"),
        ({"attempt": 0}, "invalid_envelope"),
        ({"attempt": "1"}, "invalid_envelope"),
        ({"eta": "tomorrow"}, "invalid_envelope"),
        ({"expires": True}, "invalid_envelope"),
        ({"created_at": "x"}, "invalid_envelope"),
        ({"idempotency_key": 3}, "invalid_envelope"),
        ({"tags": {"a": 1}}, "invalid_envelope"),
        ({"priority": 12}, "invalid_envelope"),
        ({"parent_id": 1}, "invalid_envelope"),
        ({"root_id": 1}, "invalid_envelope"),
        ({"workflow": "x"}, "invalid_envelope"),
        ({"v": _DROP}, "invalid_envelope"),
        ({"v": 99}, "unsupported_version"),
    ],
)
def test_bad_envelope_is_refused_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode(_body(**changes), "application/json")
    assert caught.value.reason == reason


def test_malformed_json_is_a_decode_error() -> None:
    with pytest.raises(MessageError) as caught:
        decode(b"{not json", "application/json")
    assert caught.value.reason == "decode_error"


@pytest.mark.parametrize("content_type", ["application/x-python-serialize", "application/x-yaml"])
def test_forbidden_content_type_is_never_deserialized(content_type: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode(b"\x80\x04K\x01.", content_type)
    assert caught.value.reason == "content_type_not_allowed"


def test_oversized_body_is_refused() -> None:
    with pytest.raises(MessageError) as caught:
        decode(_body(args=["x" * 5000]), "application/json", max_bytes=2048)
    assert caught.value.reason == "payload_too_large"


def test_encoding_names_the_argument_that_is_not_json() -> None:
    message = Message(id="a", task="t", args=[1, {"when": object()}])
    with pytest.raises(ArgumentEncodingError, match=r"args\[1\]\['when'\] \(a object\)"):
        message.encode()


def test_encoding_refuses_nan_and_non_string_keys() -> None:
    with pytest.raises(ArgumentEncodingError, match="non-finite"):
        Message(id="a", task="t", kwargs={"x": float("nan")}).encode()
    with pytest.raises(ArgumentEncodingError, match="not a str"):
        Message(id="a", task="t", args=[{1: "one"}]).encode()


def test_encoding_enforces_the_payload_limit() -> None:
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
        Message(id="a", task="t", args=["x" * 5000]).encode(max_bytes=2048)
