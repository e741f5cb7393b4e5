"""Flask example: a form enqueues a task; a page shows its status, progress and logs.

The package is the application factory, as in Flask's tutorial (flaskr): `flask --app examples.flask_app run`;
worker: `decortask worker -A examples.flask_app:create_app` (the worker calls the factory). `app.py` holds
one app made by the factory, for WSGI servers: `-A examples.flask_app.app:app` works as well.

Configuration: `app.config` keys `DECORTASK_BROKER_URL`, `DECORTASK_STORE_URL`, ... (any decortask setting),
here read from `FLASK_DECORTASK_*` environment variables by `from_prefixed_env`; plain `DECORTASK_*`
environment variables work too. With nothing set, broker and store are `decortask.db` in the working directory.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, abort, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

import decortask
from decortask import TaskNotFound
from decortask.contrib.flask import Decortask

# Not `tasks`: that is the name of this package's tasks.py module, which would replace it on import.
decortask_ext = Decortask()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory: configuration from the environment, then `test_config`."""
    app = Flask(__name__)
    app.config["SUMMARY_TOP_WORDS"] = 3
    # Signs the session that holds the CSRF token; set FLASK_SECRET_KEY when several processes serve the app.
    app.config["SECRET_KEY"] = secrets.token_hex(32)
    app.config.from_prefixed_env()  # FLASK_DECORTASK_BROKER_URL=... -> app.config["DECORTASK_BROKER_URL"]
    if test_config:
        app.config.update(test_config)
    decortask_ext.init_app(app)
    from .tasks import summarize  # imported here, as flaskr imports its parts: the package stays light

    def csrf_token() -> str:
        if "csrf_token" not in session:
            session["csrf_token"] = secrets.token_urlsafe(32)
        return str(session["csrf_token"])

    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def check_csrf_token() -> None:
        # A form post must carry the token of this browser's session (Flask-WTF's CSRFProtect does the same).
        if request.method == "POST":
            sent = request.form.get("csrf_token", "")
            expected = session.get("csrf_token", "")
            if not expected or not hmac.compare_digest(sent, expected):
                abort(400, "the form's CSRF token is missing or wrong: reload the form and send it again")

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.post("/summaries")
    def create_summary() -> Response | tuple[str, int]:
        text = request.form.get("text", "").strip()
        if not text:
            return render_template("index.html", error="Write some text first."), 400
        handle = summarize.delay(text)
        return redirect(url_for("show_summary", task_id=handle.id))

    @app.get("/summaries/<task_id>")
    def show_summary(task_id: str) -> str:
        try:
            # The app `.delay()` used: this extension, or a test's own app that replaces it in tests.
            record = decortask.current_app().handle(task_id, summarize.name).record()
        except TaskNotFound:
            abort(404)
        return render_template("status.html", record=record)

    return app
