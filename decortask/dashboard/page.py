"""Server-rendered HTML: the page shell the script fills, the login form, and a script-free task page.

Every value is passed through `html.escape`; nothing here builds markup from data any other way. The script
and styles are separate files, so the Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any

from .workflow_html import workflow_section

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
#: The task list's columns: (css key, heading, the sort key the API takes or None).
_COLUMNS = (
    ("status", "Status", "status"),
    ("name", "Task", "name"),
    ("id", "Id", None),
    ("queue", "Queue", "queue"),
    ("attempt", "Try", None),
    ("runtime", "Runtime", None),
    ("created", "Created", "created"),
    ("progress", "Progress", None),
)
_VIEWS = (
    ("tasks", "Tasks"),
    ("workers", "Workers"),
    ("queues", "Queues"),
    ("schedules", "Schedules"),
    ("charts", "Charts"),
)


def shell(csrf_token: str, overview: dict[str, Any], can_logout: bool) -> str:
    """The dashboard page; `dashboard.js` fills it from the JSON API and the event stream.

    Five views share the page (tasks, workers, queues with their dead letters, schedules, charts of the last
    hour); the script shows one at a time and keeps the view, the filters, the sort, the page and the open
    task in the URL.
    """
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
    columns = "".join(
        f'<th class="c-{key}"{_sort_attr(sort)} scope="col">{escape(label)}</th>'
        for key, label, sort in _COLUMNS
    )
    tabs = "".join(
        f'<button type="button" class="tab" data-view="{key}" id="tab-{key}">{escape(label)}</button>'
        for key, label in _VIEWS
    )
    return (
        _HEAD.format(title="decortask dashboard", extra=extra)
        + f"""<body>
<header>
  <h1>decortask</h1>
  <nav class="tabs" aria-label="Views">{tabs}</nav>
  <span class="backend" title="broker {escape(str(overview["broker"]))}, store {escape(str(overview["store"]))}">
  <code>{escape(str(overview["broker"]))}</code></span>
  <span id="live" class="live">connecting</span>
  {logout}
</header>
<p id="message" class="message" role="status"></p>
<section id="view-tasks" class="view">
  <div class="toolbar">
    <nav id="counts" aria-label="Tasks by status"></nav>
    <form id="filters" class="filters">
      <select name="status" aria-label="Status"><option value="">any status</option>{status_options}</select>
      <input name="q" type="search" placeholder="id or name contains" aria-label="Search">
      <input name="queue" placeholder="queue" aria-label="Queue" size="10">
      <input name="tag" placeholder="tag key=value" aria-label="Tag" size="12">
      <button type="submit">Filter</button>
      <button type="reset">Clear</button>
    </form>
  </div>
  <div class="split">
    <div class="list">
      <table id="tasks" class="rows">
        <thead><tr>{columns}</tr></thead>
        <tbody></tbody>
      </table>
      <div class="pager"><button id="prev" type="button">&larr; Newer</button><span id="page-info"></span>
      <button id="next" type="button">Older &rarr;</button></div>
    </div>
    <section id="detail" class="detail" hidden aria-label="Task detail">
      <div class="detail-head">
        <h2 id="detail-title"></h2>
        <button id="close-detail" type="button" aria-label="Close">&times;</button>
      </div>
      <div class="actions">
        <button id="retry" type="button">Retry</button>
        <button id="cancel" type="button">Cancel</button>
        <button id="show-args" type="button">Show arguments</button>
        <a id="permalink" href="#">Own page</a>
      </div>
      <dl id="detail-fields"></dl>
      <progress id="detail-progress" max="1" hidden></progress>
      <h3>Error</h3><pre id="detail-error"></pre>
      <h3>Result</h3><pre id="detail-result"></pre>
      <h3>Arguments</h3><pre id="detail-args"></pre>
      <h3>Logs</h3><ol id="detail-logs" class="logs"></ol>
    </section>
  </div>
</section>
<section id="view-workers" class="view" hidden>
  <table id="workers" class="rows"><thead><tr><th>Worker</th><th>Host</th><th>Pid</th><th>State</th>
  <th>Running</th><th>Last seen</th></tr></thead><tbody></tbody></table>
  <p class="note">A worker is alive while its heartbeat is younger than the lease timeout; one that stopped
  cleanly says so; one that went silent without stopping is lost (its tasks are recovered by the others).</p>
</section>
<section id="view-queues" class="view" hidden>
  <table id="queues" class="rows"><thead><tr><th>Queue</th><th>Ready</th><th>Scheduled</th><th>Running</th>
  <th>Dead letters</th></tr></thead><tbody></tbody></table>
  <h2>Dead letters <span id="dlq-name"></span></h2>
  <button id="replay-all" type="button" hidden>Replay all</button>
  <table id="deadletters" class="rows"><thead><tr><th>Id</th><th>Reason</th><th>Task</th><th></th></tr></thead>
  <tbody></tbody></table>
</section>
<section id="view-schedules" class="view schedules" hidden>
  <p id="schedules-note" class="note"></p>
  <table id="schedules" class="rows"><thead><tr><th>Schedule</th><th>Runs (zone)</th><th>Next run</th>
  <th>Last slot</th><th>State</th><th>Leader</th><th></th></tr></thead><tbody></tbody></table>
</section>
<section id="view-charts" class="view" hidden>
  <p id="charts-note" class="note"></p>
  <div class="charts">
    <figure id="chart-throughput" class="chart"></figure>
    <figure id="chart-failures" class="chart"></figure>
    <figure id="chart-queues" class="chart"></figure>
    <figure id="chart-runtime" class="chart"></figure>
  </div>
</section>
</body>
</html>
"""
    )


def _sort_attr(sort: str | None) -> str:
    return f' data-sort="{sort}" tabindex="0" aria-sort="none"' if sort else ""


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


def task_page(detail: dict[str, Any], workflow: dict[str, Any] | None = None) -> str:
    """One task as plain HTML, without script: a link that works anywhere, every value escaped; with the
    picture of its `workflow` (`workflow_view.py`) when it is in one."""
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
{workflow_section(workflow) if workflow else ""}
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
