"""An option a broker or store URL's query string cannot take is refused with a ConfigurationError naming the
URL (masked) and what to do, never a TypeError from deep inside kombu or redis-py. Nothing connects here."""

from __future__ import annotations

import pytest

from decortask import ConfigurationError, Decortask
from decortask.store import open_store


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/1?namespace=mine",  # a store option given to the broker: the likeliest slip
        "amqp://guest:s3cret@127.0.0.1:5999/checks?nosuchoption=1",  # refused before any connection
    ],
)
def test_a_broker_url_with_an_option_kombu_does_not_know_is_a_configuration_error(url: str) -> None:
    app = Decortask(url, "memory://", set_default=False)
    try:
        with pytest.raises(ConfigurationError, match="not one kombu knows") as caught:
            app.transport.connection()
        assert "s3cret" not in str(caught.value) and "store URL, not the broker's" in str(caught.value)
    finally:
        app.close()


def test_a_redis_store_url_with_an_option_redis_py_does_not_know_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis store URL") as caught:
        open_store("redis://:s3cret@127.0.0.1:6379/1?nosuchoption=1")
    assert "s3cret" not in str(caught.value) and "namespace=" in str(caught.value)
