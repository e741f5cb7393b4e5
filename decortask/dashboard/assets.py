"""The page's script and styles, served as files so the Content-Security-Policy needs no inline script.

The script builds every element with `createElement` and sets text with `textContent` only: no HTML is ever
made from data (a test checks that no markup-parsing API appears here).
"""

from __future__ import annotations

SCRIPT = r"""
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const TERMINAL = new Set(["SUCCESS", "FAILED", "CANCELLED", "INTERRUPTED"]);
  const STATUSES = ["PENDING", "SCHEDULED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED",
    "INTERRUPTED"];
  const PAGE = 50;
  const state = { filter: {}, offset: 0, total: 0, selected: null, detail: null, withArgs: false,
    dlqQueue: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
  function ago(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }
  function say(text, bad) {
    const box = $("message");
    box.textContent = text || "";
    box.className = bad ? "message bad" : "message";
  }

  async function getJSON(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  async function postJSON(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
      body: JSON.stringify(body || {}),
    });
    if (response.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // -- counts and the task list --------------------------------------------------------------------------
  function renderCounts(counts) {
    const nav = $("counts");
    nav.replaceChildren();
    const all = el("button", "all " + counts.total, state.filter.status ? "" : "on");
    all.type = "button";
    all.addEventListener("click", () => setStatus(""));
    nav.append(all);
    for (const status of STATUSES) {
      const button = el("button", status.toLowerCase() + " " + (counts[status] || 0),
        "st-" + status + (state.filter.status === status ? " on" : ""));
      button.type = "button";
      button.addEventListener("click", () => setStatus(status));
      nav.append(button);
    }
  }
  function setStatus(status) {
    document.querySelector('#filters select[name="status"]').value = status;
    state.filter.status = status;
    state.offset = 0;
    refreshTasks();
    refreshCounts();
  }
  function query() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(state.filter)) if (value) params.set(key, value);
    params.set("limit", PAGE);
    params.set("offset", state.offset);
    return params.toString();
  }
  function taskRow(task) {
    const row = document.createElement("tr");
    row.dataset.id = task.id;
    if (task.id === state.selected) row.className = "selected";
    const name = el("td");
    name.append(el("div", task.name, "name"), el("div", task.id, "id"));
    const status = el("td");
    status.append(el("span", task.status, "badge st-" + task.status));
    if (task.reason) status.append(el("span", " " + task.reason, "reason"));
    const progress = el("td");
    if (task.progress !== null && task.progress !== undefined) {
      const bar = el("progress");
      bar.max = 1;
      bar.value = task.progress;
      progress.append(bar);
    }
    row.append(name, status, el("td", task.queue), el("td", task.attempt), progress, el("td", when(task.created_at)));
    row.addEventListener("click", () => select(task.id));
    return row;
  }
  async function refreshTasks() {
    try {
      const data = await getJSON("/api/tasks?" + query());
      state.total = data.total;
      $("tasks").tBodies[0].replaceChildren(...data.tasks.map(taskRow));
      const last = Math.min(state.offset + data.tasks.length, data.total);
      $("page-info").textContent = data.total
        ? (state.offset + 1) + "-" + last + " of " + data.total + (data.total_exact ? "" : "+")
        : "no tasks";
      $("prev").disabled = state.offset === 0;
      $("next").disabled = last >= data.total;
    } catch (err) { say(err.message, true); }
  }
  async function refreshCounts() {
    try { renderCounts(await getJSON("/api/counts")); } catch (err) { say(err.message, true); }
  }

  // -- one task ------------------------------------------------------------------------------------------
  async function select(id) {
    if (state.selected !== id) state.withArgs = false;
    state.selected = id;
    for (const row of $("tasks").tBodies[0].rows) row.className = row.dataset.id === id ? "selected" : "";
    await refreshDetail();
  }
  async function refreshDetail() {
    if (!state.selected) return;
    try {
      const path = "/api/tasks/" + encodeURIComponent(state.selected) + (state.withArgs ? "?args=1" : "");
      renderDetail(await getJSON(path));
    } catch (err) { say(err.message, true); }
  }
  function renderDetail(task) {
    state.detail = task;
    $("detail").hidden = false;
    $("detail-title").textContent = task.name + " " + task.id;
    $("permalink").href = "/tasks/" + encodeURIComponent(task.id);
    const fields = $("detail-fields");
    fields.replaceChildren();
    const rows = [["Status", task.status + (task.reason ? " (" + task.reason + ")" : "")],
      ["Queue", task.queue], ["Attempt", task.attempt], ["Worker", task.owner],
      ["Created", when(task.created_at)], ["Started", when(task.started_at)],
      ["Finished", when(task.finished_at)], ["Scheduled for", when(task.scheduled_for)],
      ["Progress", task.progress === null ? "" : Math.round(task.progress * 100) + "% " + (task.progress_message || "")],
      ["Output", task.output === null || task.output === undefined ? "" : JSON.stringify(task.output)],
      ["Tags", Object.keys(task.tags).length ? JSON.stringify(task.tags) : ""],
      ["Cancel requested", task.cancel_requested ? when(task.cancel_requested_at) : ""]];
    for (const [label, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      fields.append(el("dt", label), el("dd", value));
    }
    const bar = $("detail-progress");
    bar.hidden = task.progress === null;
    if (task.progress !== null) bar.value = task.progress;
    const error = [task.error_type ? task.error_type + ": " + (task.error_message || "") : (task.error_message || ""),
      task.traceback || ""].filter(Boolean).join("\n\n");
    $("detail-error").textContent = error || "none";
    $("detail-result").textContent = task.result === null ? "" : JSON.stringify(task.result, null, 2);
    $("detail-args").textContent = task.args_included
      ? JSON.stringify({ args: task.args, kwargs: task.kwargs }, null, 2) : "hidden (Show arguments)";
    const logs = $("detail-logs");
    logs.replaceChildren(...task.logs.map((line) => {
      const item = el("li");
      item.append(el("time", when(line.ts)), el("span", " #" + line.attempt + " ", "attempt"), el("span", line.message));
      if (Object.keys(line.extra).length) item.append(el("code", " " + JSON.stringify(line.extra)));
      return item;
    }));
    $("retry").disabled = !TERMINAL.has(task.status);
    $("cancel").disabled = TERMINAL.has(task.status);
  }
  async function act(kind) {
    const id = state.selected;
    if (!id) return;
    try {
      const data = await postJSON("/api/tasks/" + encodeURIComponent(id) + "/" + kind);
      if (kind === "retry") say(data.warning || ("task " + id + ": attempt " + data.attempt + " queued"));
      else say(data.cancelled ? "task " + id + " cancelled" : "task " + id + ": asked to stop");
    } catch (err) { say(err.message, true); }
    refreshDetail();
    refreshTasks();
  }

  // -- workers, queues, dead letters ---------------------------------------------------------------------
  async function refreshSide() {
    try {
      const data = await getJSON("/api/workers");
      $("workers").tBodies[0].replaceChildren(...data.workers.map((w) => {
        const row = el("tr");
        row.append(el("td", w.id), el("td", w.alive ? "alive" : "silent", w.alive ? "ok" : "bad"),
          el("td", w.running), el("td", ago(w.age)));
        return row;
      }));
      const queues = await getJSON("/api/queues");
      $("queues").tBodies[0].replaceChildren(...queues.queues.map((q) => {
        const row = el("tr");
        const letters = el("td");
        const link = el("button", q.error ? "?" : q.dead_letters, "link");
        link.type = "button";
        link.addEventListener("click", () => { state.dlqQueue = q.name; refreshDeadLetters(); });
        letters.append(link);
        row.append(el("td", q.name), el("td", q.error ? q.error : q.ready), el("td", q.scheduled),
          el("td", q.running), letters);
        return row;
      }));
    } catch (err) { say(err.message, true); }
  }
  // -- periodic schedules --------------------------------------------------------------------------------
  async function refreshSchedules() {
    try {
      const data = await getJSON("/api/schedules");
      $("schedules-section").hidden = !data.schedules.length && !data.note;
      $("schedules-note").textContent = data.note || "";
      $("schedules").tBodies[0].replaceChildren(...data.schedules.map(scheduleRow));
    } catch (err) { say(err.message, true); }
  }
  function scheduleRow(s) {
    const row = el("tr");
    row.className = "static";
    const name = el("td");
    name.append(el("div", s.name, "name"), el("div", s.task || "", "id"));
    const runs = el("td");
    runs.append(el("div", s.tz ? "cron " + s.expression : s.schedule, "expr"));
    if (s.tz) runs.append(el("div", s.tz, "zone"));
    const last = el("td");
    if (s.last_at) {
      last.append(el("div", when(s.last_at), "nowrap"));
      last.append(el("span", s.last_outcome, "badge st-" + s.last_outcome));
      last.title = s.last_task_id;
    } else {
      last.textContent = "none yet";
    }
    const next = el("td", s.paused ? "paused" : (s.next_at ? when(s.next_at) : ""), "nowrap");
    const status = el("td");
    status.append(el("span", s.paused ? "paused" : "active", s.paused ? "badge st-CANCELLED" : "badge st-SUCCESS"));
    const action = el("td");
    if (s.task) {
      const button = el("button", s.paused ? "Resume" : "Pause");
      button.type = "button";
      button.addEventListener("click", () => setPaused(s.name, !s.paused));
      action.append(button);
    }
    row.append(name, runs, next, last, status, el("td", s.leader || "none", "leader"), action);
    return row;
  }
  async function setPaused(name, paused) {
    try {
      await postJSON("/api/schedules/" + encodeURIComponent(name) + (paused ? "/pause" : "/resume"));
      say("schedule " + name + (paused ? ": paused; its slots are skipped until it is resumed" : ": resumed from its next slot"));
    } catch (err) { say(err.message, true); }
    refreshSchedules();
  }

  async function refreshDeadLetters() {
    if (!state.dlqQueue) return;
    try {
      const data = await getJSON("/api/deadletters?queue=" + encodeURIComponent(state.dlqQueue));
      $("dlq-name").textContent = data.dead_letter_queue;
      $("replay-all").hidden = !data.dead_letters.some((d) => d.replayable);
      $("deadletters").tBodies[0].replaceChildren(...data.dead_letters.map((d) => {
        const row = el("tr");
        const action = el("td");
        if (d.replayable) {
          const button = el("button", "Replay");
          button.type = "button";
          button.addEventListener("click", () => replay({ queue: state.dlqQueue, ids: [d.id] }));
          action.append(button);
        }
        const reason = el("td", d.reason);
        reason.title = d.detail || "";
        row.append(el("td", d.id, "id"), reason, el("td", d.task || d.problem || ""), action);
        return row;
      }));
    } catch (err) { say(err.message, true); }
  }
  async function replay(body) {
    try {
      const data = await postJSON("/api/deadletters/replay", body);
      say(data.outcomes.map((o) => o.id + " " + o.action + ": " + o.detail).join("; ") || "nothing replayed", !data.ok);
    } catch (err) { say(err.message, true); }
    refreshDeadLetters();
    refreshSide();
  }

  // -- live updates --------------------------------------------------------------------------------------
  let pending = null;
  function soon(fn) {
    if (pending) return;
    pending = setTimeout(() => { pending = null; fn(); }, 300);
  }
  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "live on"; });
    source.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "live"; });
    source.addEventListener("hello", (event) => renderCounts(JSON.parse(event.data).counts));
    source.addEventListener("counts", (event) => renderCounts(JSON.parse(event.data)));
    source.addEventListener("problem", (event) => say(JSON.parse(event.data).error, true));
    source.addEventListener("task", (event) => {
      const task = JSON.parse(event.data);
      const row = $("tasks").tBodies[0].querySelector('tr[data-id="' + CSS.escape(task.id) + '"]');
      if (row) row.replaceWith(taskRow(task));
      else if (state.offset === 0) soon(refreshTasks);
      if (task.id === state.selected) refreshDetail();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = $("filters");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      state.filter = {};
      for (const [key, value] of data.entries()) if (value) state.filter[key] = String(value).trim();
      state.offset = 0;
      refreshTasks();
      refreshCounts();
    });
    form.addEventListener("reset", () => { state.filter = {}; state.offset = 0; setTimeout(() => { refreshTasks(); refreshCounts(); }); });
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refreshTasks(); });
    $("next").addEventListener("click", () => { state.offset += PAGE; refreshTasks(); });
    $("retry").addEventListener("click", () => act("retry"));
    $("cancel").addEventListener("click", () => act("cancel"));
    $("show-args").addEventListener("click", () => { state.withArgs = true; refreshDetail(); });
    $("close-detail").addEventListener("click", () => { state.selected = null; $("detail").hidden = true; });
    $("replay-all").addEventListener("click", () => replay({ queue: state.dlqQueue, all: true }));
    refreshCounts();
    refreshTasks();
    refreshSide();
    refreshSchedules();
    setInterval(refreshSide, 5000);
    setInterval(refreshSchedules, 5000);
    connect();
  });
})();
"""

STYLES = r"""
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1d2430; background: #f5f6f8;
  display: grid; grid-template-columns: 1fr 360px; grid-template-areas: "head head" "nav nav" "filters filters"
  "msg msg" "main side"; }
header { grid-area: head; display: flex; gap: 16px; align-items: center; padding: 8px 16px; background: #1d2430;
  color: #fff; }
header h1 { font-size: 18px; margin: 0; }
header code { color: #c8d3e6; }
.logout { margin-left: auto; }
.live { padding: 2px 8px; border-radius: 8px; background: #7a4b00; }
.live.on { background: #196b3a; }
nav { grid-area: nav; padding: 8px 16px; display: flex; gap: 6px; flex-wrap: wrap; }
nav button.on { outline: 2px solid #1d2430; }
.filters { grid-area: filters; padding: 0 16px 8px; display: flex; gap: 6px; flex-wrap: wrap; }
.message { grid-area: msg; margin: 0 16px; min-height: 1.4em; }
.message.bad, .error { color: #a01c1c; }
main { grid-area: main; padding: 0 16px 16px; overflow: auto; }
aside { grid-area: side; padding: 0 16px 16px; overflow: auto; }
table { width: 100%; border-collapse: collapse; background: #fff; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
tbody tr { cursor: pointer; }
tr.selected { background: #e8f0fe; }
.id { font-family: ui-monospace, monospace; font-size: 12px; color: #5c6776; word-break: break-all; }
.badge { padding: 1px 6px; border-radius: 6px; font-size: 12px; background: #e3e6ea; }
.st-SUCCESS { background: #d5f0dd; } .st-FAILED, .st-INTERRUPTED { background: #f7d7d7; }
.st-RUNNING { background: #dbe7fb; } .st-RETRYING, .st-SCHEDULED { background: #fbefd0; }
.st-CANCELLED { background: #e9e1f5; }
.reason { color: #5c6776; font-size: 12px; }
.detail { margin-top: 12px; padding: 12px; background: #fff; border: 1px solid #e3e6ea; }
.detail dl, .task-page dl { display: grid; grid-template-columns: 140px 1fr; gap: 2px 12px; }
.detail dt, .task-page dt { color: #5c6776; }
.detail dd, .task-page dd { margin: 0; word-break: break-word; }
pre { white-space: pre-wrap; word-break: break-word; background: #f5f6f8; padding: 8px; max-height: 320px;
  overflow: auto; }
.logs { font-family: ui-monospace, monospace; font-size: 12px; }
.ok { color: #196b3a; } .bad { color: #a01c1c; }
button.link { background: none; border: none; color: #1a56c4; cursor: pointer; padding: 0; }
.schedules { margin-top: 16px; }
.schedules h2 { font-size: 16px; margin: 8px 0; }
.schedules .expr { font-family: ui-monospace, monospace; font-size: 12px; white-space: nowrap; }
tbody tr.static { cursor: default; }
.schedules .leader { font-family: ui-monospace, monospace; font-size: 12px; color: #5c6776;
  overflow-wrap: anywhere; }
.schedules .zone { font-size: 12px; color: #5c6776; }
.nowrap { white-space: nowrap; }
.note { color: #5c6776; margin: 4px 0; }
.pager { display: flex; gap: 8px; align-items: center; padding: 6px 0; }
body.login, body.task-page { display: block; }
.login-form { max-width: 340px; margin: 80px auto; padding: 24px; background: #fff; border: 1px solid #e3e6ea;
  display: flex; flex-direction: column; gap: 12px; }
.login-form input { width: 100%; }
.task-page { padding: 16px; }
"""
