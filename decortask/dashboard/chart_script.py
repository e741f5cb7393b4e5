"""The Charts view's script and styles, served after the page's own (`/assets/dashboard.js`, `.css`).

It draws `/api/activity` as inline SVG built with `createElementNS`, attributes and `textContent` only, like
the page's script: no markup is ever parsed from data. The page's script calls `window.decortaskCharts.refresh()`
when the Charts view is shown and every 15 s while it stays shown.
"""

from __future__ import annotations

CHART_SCRIPT = r"""
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const STATES = ["SUCCESS", "FAILED", "CANCELLED", "INTERRUPTED"];
  const W = 640, H = 230, LEFT = 62, RIGHT = 14, TOP = 12, BOTTOM = 40;
  const PW = W - LEFT - RIGHT, PH = H - TOP - BOTTOM;
  const PALETTE = ["#1a56c4", "#c2570c", "#196b3a", "#7b3fb5", "#0e7c86", "#8a6d00", "#a01c1c", "#5c6776"];
  const $ = (id) => document.getElementById(id);

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function html(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  // A round top for the y axis, at or above `max`.
  function niceTop(max) {
    if (!(max > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
    return 10 * step;
  }
  function count(v) { return Number.isInteger(v) ? String(v) : ""; }
  function seconds(v) {
    if (v === 0) return "0";
    if (v < 1) return Math.round(v * 1000) + " ms";
    if (v < 120) return (v < 10 ? v.toFixed(1) : Math.round(v)) + " s";
    return Math.round(v / 60) + " min";
  }
  function clock(ts) {
    const d = new Date(ts * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  // The axes of one chart: time along x (the hour before `end`), `top` along y.
  function frame(label, end, top, yTitle, format) {
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart-svg", role: "img", "aria-label": label });
    for (const f of [0, 0.5, 1]) {
      const y = TOP + PH * (1 - f);
      root.append(svg("line", { x1: LEFT, x2: LEFT + PW, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: LEFT - 5, y: y + 4, "text-anchor": "end", class: "tick" }, format(top * f)));
    }
    for (const ago of [60, 45, 30, 15, 0]) {
      const x = LEFT + PW * (1 - ago / 60);
      root.append(svg("line", { x1: x, x2: x, y1: TOP + PH, y2: TOP + PH + 4, class: "axis-line" }));
      root.append(svg("text", { x: x, y: TOP + PH + 16, "text-anchor": "middle", class: "tick" }, ago));
    }
    root.append(svg("line", { x1: LEFT, x2: LEFT + PW, y1: TOP + PH, y2: TOP + PH, class: "axis-line" }));
    root.append(svg("text", { x: LEFT + PW / 2, y: H - 6, "text-anchor": "middle", class: "axis" },
      "minutes ago (until " + clock(end) + ")"));
    const mid = TOP + PH / 2;
    root.append(svg("text", { x: 14, y: mid, transform: "rotate(-90 14 " + mid + ")", "text-anchor": "middle",
      class: "axis" }, yTitle));
    return root;
  }
  const xOf = (end, ts) => LEFT + PW * Math.min(1, Math.max(0, 1 - (end - ts) / 3600));
  const yOf = (top, v) => TOP + PH * (1 - v / top);

  function legend(items) {
    const list = html("ul", null, "legend");
    for (const [text, cls, colour] of items) {
      const item = html("li");
      const swatch = svg("svg", { width: 14, height: 10, "aria-hidden": "true" });
      swatch.append(colour ? svg("line", { x1: 0, x2: 14, y1: 5, y2: 5, stroke: colour, "stroke-width": 3 })
        : svg("rect", { width: 14, height: 10, class: cls }));
      item.append(swatch, html("span", text));
      list.append(item);
    }
    return list;
  }
  // One polyline per run of known values (a gap where a value is null).
  function lines(root, points, colour, name, dashed) {
    let run = [];
    const flush = () => {
      if (run.length === 1) root.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, fill: colour }));
      if (run.length > 1) {
        const attrs = { points: run.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "), fill: "none",
          stroke: colour, "stroke-width": 2, "data-series": name };
        if (dashed) attrs["stroke-dasharray"] = "4 3";
        root.append(svg("polyline", attrs));
      }
      run = [];
    };
    for (const point of points) { if (point) run.push(point); else flush(); }
    flush();
  }
  function figure(id, title, chart, legendItems, note) {
    const box = $(id);
    box.replaceChildren(html("h3", title), chart, legend(legendItems));
    if (note) box.append(html("p", note, "note"));
  }

  function throughput(data, end) {
    const totals = data.minutes.map((m) => STATES.reduce((sum, s) => sum + m[s], 0));
    const top = niceTop(Math.max(...totals));
    const root = frame("tasks ended per minute", end, top, "tasks / min", count);
    const width = PW / data.minutes.length;
    data.minutes.forEach((minute, i) => {
      let base = TOP + PH;
      for (const state of STATES) {
        if (!minute[state]) continue;
        const height = (minute[state] / top) * PH;
        base -= height;
        const bar = svg("rect", { x: (LEFT + i * width + 0.5).toFixed(2), y: base.toFixed(2),
          width: Math.max(1, width - 1).toFixed(2), height: height.toFixed(2), class: "bar st-" + state,
          "data-state": state, "data-count": minute[state], "data-start": minute.start });
        bar.append(svg("title", {}, clock(minute.start) + " " + state.toLowerCase() + ": " + minute[state]));
        root.append(bar);
      }
    });
    const ended = totals.reduce((a, b) => a + b, 0);
    const note = data.capped ? "from the newest " + data.cap.toLocaleString("en") + " tasks created in the last 2 hours"
      : ended + " tasks ended in the hour";
    figure("chart-throughput", "Tasks ended per minute, by final state", root,
      STATES.map((s) => [s.toLowerCase(), "st-" + s]), note);
  }

  function failures(data, end) {
    const series = [["failed", "FAILED", "#a01c1c", false], ["interrupted", "INTERRUPTED", "#c2570c", false],
      ["retries", "retries", "#8a6d00", true]];
    const top = niceTop(Math.max(...data.minutes.flatMap((m) => series.map((s) => m[s[1]]))));
    const root = frame("failures per minute", end, top, "per min", count);
    for (const [name, key, colour, dashed] of series) {
      lines(root, data.minutes.map((m) => [xOf(end, m.start + 30), yOf(top, m[key])]), colour, name, dashed);
    }
    figure("chart-failures", "Failures per minute", root, series.map((s) => [s[0], null, s[2]]),
      "retries: attempts before the last, counted in the minute their task ended");
  }

  function queueDepth(data, end) {
    const samples = data.queues.samples;
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.ready)))].sort();
    const values = samples.flatMap((s) => Object.values(s.ready).filter((v) => v !== null));
    const top = niceTop(Math.max(0, ...values));
    const root = frame("ready messages per queue", end, top, "ready messages", count);
    names.slice(0, PALETTE.length).forEach((name, i) => {
      lines(root, samples.map((s) => (s.ready[name] === null || s.ready[name] === undefined ? null
        : [xOf(end, s.ts), yOf(top, s.ready[name])])), PALETTE[i], name, false);
    });
    let note = "sampled every " + data.queues.interval + " s by this dashboard";
    if (!data.queues.full_hour) note += ", since the dashboard started at " + clock(data.queues.since);
    if (names.length > PALETTE.length) note += "; the first " + PALETTE.length + " of " + names.length + " queues";
    figure("chart-queues", "Queue depth", root, names.slice(0, PALETTE.length).map((n, i) => [n, null, PALETTE[i]]),
      note);
  }

  function runtimes(data, end) {
    const series = [["p50", "#1a56c4"], ["p95", "#c2570c"], ["p99", "#a01c1c"]];
    const top = niceTop(Math.max(0, ...data.runtime.flatMap((r) => series.map((s) => r[s[0]] || 0))));
    const root = frame("runtime percentiles", end, top, "runtime", seconds);
    for (const [key, colour] of series) {
      lines(root, data.runtime.map((r) => (r[key] === null ? null
        : [xOf(end, r.start + data.runtime_bucket / 2), yOf(top, r[key])])), colour, key, false);
    }
    figure("chart-runtime", "Runtime percentiles per " + data.runtime_bucket / 60 + " minutes", root,
      series.map((s) => [s[0], null, s[1]]), "finished minus started, of the tasks that ended in each bucket");
  }

  async function refresh() {
    const note = $("charts-note");
    try {
      const response = await fetch("/api/activity", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.assign("/login"); return; }
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || response.statusText);
      const end = data.minutes[data.minutes.length - 1].start + data.minute;
      throughput(data, end);
      failures(data, end);
      queueDepth(data, end);
      runtimes(data, end);
      note.className = "note";
      note.textContent = "The last hour, from the store (read " + data.read + " records); updated every 15 s.";
    } catch (err) {
      note.className = "note bad";
      note.textContent = err.message;
    }
  }
  window.decortaskCharts = { refresh: refresh };
})();
"""

CHART_STYLES = r"""
.charts { display: grid; grid-template-columns: minmax(0, 1fr); gap: 12px; }
@media (min-width: 1100px) { .charts { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
.chart { margin: 0; padding: 8px 10px; background: #fff; border: 1px solid #e3e6ea; min-width: 0; }
.chart h3 { font-size: 13px; margin: 0 0 4px; }
.chart-svg { display: block; width: 100%; height: auto; }
.chart-svg .grid { stroke: #e3e6ea; }
.chart-svg .axis-line { stroke: #9aa4b1; }
.chart-svg .tick { font-size: 11px; fill: #5c6776; }
.chart-svg .axis { font-size: 11px; fill: #1d2430; }
.chart-svg rect.st-SUCCESS, .legend rect.st-SUCCESS { fill: #4caf6e; }
.chart-svg rect.st-FAILED, .legend rect.st-FAILED { fill: #d9534f; }
.chart-svg rect.st-CANCELLED, .legend rect.st-CANCELLED { fill: #9b7fc7; }
.chart-svg rect.st-INTERRUPTED, .legend rect.st-INTERRUPTED { fill: #e8926b; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 14px; list-style: none; margin: 4px 0 0; padding: 0; }
.legend li { display: flex; gap: 5px; align-items: center; font-size: 12px; overflow-wrap: anywhere; }
.chart .note { margin: 4px 0 0; font-size: 12px; }
"""
