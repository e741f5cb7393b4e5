// A minimal DOM, fetch and EventSource, enough to run the dashboard script without a browser.
const fs = require("fs");
const [scriptPath, dataPath] = process.argv.slice(2);
const data = JSON.parse(fs.readFileSync(dataPath, "utf8"));
class El {
  constructor(tag, id) {
    Object.assign(this, { tagName: tag.toUpperCase(), id: id || "", children: [], _text: "", className: "",
      hidden: false, disabled: false, value: "", href: "", dataset: {}, title: "", type: "", listeners: {},
      parent: null, max: 0 });
    if (tag === "table") this.tBodies = [new El("tbody")];
  }
  get textContent() { return this.children.length ? this.children.map((c) => c.textContent).join("") : this._text; }
  set textContent(v) { this.children = []; this._text = String(v); }
  set innerHTML(v) { throw new Error("innerHTML was used"); }
  append(...nodes) { for (const n of nodes) { n.parent = this; this.children.push(n); } }
  replaceChildren(...nodes) { this.children = []; this.append(...nodes); }
  replaceWith(node) { const i = this.parent.children.indexOf(this); node.parent = this.parent; this.parent.children[i] = node; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  fire(type) { for (const fn of this.listeners[type] || []) fn({ preventDefault() {} }); }
  get rows() { return this.children; }
  querySelector(selector) {
    const m = /data-id="(.*)"\]/.exec(selector);
    return m ? this.children.find((c) => c.dataset.id === m[1]) || null : null;
  }
}
const elements = {};
const TABLES = new Set(["tasks", "workers", "queues", "deadletters", "schedules"]);
let ready = null;
globalThis.document = {
  getElementById: (id) => (elements[id] ||= new El(TABLES.has(id) ? "table" : "div", id)),
  createElement: (tag) => new El(tag),
  querySelector: (selector) => selector.includes("csrf-token") ? { content: "csrf-123" } : (elements[selector] ||= new El("select")),
  addEventListener: (type, fn) => { if (type === "DOMContentLoaded") ready = fn; },
};
globalThis.window = { location: { assign: (to) => { throw new Error("sent to " + to); } } };
globalThis.CSS = { escape: (s) => s };
globalThis.setInterval = () => 0;
const posts = [];
globalThis.fetch = async (path, options = {}) => {
  const route = path.split("?")[0];
  if ((options.method || "GET") === "POST") posts.push({ path, headers: options.headers });
  const body = data.routes[route];
  if (body === undefined) throw new Error("unexpected fetch " + path);
  return { status: 200, ok: true, statusText: "OK", json: async () => body };
};
let source = null;
globalThis.EventSource = class { constructor(url) { this.url = url; this.listeners = {}; source = this; }
  addEventListener(type, fn) { this.listeners[type] = fn; } };
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));
(async () => {
  require(scriptPath);
  ready();
  await settle();
  const $ = (id) => elements[id];
  const out = {};
  out.rows = $("tasks").tBodies[0].rows.map((r) => r.dataset.id);
  out.counts = $("counts").children.map((b) => b.textContent);
  out.workers = $("workers").tBodies[0].rows.map((r) => r.textContent);
  out.queues = $("queues").tBodies[0].rows.map((r) => r.textContent);
  if (data.routes["/api/schedules"]) {
    out.schedulesHidden = $("schedules-section").hidden;
    out.schedules = $("schedules").tBodies[0].rows.map((r) => r.children.map((c) => c.textContent));
    $("schedules").tBodies[0].rows[0].children[6].children[0].fire("click");  // Pause on the first
    await settle();
    out.scheduleMessage = $("message").textContent;
  }
  $("tasks").tBodies[0].rows[0].fire("click");
  await settle();
  out.detailHidden = $("detail").hidden;
  out.error = $("detail-error").textContent;
  out.logs = $("detail-logs").children.map((li) => li.textContent);
  out.retryDisabled = $("retry").disabled;
  out.cancelDisabled = $("cancel").disabled;
  $("retry").fire("click");
  await settle();
  out.posts = posts;
  out.message = $("message").textContent;
  source.listeners.open();
  out.live = $("live").textContent;
  source.listeners.task({ data: JSON.stringify({ ...data.routes["/api/tasks"].tasks[1], status: "RUNNING" }) });
  await settle();
  out.rowAfterEvent = $("tasks").tBodies[0].rows[1].textContent;
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((err) => { console.error(err.stack || String(err)); process.exit(1); });
