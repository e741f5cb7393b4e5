"""Server-rendered HTML: the page shell the script fills, the login form, and a script-free task page.

Every value is passed through `html.escape`; nothing here builds markup from data any other way. The script
and styles are separate files, so the Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title}</title>
<link rel="stylesheet" href="/assets/dashboard.css">
{extra}
</head>
"""

_STATUSES = ("PENDING", "SCHEDULED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED", "INTERRUPTED")


def shell(csrf_token: str, overview: dict[str, Any], can_logout: bool) -> str:
    """The dashboard page; `dashboard.js` fills it from the JSON API and the event stream."""
    extra = (
        f'<meta name="csrf-token" content="{escape(csrf_token)}">\n'
        '<script src="/assets/dashboard.js" defer></script>'
    )
    logout = (
        '<form method="post" action="/logout" class="logout">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        '<button type="submit">Log out</button></form>'
        if can_logout
        else ""
    )
    status_options = "".join(f'<option value="{s}">{s.lower()}</option>' for s in _STATUSES)
    return (
        _HEAD.format(title="decortask dashboard", extra=extra)
        + f"""<body>
<header>
  <h1>decortask</h1>
  <span class="backend">broker <code>{escape(str(overview["broker"]))}</code>
  store <code>{escape(str(overview["store"]))}</code></span>
  <span id="live" class="live">connecting</span>
  {logout}
</header>
<nav id="counts" aria-label="Tasks by status"></nav>
<form id="filters" class="filters">
  <select name="status" aria-label="Status"><option value="">any status</option>{status_options}</select>
  <input name="q" placeholder="id or name contains" aria-label="Search">
  <input name="name" placeholder="task name" aria-label="Task name">
  <input name="queue" placeholder="queue" aria-label="Queue">
  <input name="tag" placeholder="tag key=value" aria-label="Tag">
  <button type="submit">Filter</button>
  <button type="reset">Clear</button>
</form>
<p id="message" class="message" role="status"></p>
<main>
  <section class="tasks">
    <table id="tasks">
      <thead><tr><th>Task</th><th>Status</th><th>Queue</th><th>Attempt</th><th>Progress</th><th>Created</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <div class="pager"><button id="prev" type="button">Newer</button><span id="page-info"></span>
    <button id="next" type="button">Older</button></div>
  </section>
  <section id="detail" class="detail" hidden>
    <h2 id="detail-title"></h2>
    <div class="actions">
      <button id="retry" type="button">Retry</button>
      <button id="cancel" type="button">Cancel</button>
      <button id="show-args" type="button">Show arguments</button>
      <a id="permalink" href="#">Page</a>
      <button id="close-detail" type="button">Close</button>
    </div>
    <dl id="detail-fields"></dl>
    <progress id="detail-progress" max="1" hidden></progress>
    <h3>Error</h3><pre id="detail-error"></pre>
    <h3>Result</h3><pre id="detail-result"></pre>
    <h3>Arguments</h3><pre id="detail-args"></pre>
    <h3>Logs</h3><ol id="detail-logs" class="logs"></ol>
  </section>
  <section id="schedules-section" class="schedules" hidden>
    <h2>Schedules</h2>
    <p id="schedules-note" class="note"></p>
    <table id="schedules"><thead><tr><th>Schedule</th><th>Runs (zone)</th><th>Next run</th>
    <th>Last slot</th><th>State</th><th>Leader</th><th></th></tr></thead><tbody></tbody></table>
  </section>
</main>
<aside>
  <h2>Workers</h2>
  <table id="workers"><thead><tr><th>Worker</th><th>State</th><th>Running</th><th>Last seen</th></tr></thead>
  <tbody></tbody></table>
  <h2>Queues</h2>
  <table id="queues"><thead><tr><th>Queue</th><th>Ready</th><th>Scheduled</th><th>Running</th>
  <th>Dead letters</th></tr></thead><tbody></tbody></table>
  <h2>Dead letters <span id="dlq-name"></span></h2>
  <button id="replay-all" type="button" hidden>Replay all</button>
  <table id="deadletters"><thead><tr><th>Id</th><th>Reason</th><th>Task</th><th></th></tr></thead>
  <tbody></tbody></table>
</aside>
</body>
</html>
"""
    )


def login(csrf_token: str, problem: str | None = None) -> str:
    """The login form: the access token in, an HttpOnly session cookie out."""
    note = f'<p class="error" role="alert">{escape(problem)}</p>' if problem else ""
    return (
        _HEAD.format(title="decortask dashboard: log in", extra="")
        + f"""<body class="login">
<form method="post" action="/login" class="login-form">
  <h1>decortask</h1>
  {note}
  <input type="hidden" name="csrf_token" value="{escape(csrf_token)}">
  <label>Access token <input type="password" name="token" autocomplete="current-password" required
  autofocus></label>
  <button type="submit">Log in</button>
</form>
</body>
</html>
"""
    )


def task_page(detail: dict[str, Any]) -> str:
    """One task as plain HTML, without script: a link that works anywhere, every value escaped."""
    fields = (
        ("Status", _status_text(detail)),
        ("Task", detail["name"]),
        ("Queue", detail["queue"]),
        ("Attempt", detail["attempt"]),
        ("Worker", detail["owner"]),
        ("Created", _when(detail["created_at"])),
        ("Started", _when(detail["started_at"])),
        ("Finished", _when(detail["finished_at"])),
        ("Progress", _progress(detail)),
        ("Tags", _json(detail["tags"]) if detail["tags"] else None),
    )
    rows = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(str(value))}</dd>"
        for label, value in fields
        if value is not None
    )
    error = ""
    if detail["error_type"] or detail["error_message"]:
        error = (
            f"<h2>Error</h2><pre>{escape(str(detail['error_type'] or ''))}: "
            f"{escape(str(detail['error_message'] or ''))}</pre>"
        )
    if detail["traceback"]:
        error += f"<h2>Traceback</h2><pre>{escape(str(detail['traceback']))}</pre>"
    logs = "".join(
        f"<li><time>{escape(_when(line['ts']) or '')}</time> "
        f'<span class="attempt">#{escape(str(line["attempt"]))}</span> {escape(str(line["message"]))}'
        + (f" <code>{escape(_json(line['extra']))}</code>" if line["extra"] else "")
        + "</li>"
        for line in detail["logs"]
    )
    return (
        _HEAD.format(title=f"task {escape(str(detail['id']))}", extra="")
        + f"""<body class="task-page">
<p><a href="/">&larr; all tasks</a></p>
<h1>{escape(str(detail["name"]))} <small>{escape(str(detail["id"]))}</small></h1>
<dl>{rows}</dl>
{error}
<h2>Result</h2><pre>{escape(_json(detail["result"]))}</pre>
<h2>Logs</h2><ol class="logs">{logs}</ol>
</body>
</html>
"""
    )


def _status_text(detail: dict[str, Any]) -> str:
    reason = f" ({detail['reason']})" if detail.get("reason") else ""
    return f"{detail['status']}{reason}"


def _progress(detail: dict[str, Any]) -> str | None:
    if detail["progress"] is None:
        return None
    message = f" {detail['progress_message']}" if detail["progress_message"] else ""
    return f"{round(float(detail['progress']) * 100)}%{message}"


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)
