"""A task that fails with secrets among its arguments, for the secrets scenario (B-20) and `decortask show`.

Imported as `-A tests.secret_tasks` by a worker subprocess with `DECORTASK_TEST_SENTRY_EVENTS` set, it also
does what a user's tasks module with Sentry does: `sentry_sdk.init` with sentry-sdk's defaults (here with a
transport that appends every envelope to that file instead of sending it) and an app with
`SentryMiddleware` made current. Imported by a test, it only defines the task.
"""

from __future__ import annotations

import logging
import os
import threading

from decortask import Decortask, task, task_log

EVENTS_FILE = os.environ.get("DECORTASK_TEST_SENTRY_EVENTS")
logger = logging.getLogger(__name__)


@task(name="secret_tasks.login", retries=1, delay=0.2)
def login(user: str, secret: str, password: str = "") -> None:
    """Fails every attempt, as a login with wrong credentials would; the secrets are only its arguments."""
    logger.debug("login attempt started")  # shows a test that the worker's DEBUG output was on
    task_log("checking the credentials")
    raise PermissionError("login refused: the credentials do not match")


if EVENTS_FILE:
    import sentry_sdk
    from sentry_sdk.envelope import Envelope
    from sentry_sdk.transport import Transport

    from decortask.contrib.sentry import SentryMiddleware

    class FileTransport(Transport):
        """Appends each envelope, serialized as sentry-sdk would send it, to EVENTS_FILE."""

        _lock = threading.Lock()

        def capture_envelope(self, envelope: Envelope) -> None:
            with self._lock, open(EVENTS_FILE, "ab") as out:  # type: ignore[arg-type]
                out.write(envelope.serialize() + b"\n")

    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=FileTransport())
    # The worker's --broker-url/--store-url replace the URLs and keep the middleware.
    app = Decortask(middleware=[SentryMiddleware()])
