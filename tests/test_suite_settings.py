"""The suite runs against the servers it is given (`DECORTASK_TEST_REDIS_URL`, `DECORTASK_TEST_AMQP_URL`).

conftest.py reads those URLs and is the one place that knows the defaults. A test that names a server URL,
a Redis database, a port to check or a RabbitMQ vhost by itself ignores them: it passes on the default
setup and fails (or silently uses another database or vhost) everywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import AMQP_URL, REDIS_URL, amqp_vhost, require_amqp, require_redis

TESTS = Path(__file__).resolve().parent
#: Server URLs, reachability checks and rabbitmqctl listings that do not come from the suite's URLs.
HARD_CODED = {
    "the suite's default Redis database (db 15)": re.compile(r"(127\.0\.0\.1|localhost):6379/15\b"),
    "the suite's default AMQP URL (vhost /)": re.compile(r"(127\.0\.0\.1|localhost):5672//"),
    "a server check on a literal address": re.compile(
        r"require_server\(\s*\"\w+\",\s*\"(127\.0\.0\.1|localhost)\",\s*(6379|5672)\s*\)"
    ),
    "a rabbitmqctl listing without -p (the default vhost)": re.compile(
        r"\"rabbitmqctl\"(?![^\n]*\"-p\")[^\n]*\"list_\w+\""
    ),
}


def _test_sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name != "conftest.py" and p != Path(__file__).resolve())


@pytest.mark.parametrize("what", sorted(HARD_CODED))
def test_no_test_hard_codes_what_the_suite_is_given(what: str) -> None:
    found = [
        f"{path.relative_to(TESTS)}:{text[: match.start()].count(chr(10)) + 1}: {match.group(0)}"
        for path in _test_sources()
        for text in [path.read_text()]
        for match in HARD_CODED[what].finditer(text)
    ]
    assert not found, (
        f"{what}; use conftest's REDIS_URL / AMQP_URL / require_redis() / amqp_vhost():\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://guest:guest@127.0.0.1:5672", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/decortask_test_vhost", "decortask_test_vhost"),
        ("amqp://guest:guest@127.0.0.1:5672/%2Fteam", "/team"),
    ],
)
def test_the_vhost_is_read_from_the_amqp_url_as_kombu_reads_it(url: str, vhost: str) -> None:
    assert amqp_vhost(url) == vhost


def test_the_server_checks_follow_the_urls() -> None:
    # Smoke: both helpers accept the suite's URLs (they skip, or fail under CI, when a server is down).
    assert REDIS_URL.startswith("redis") and AMQP_URL.startswith("amqp")
    require_redis()
    require_amqp()
