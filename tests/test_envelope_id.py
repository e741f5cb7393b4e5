"""`envelope_id`: the task id of a message too large to decode, read within the worker's own byte budget."""

from __future__ import annotations

import json

import pytest

from decortask.message import Message, envelope_id

BUDGET = 1024


def test_the_id_of_a_decortask_envelope_is_read_from_its_first_bytes() -> None:
    body = Message(id="t-1", task="shop.add", args=["x" * 10 * BUDGET]).encode()
    assert len(body) > BUDGET
    assert envelope_id(body, BUDGET) == "t-1"


@pytest.mark.parametrize(
    "body, expected",
    [
        (b' {\n "task": "a", "v" : 1,\t"id": "t-2", "args": [', "t-2"),  # any order and spacing, cut after id
        (json.dumps({"args": ["x" * BUDGET], "id": "t-3"}).encode(), None),  # id past the budget
        (b'{"v": 2, "id": "t-4", "args": [', None),  # another envelope version: its ids mean nothing here
        (b'{"v": 1, "id": 7, "args": [', None),
        (b'{"v": 1, "id": "", "args": [', None),
        (b'["id", "t-5"]', None),
        (b'{"args": [[[[[[[[', None),
        (b"\xff\xfe{", None),
    ],
    ids=[
        "reordered",
        "beyond-budget",
        "other-version",
        "not-a-string",
        "empty",
        "not-an-object",
        "cut",
        "bytes",
    ],
)
def test_an_id_is_read_only_from_a_top_level_v1_field_within_the_budget(
    body: bytes, expected: str | None
) -> None:
    assert envelope_id(body, BUDGET) == expected
