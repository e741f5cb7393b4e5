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
  const VIEWS = ["tasks", "workers", "queues", "schedules", "charts"];
  const FILTERS = ["status", "q", "queue", "tag"];
  const PAGE = 50;
  const state = { view: "tasks", filter: {}, sort: "-created", offset: 0, total: 0, selected: null,
    detail: null, withArgs: false, dlqQueue: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
  function pad(n) { return String(n).padStart(2, "0"); }
  // One short cell: the time of day for today's records, the date too for older ones.
  function short(ts) {
    if (!ts) return "";
    const d = new Date(ts * 1000);
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === new Date().toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return Math.max(0, Math.round(seconds * 1000)) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }
  function ago(seconds) { return seconds < 1 ? "now" : duration(seconds) + " ago"; }
  function runtimeOf(task) {
    if (task.runtime !== null && task.runtime !== undefined) return task.runtime;
    if (task.status === "RUNNING" && task.started_at) return Date.now() / 1000 - task.started_at;
    return null;
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

  // -- the URL holds the view, filters, sort, page and open task, so a reload or a shared link shows the same --
  function readURL() {
    const params = new URLSearchParams(window.location.search);
    state.view = VIEWS.includes(params.get("view")) ? params.get("view") : "tasks";
    state.filter = {};
    for (const key of FILTERS) if (params.get(key)) state.filter[key] = params.get(key);
    state.sort = params.get("sort") || "-created";
    state.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    state.selected = params.get("task") || null;
  }
  function writeURL() {
    const params = new URLSearchParams();
    if (state.view !== "tasks") params.set("view", state.view);
    for (const key of FILTERS) if (state.filter[key]) params.set(key, state.filter[key]);
    if (state.sort !== "-created") params.set("sort", state.sort);
    if (state.offset) params.set("offset", state.offset);
    if (state.selected) params.set("task", state.selected);
    const search = params.toString();
    const url = window.location.pathname + (search ? "?" + search : "");
    if (url !== window.location.pathname + window.location.search) window.history.replaceState(null, "", url);
  }
  function fillForm() {
    const form = $("filters");
    for (const key of FILTERS) form.elements[key].value = state.filter[key] || "";
  }

  // -- views ---------------------------------------------------------------------------------------------
  function show(view) {
    state.view = view;
    for (const name of VIEWS) {
      $("view-" + name).hidden = name !== view;
      $("tab-" + name).className = name === view ? "tab on" : "tab";
    }
    writeURL();
    if (view === "tasks") { refreshTasks(); refreshCounts(); }
    if (view === "workers" || view === "queues") refreshSide();
    if (view === "schedules") refreshSchedules();
    if (view === "charts") window.decortaskCharts.refresh();  // chart_script.py, served after this script
  }

  // -- counts and the task list --------------------------------------------------------------------------
  function renderCounts(counts) {
    const nav = $("counts");
    nav.replaceChildren();
    const all = el("button", "all " + counts.total, state.filter.status ? "chip" : "chip on");
    all.type = "button";
    all.addEventListener("click", () => setStatus(""));
    nav.append(all);
    for (const status of STATUSES) {
      const button = el("button", status.toLowerCase() + " " + (counts[status] || 0),
        "chip st-" + status + (state.filter.status === status ? " on" : ""));
      button.type = "button";
      button.addEventListener("click", () => setStatus(status));
      nav.append(button);
    }
  }
  function setStatus(status) {
    $("filters").elements.status.value = status;
    if (status) state.filter.status = status; else delete state.filter.status;
    state.offset = 0;
    writeURL();
    refreshTasks();
    refreshCounts();
  }
  function query() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(state.filter)) if (value) params.set(key, value);
    params.set("sort", state.sort);
    params.set("limit", PAGE);
    params.set("offset", state.offset);
    return params.toString();
  }
  function cell(text, cls, title) {
    const td = el("td", text, cls);
    if (title) td.title = title;
    return td;
  }
  function taskRow(task) {
    const row = document.createElement("tr");
    row.dataset.id = task.id;
    if (task.id === state.selected) row.className = "selected";
    const status = el("td", null, "c-status");
    status.append(el("span", task.status, "badge st-" + task.status));
    if (task.reason) status.title = task.reason;
    const progress = el("td", null, "c-progress");
    if (task.progress !== null && task.progress !== undefined) {
      const bar = el("progress");
      bar.max = 1;
      bar.value = task.progress;
      bar.title = Math.round(task.progress * 100) + "%" + (task.progress_message ? " " + task.progress_message : "");
      progress.append(bar);
    }
    row.append(status, cell(task.name, "c-name", task.name), cell(task.id.slice(0, 8), "c-id", task.id),
      cell(task.queue, "c-queue"), cell(task.attempt, "c-attempt"),
      cell(duration(runtimeOf(task)), "c-runtime"), cell(short(task.created_at), "c-created", when(task.created_at)),
      progress);
    row.tabIndex = 0;
    row.addEventListener("click", () => select(task.id));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") select(task.id); });
    return row;
  }
  function renderSort() {
    for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
      const key = th.dataset.sort;
      const on = state.sort === key || state.sort === "-" + key;
      th.setAttribute("aria-sort", on ? (state.sort.startsWith("-") ? "descending" : "ascending") : "none");
    }
  }
  function sortBy(key) {
    if (state.sort === key) state.sort = "-" + key;
    else if (state.sort === "-" + key) state.sort = key;
    else state.sort = key === "created" ? "-created" : key;
    state.offset = 0;
    writeURL();
    refreshTasks();
  }
  async function refreshTasks() {
    renderSort();
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

  // -- one task, beside the list -------------------------------------------------------------------------
  async function select(id) {
    if (state.selected !== id) state.withArgs = false;
    state.selected = id;
    writeURL();
    for (const row of $("tasks").tBodies[0].rows) row.className = row.dataset.id === id ? "selected" : "";
    await refreshDetail();
  }
  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    document.body.classList.remove("with-detail");
    for (const row of $("tasks").tBodies[0].rows) row.className = "";
    writeURL();
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
    document.body.classList.add("with-detail");
    $("detail-title").textContent = task.name + " " + task.id;
    $("permalink").href = "/tasks/" + encodeURIComponent(task.id);
    const fields = $("detail-fields");
    fields.replaceChildren();
    const rows = [["Status", task.status + (task.reason ? " (" + task.reason + ")" : "")],
      ["Queue", task.queue], ["Attempt", task.attempt], ["Worker", task.owner],
      ["Created", when(task.created_at)], ["Started", when(task.started_at)],
      ["Finished", when(task.finished_at)], ["Runtime", duration(runtimeOf(task))],
      ["Scheduled for", when(task.scheduled_for)],
      ["Progress", task.progress === null ? "" : Math.round(task.progress * 100) + "% " + (task.progress_message || "")],
      ["Output", task.output === null || task.output === undefined ? "" : JSON.stringify(task.output)],
      ["Tags", Object.keys(task.tags).length ? JSON.stringify(task.tags) : ""],
      ["Cancel requested", task.cancel_requested ? when(task.cancel_requested_at) : ""]];
    for (const [label, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      fields.append(el("dt", label), el("dd", value));
    }
    if (task.root_id) {  // a workflow's member: its picture is on the task's page (workflow_html.py)
      const link = el("a", "picture of the workflow " + task.root_id.slice(0, 12));
      link.href = "/tasks/" + encodeURIComponent(task.id) + "#workflow";
      fields.append(el("dt", "Workflow"), el("dd", "")); fields.lastChild.append(link);
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
  const WORKER_STATES = { alive: "ok", stopped: "muted", lost: "bad", silent: "bad" };
  async function refreshSide() {
    try {
      const data = await getJSON("/api/workers");
      $("workers").tBodies[0].replaceChildren(...data.workers.map((w) => {
        const row = el("tr");
        row.className = "static";
        const shown = w.state || (w.alive ? "alive" : "silent");
        row.append(cell(w.id, "mono"), cell(w.host || ""), cell(w.pid || ""),
          cell(shown, WORKER_STATES[shown] || ""), cell(w.running), cell(ago(w.age), "", when(w.last_seen)));
        return row;
      }));
      $("tab-workers").textContent = "Workers " + data.workers.filter((w) => w.alive).length;
      const queues = await getJSON("/api/queues");
      let letters = 0;
      $("queues").tBodies[0].replaceChildren(...queues.queues.map((q) => {
        const row = el("tr");
        row.className = "static";
        const cellLetters = el("td");
        const link = el("button", q.error ? "?" : q.dead_letters, "link");
        link.type = "button";
        link.addEventListener("click", () => { state.dlqQueue = q.name; refreshDeadLetters(); });
        cellLetters.append(link);
        if (!q.error) letters += q.dead_letters || 0;
        row.append(cell(q.name), cell(q.error ? q.error : q.ready), cell(q.scheduled), cell(q.running), cellLetters);
        return row;
      }));
      $("tab-queues").textContent = "Queues" + (letters ? " (" + letters + " dead)" : "");
    } catch (err) { say(err.message, true); }
  }
  // -- periodic schedules --------------------------------------------------------------------------------
  async function refreshSchedules() {
    try {
      const data = await getJSON("/api/schedules");
      $("schedules-note").textContent = data.note || (data.schedules.length ? "" : "no schedules declared");
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
        row.className = "static";
        const action = el("td");
        if (d.replayable) {
          const button = el("button", "Replay");
          button.type = "button";
          button.addEventListener("click", () => replay({ queue: state.dlqQueue, ids: [d.id] }));
          action.append(button);
        }
        row.append(cell(d.id, "mono"), cell(d.reason, "", d.detail || ""), cell(d.task || d.problem || ""), action);
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
      else if (state.offset === 0 && state.sort === "-created") soon(refreshTasks);
      if (task.id === state.selected) refreshDetail();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    readURL();
    fillForm();
    const form = $("filters");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      state.filter = {};
      for (const key of FILTERS) {
        const value = String(form.elements[key].value || "").trim();
        if (value) state.filter[key] = value;
      }
      state.offset = 0;
      writeURL();
      refreshTasks();
      refreshCounts();
    });
    form.addEventListener("reset", () => {
      state.filter = {};
      state.offset = 0;
      writeURL();
      setTimeout(() => { refreshTasks(); refreshCounts(); });
    });
    for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
      th.addEventListener("click", () => sortBy(th.dataset.sort));
      th.addEventListener("keydown", (event) => { if (event.key === "Enter") sortBy(th.dataset.sort); });
    }
    for (const name of VIEWS) $("tab-" + name).addEventListener("click", () => show(name));
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); writeURL(); refreshTasks(); });
    $("next").addEventListener("click", () => { state.offset += PAGE; writeURL(); refreshTasks(); });
    $("retry").addEventListener("click", () => act("retry"));
    $("cancel").addEventListener("click", () => act("cancel"));
    $("show-args").addEventListener("click", () => { state.withArgs = true; refreshDetail(); });
    $("close-detail").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && state.selected) closeDetail(); });
    $("replay-all").addEventListener("click", () => replay({ queue: state.dlqQueue, all: true }));
    show(state.view);
    if (state.view !== "tasks") { refreshTasks(); refreshCounts(); }
    refreshDetail();
    refreshSide();
    refreshSchedules();
    setInterval(() => { if (state.view === "workers" || state.view === "queues") refreshSide(); }, 5000);
    setInterval(() => { if (state.view === "schedules") refreshSchedules(); }, 5000);
    setInterval(() => { if (state.view === "charts") window.decortaskCharts.refresh(); }, 15000);
    connect();
  });
})();
"""

STYLES = r"""
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.45 system-ui, sans-serif; color: #1d2430; background: #f5f6f8; }
header { display: flex; gap: 14px; align-items: center; height: 40px; padding: 0 12px; background: #1d2430;
  color: #fff; position: sticky; top: 0; z-index: 3; }
header h1 { font-size: 16px; margin: 0; }
header code { color: #c8d3e6; }
.backend { min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tabs { display: flex; gap: 2px; }
.tab { background: none; border: 0; border-bottom: 2px solid transparent; color: #c8d3e6; padding: 10px 10px 8px;
  cursor: pointer; font: inherit; white-space: nowrap; }
.tab.on { color: #fff; border-bottom-color: #7fb0ff; }
.logout { margin-left: auto; }
.logout button { white-space: nowrap; }
.live { padding: 1px 8px; border-radius: 8px; background: #7a4b00; white-space: nowrap; }
.live.on { background: #196b3a; }
.message { margin: 0 12px; min-height: 0; }
.message:not(:empty) { padding: 4px 0; }
.message.bad, .error { color: #a01c1c; }
.view { padding: 6px 12px 12px; }
.toolbar { display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; padding-bottom: 6px; }
#counts { display: flex; gap: 4px; flex-wrap: wrap; }
.chip { font: inherit; font-size: 12px; padding: 1px 7px; border: 1px solid #cfd5dd; border-radius: 10px;
  background: #fff; cursor: pointer; white-space: nowrap; }
.chip.on { outline: 2px solid #1d2430; }
.filters { display: flex; gap: 4px; flex-wrap: wrap; align-items: center; }
.filters input, .filters select, .filters button { font: inherit; padding: 2px 6px; }
.filters input[name="q"] { width: 200px; }
.split { display: grid; grid-template-columns: minmax(0, 1fr); gap: 12px; align-items: start; }
table { width: 100%; border-collapse: collapse; background: #fff; }
table.rows { table-layout: fixed; }
th, td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #e3e6ea; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; line-height: 18px; }
th { background: #eef0f3; font-weight: 600; position: sticky; top: 40px; z-index: 1; }
th[data-sort] { cursor: pointer; user-select: none; }
th[data-sort]::after { content: " \2195"; color: #9aa4b1; }
th[aria-sort="ascending"]::after { content: " \25B2"; color: #1d2430; }
th[aria-sort="descending"]::after { content: " \25BC"; color: #1d2430; }
.c-status { width: 108px; } .c-id { width: 82px; } .c-queue { width: 96px; } .c-attempt { width: 44px; }
.c-runtime { width: 86px; } .c-created { width: 150px; } .c-progress { width: 84px; }
td.c-id, .mono { font-family: ui-monospace, monospace; font-size: 12px; color: #5c6776; }
td.c-runtime, td.c-attempt { text-align: right; }
td.c-progress progress { width: 60px; height: 10px; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #f0f4fb; }
tr.selected, tr.selected:hover { background: #dce8fd; }
tbody tr.static { cursor: default; }
.id { font-family: ui-monospace, monospace; font-size: 12px; color: #5c6776; overflow-wrap: anywhere; }
.badge { padding: 0 6px; border-radius: 6px; font-size: 11px; background: #e3e6ea; }
.st-SUCCESS { background: #d5f0dd; } .st-FAILED, .st-INTERRUPTED { background: #f7d7d7; }
.st-RUNNING { background: #dbe7fb; } .st-RETRYING, .st-SCHEDULED { background: #fbefd0; }
.st-CANCELLED { background: #e9e1f5; }
.reason { color: #5c6776; font-size: 12px; }
.pager { display: flex; gap: 8px; align-items: center; padding: 6px 0; }
/* The detail sits beside the list on wide screens and slides over it on narrow ones: never below it. */
.detail { padding: 10px 12px; background: #fff; border: 1px solid #e3e6ea; position: sticky; top: 46px;
  max-height: calc(100vh - 56px); overflow: auto; }
@media (min-width: 1100px) {
  body.with-detail .split { grid-template-columns: minmax(0, 1fr) minmax(380px, 38%); }
}
@media (max-width: 1099px) {
  .detail { position: fixed; top: 40px; right: 0; bottom: 0; width: min(480px, 100vw); max-height: none;
    z-index: 2; box-shadow: -4px 0 16px rgba(0, 0, 0, 0.18); }
}
.detail-head { display: flex; gap: 8px; align-items: start; }
.detail-head h2 { font-size: 14px; margin: 0; flex: 1; overflow-wrap: anywhere; }
.actions { display: flex; gap: 6px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.detail h3 { font-size: 13px; margin: 10px 0 4px; }
.detail dl, .task-page dl { display: grid; grid-template-columns: 120px minmax(0, 1fr); gap: 2px 12px; margin: 0; }
.detail dt, .task-page dt { color: #5c6776; }
.detail dd, .task-page dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f5f6f8; padding: 8px; max-height: 320px;
  overflow: auto; margin: 0; }
.logs { font-family: ui-monospace, monospace; font-size: 12px; padding-left: 20px; }
.ok { color: #196b3a; } .bad { color: #a01c1c; } .muted { color: #5c6776; }
button.link { background: none; border: none; color: #1a56c4; cursor: pointer; padding: 0; font: inherit; }
.view h2 { font-size: 15px; margin: 14px 0 6px; }
.schedules .expr { font-family: ui-monospace, monospace; font-size: 12px; }
.schedules .leader { font-family: ui-monospace, monospace; font-size: 12px; color: #5c6776; }
.schedules .zone { font-size: 12px; color: #5c6776; }
.schedules td { white-space: normal; }
.nowrap { white-space: nowrap; }
.note { color: #5c6776; margin: 6px 0; }
body.login, body.task-page { display: block; }
.login-form { max-width: 340px; margin: 80px auto; padding: 24px; background: #fff; border: 1px solid #e3e6ea;
  display: flex; flex-direction: column; gap: 12px; }
.login-form input { width: 100%; }
.task-page { padding: 16px; }
"""
