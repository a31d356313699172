// The llmlb dashboard: plain JavaScript modules, no build step, no framework.
// Everything it shows comes from the admin API; it builds the page with DOM calls and text
// nodes only (never innerHTML), so names and bodies that carry HTML are shown, never run.
// Live figures arrive over one EventSource (/api/events); nothing polls faster than 5 s.

const app = document.getElementById("app");
const state = { me: null, csrf: null, page: null, events: null, live: [], nodes: [], tasks: {} };
const PAGES = [
  ["overview", "Overview"], ["nodes", "Nodes"], ["models", "Models"], ["requests", "Requests"],
  ["playground", "Playground"], ["keys", "Keys"], ["users", "Users"], ["logs", "Logs"],
  ["audit", "Audit"], ["metrics", "Metrics"],
];

// -- small helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the page's CSP (style-src 'self') refuses style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const canWrite = () => state.me && state.me.role === "admin";
const fmt = {
  bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  ms(n) { return n === null || n === undefined ? "–" : n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${n.toFixed(0)} ms`; },
  num(n, digits = 1) { return n === null || n === undefined ? "–" : Number(n).toFixed(digits); },
  pct(n) { return n === null || n === undefined ? "–" : `${(n * 100).toFixed(1)} %`; },
  time(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "–"; },
  ago(ts) {
    if (!ts) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : fmt.time(ts);
  },
  speed(bps) { return bps ? `${fmt.bytes(bps)}/s` : ""; },
};

function toast(message, ok = false) {
  const el = h("div", { class: ok ? "toast ok" : "toast", role: "status" }, message);
  document.body.append(el);
  setTimeout(() => el.remove(), ok ? 3000 : 6000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["x-csrf-token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !path.startsWith("/api/auth/")) {
    await login("Your session ended. Log in again; the page stays as it was.");
    return api(method, path, body);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Runs an action, shows its error as a toast, and says whether it worked.
async function act(fn, done) {
  try {
    await fn();
    if (done) toast(done, true);
    return true;
  } catch (err) {
    toast(err.message || String(err));
    return false;
  }
}

// -- login -------------------------------------------------------------------------------------

let loginPromise = null;
function login(message) {
  // One login dialog however many requests found the session gone; it lies over the page,
  // so a half-filled form underneath is kept.
  if (loginPromise) return loginPromise;
  loginPromise = new Promise((resolve) => {
    const error = h("div", { class: "error", role: "alert" }, message || "");
    const user = h("input", { name: "username", autocomplete: "username", placeholder: "user name", required: true });
    const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", placeholder: "password", required: true });
    const button = h("button", { type: "submit" }, "Log in");
    const form = h("form", {
      async onsubmit(event) {
        event.preventDefault();
        button.disabled = true;
        try {
          const me = await api("POST", "/api/auth/login", { username: user.value, password: pass.value });
          state.me = me; state.csrf = me.csrf_token;
          overlay.remove();
          loginPromise = null;
          // Logged in again over a page: keep the page (and what was typed into it).
          if (document.getElementById("whoami")) {
            document.getElementById("whoami").textContent = `${me.user.username} (${me.role})`;
            connectEvents();
          } else renderShell();
          resolve();
        } catch (err) {
          error.textContent = err.message;
          pass.value = "";
        } finally { button.disabled = false; }
      },
    }, user, pass, button, error);
    const sso = h("div", { class: "sso" });
    const overlay = h("div", { class: "overlay" }, h("div", { class: "dialog" }, h("h2", {}, "llmlb"), sso, form));
    document.body.append(overlay);
    user.focus();
    offerSingleSignOn(sso, error);
  });
  return loginPromise;
}

// Why a single sign-on came back without a session (router.access.sso's codes).
const SSO_ERRORS = {
  provider_unreachable: "The identity provider could not be reached. Try again later, or log in with a local account.",
  provider_misconfigured: "The identity provider's settings do not match this router's (see the router's log).",
  denied: "The identity provider refused the sign-in.",
  expired: "The sign-in took too long or was started in another window. Try again.",
  invalid_answer: "The identity provider's answer could not be verified (see the router's log).",
  no_role: "You signed in, but your account has no role here: ask an admin to add you to a group that maps to one.",
  name_taken: "Your user name is taken by another account here: ask an admin.",
};

async function offerSingleSignOn(into, error) {
  const failed = new URLSearchParams(location.search).get("sso_error");
  if (failed) {
    error.textContent = Object.hasOwn(SSO_ERRORS, failed) ? SSO_ERRORS[failed] : "The single sign-on did not complete.";
    history.replaceState(null, "", location.pathname + location.hash);
  }
  try {
    const methods = await (await fetch("/api/auth/methods", { credentials: "same-origin" })).json();
    if (!methods.sso) return;
    into.append(
      h("a", { class: "button", href: methods.sso.url }, `Sign in with ${methods.sso.label}`),
      h("p", { class: "muted" }, "or with a local account:"));
  } catch { /* no single sign-on offered: the form alone */ }
}

async function logout() {
  await api("POST", "/api/auth/logout");
  state.me = null; state.csrf = null;
  if (state.events) { state.events.close(); state.events = null; }
  app.replaceChildren();
  await login();
  route();
}

// -- shell, navigation, live events -------------------------------------------------------------

function theme(next) {
  const saved = next || localStorage.getItem("llmlb-theme") ||
    (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  document.documentElement.dataset.theme = saved;
  if (next) localStorage.setItem("llmlb-theme", next);
}

function renderShell() {
  const nav = h("nav", { class: "side" }, h("div", { class: "brand" }, "llmlb"),
    PAGES.map(([id, title]) => h("a", { href: `#/${id}`, "data-page": id }, title)));
  const who = state.me.user ? `${state.me.user.username} (${state.me.role})` : "loopback, no accounts";
  const header = h("header", { class: "top" }, h("h1", { id: "title" }, ""),
    h("div", { class: "who" }, h("span", { id: "whoami" }, who),
      h("button", { class: "secondary", onclick: () => theme(document.documentElement.dataset.theme === "dark" ? "light" : "dark") }, "Theme"),
      state.me.user ? h("button", { class: "secondary", onclick: logout }, "Log out") : null));
  const main = h("main", {}, header, h("div", { id: "page" }));
  app.replaceChildren(h("div", { class: "layout" }, nav, main));
  connectEvents();
  route();
}

function connectEvents() {
  if (state.events) state.events.close();
  const source = new EventSource("/api/events");
  source.addEventListener("overview", (e) => {
    const data = JSON.parse(e.data);
    state.live.push(data);
    if (state.live.length > 720) state.live.shift();
    if (state.page && state.page.onOverview) state.page.onOverview(data);
  });
  source.addEventListener("nodes", (e) => {
    state.nodes = JSON.parse(e.data).data;
    if (state.page && state.page.onNodes) state.page.onNodes(state.nodes);
  });
  source.addEventListener("task", (e) => {
    const task = JSON.parse(e.data);
    state.tasks[task.id] = task;
    if (state.page && state.page.onTask) state.page.onTask(task);
  });
  source.onerror = async () => {
    // A closed stream may mean an ended session: ask, and log in again if so.
    if (source.readyState === EventSource.CLOSED) {
      try { await api("GET", "/api/auth/me"); } catch { /* shown by api() */ }
      setTimeout(connectEvents, 5000);
    }
  };
  state.events = source;
}

function route() {
  if (!state.me) return;
  const [, name = "overview", ...rest] = location.hash.split("/");
  const known = PAGES.find(([id]) => id === name) ? name : "overview";
  for (const a of document.querySelectorAll("nav.side a")) {
    a.classList.toggle("active", a.dataset.page === known);
  }
  const title = PAGES.find(([id]) => id === known)[1];
  document.getElementById("title").textContent = title;
  document.title = `${title} · llmlb`;
  const container = document.getElementById("page");
  if (state.page && state.page.leave) state.page.leave();
  container.replaceChildren();
  state.page = PAGE_BUILDERS[known](container, rest.map(decodeURIComponent));
}

window.addEventListener("hashchange", route);

// -- charts --------------------------------------------------------------------------------------

function lineChart(title, points, { bad = false, unit = "" } = {}) {
  // points: [[t, y], ...]; an SVG polyline scaled to the data, with the latest value.
  const W = 320, H = 120, P = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  add("line", { class: "axis", x1: P, y1: H - P, x2: W - 4, y2: H - P });
  if (points.length) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y1 = Math.max(...ys, 1e-9);
    const px = (x) => P + ((x - x0) / (x1 - x0)) * (W - P - 4);
    const py = (y) => H - P - (y / y1) * (H - 2 * P);
    add("polyline", { class: bad ? "line bad" : "line", points: points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ") });
    add("text", { x: P, y: 12 }, `max ${fmt.num(y1, y1 < 10 ? 2 : 0)}${unit}`);
    add("text", { x: W - 4, y: H - 6, "text-anchor": "end" }, new Date(x1 * 1000).toLocaleTimeString());
  } else {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet");
  }
  return h("div", { class: "panel" }, h("h2", {}, title), svg);
}

// -- pages ---------------------------------------------------------------------------------------

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-card": id }, value));
}

function overviewPage(root) {
  const cards = h("div", { class: "cards" });
  const providers = h("div", { class: "panel" });
  const charts = h("div", { class: "charts" });
  root.append(cards, providers, charts);
  const show = (o) => {
    cards.replaceChildren(
      card("Nodes online", `${o.nodes_online} / ${o.nodes_total}`, "nodes"),
      card("Requests / min", o.requests_per_minute, "rpm"),
      card("Success rate", fmt.pct(o.success_rate), "success"),
      card("Avg latency", fmt.ms(o.latency_ms), "latency"),
      card("Avg time to first token", fmt.ms(o.ttft_ms), "ttft"),
      card("Tokens / s", fmt.num(o.tokens_per_second), "tps"),
      card("Active requests", o.in_flight, "active"),
      card("Queued", o.queued, "queued"),
      card("Slots busy", `${o.slots_busy} / ${o.slots_total}`, "slots"),
      card("GPU use", o.gpu_percent === null ? "–" : `${fmt.num(o.gpu_percent)} %`, "gpu"),
      card("GPU memory", `${fmt.bytes(o.gpu_memory_used)} / ${fmt.bytes(o.gpu_memory_total)}`, "gpumem"),
    );
    providers.replaceChildren(h("h2", {}, "Cloud providers"),
      ...Object.entries(o.providers).map(([name, on]) =>
        h("span", { class: "chip" }, `${name}: ${on ? "key configured" : "no key"}`)));
  };
  let series = [];
  const drawCharts = () => {
    const live = state.live.map((o) => [o.ts, o.tokens_per_second]);
    charts.replaceChildren(
      lineChart("Requests per minute (last hour)", series.map((b) => [b.ts, b.requests])),
      lineChart("Errors per minute (last hour)", series.map((b) => [b.ts, b.errors]), { bad: true }),
      lineChart("Generated tokens per second (last hour)", series.map((b) => [b.ts, b.tokens_out / 60]), { unit: "/s" }),
      lineChart("Fleet tokens/s (live, from heartbeats)", live, { unit: "/s" }),
    );
  };
  const loadSeries = async () => {
    try { series = (await api("GET", "/api/stats/series?minutes=60")).data; } catch (err) { toast(err.message); }
    drawCharts();
  };
  api("GET", "/api/stats/overview").then(show, (err) => toast(err.message));
  loadSeries();
  const timer = setInterval(loadSeries, 60000);
  return {
    onOverview(o) { show(o); drawCharts(); },
    leave() { clearInterval(timer); },
  };
}

function statusCell(status) { return h("span", { class: `status ${status}` }, status); }

function nodeActions(node, refresh) {
  if (!canWrite()) return null;
  // Whatever the answer (the node may have gone meanwhile), the table is read again.
  const call = async (method, path, done, body) => {
    await act(() => api(method, path, body), done);
    await refresh().catch(() => {});
  };
  return h("div", { class: "actions" },
    node.status === "pending" ? h("button", { onclick: () => call("POST", `/api/nodes/${node.id}/approve`, `approved ${node.name}`) }, "Approve") : null,
    node.draining
      ? h("button", { class: "secondary", onclick: () => call("POST", `/api/nodes/${node.id}/undrain`, `${node.name} takes requests again`) }, "Undrain")
      : h("button", { class: "secondary", onclick: () => call("POST", `/api/nodes/${node.id}/drain`, `draining ${node.name}`) }, "Drain"),
    h("button", { class: "secondary", onclick: () => editLabel(node, refresh) }, "Rename / tag"),
    node.kind && node.kind !== "node"
      ? h("button", { class: "danger", onclick: () => confirm(`Remove endpoint ${node.name}? The server itself is not touched.`) && call("DELETE", `/api/endpoints/${node.id}`, `removed ${node.name}`) }, "Remove")
      : h("button", { class: "danger", onclick: () => confirm(`Remove node ${node.name}? It registers again if it is still running.`) && call("DELETE", `/api/nodes/${node.id}`, `removed ${node.name}`) }, "Remove"));
}

// Another OpenAI-compatible server (vLLM, Ollama, ...) into the fleet: POST /api/endpoints.
function endpointForm(refresh) {
  const url = h("input", { name: "endpoint_url", placeholder: "http://gpu7:8000/v1", required: true, maxlength: 500 });
  const kind = h("select", { name: "endpoint_kind" }, ["openai", "vllm", "sglang", "llama-server", "ollama", "lmstudio", "tgi", "llmlb"].map((k) => h("option", { value: k }, k)));
  const name = h("input", { name: "endpoint_name", placeholder: "name (default: host:port)", maxlength: 200 });
  const key = h("input", { name: "endpoint_key", type: "password", placeholder: "API key (if it needs one)", autocomplete: "off", maxlength: 1000 });
  const limit = h("input", { name: "endpoint_concurrency", type: "number", min: 1, max: 10000, value: 16 });
  const add = () => act(async () => {
    const body = { url: url.value.trim(), kind: kind.value, max_concurrency: Number(limit.value) };
    if (name.value.trim()) body.name = name.value.trim();
    if (key.value) body.key = key.value;
    const added = await api("POST", "/api/endpoints", body);
    url.value = name.value = key.value = "";  // the key is not kept in the page
    await refresh();
    return added;
  }, "endpoint added");
  return h("div", { class: "panel" }, h("h2", {}, "Add an endpoint"),
    h("p", { class: "muted" }, "A server that speaks OpenAI's API (vLLM, SGLang, llama-server, Ollama, LM Studio, TGI): the router lists its models and balances over it with the nodes."),
    h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); add(); } },
      h("label", {}, "URL", url), h("label", {}, "Kind", kind), h("label", {}, "Name", name),
      h("label", {}, "Key", key), h("label", {}, "Concurrency", limit), h("button", { type: "submit" }, "Add")));
}

function editLabel(node, refresh) {
  const label = prompt(`Label for ${node.name} (empty for none)`, node.label || "");
  if (label === null) return;
  const tags = prompt("Tags, separated by spaces", (node.tags || []).join(" "));
  if (tags === null) return;
  act(async () => {
    await api("PATCH", `/api/nodes/${node.id}`, { label: label.trim() || null, tags: tags.split(/\s+/).filter(Boolean) });
    await refresh();
  }, "saved");
}

function nodesPage(root, [detail]) {
  if (detail) return nodeDetailPage(root, detail);
  const body = h("tbody");
  root.append(h("div", { class: "panel scroll" }, h("table", { "aria-label": "nodes" },
    h("thead", {}, h("tr", {}, ["Name", "State", "Devices", "Models loaded", "On disk", "Sync", "Slots", "Tokens/s", "Last heartbeat", ""].map((t) => h("th", {}, t)))),
    body)));
  const show = (nodes) => {
    state.nodes = nodes;
    body.replaceChildren(...(nodes.length ? nodes.map((n) => h("tr", { "data-node": n.name },
      h("td", {}, h("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, n.label || n.name),
        n.kind && n.kind !== "node" ? h("span", { class: "chip", "data-kind": n.kind, title: "an endpoint the router polls" }, n.kind) : null,
        n.label ? h("div", { class: "muted" }, n.name) : null,
        (n.tags || []).map((t) => h("span", { class: "chip" }, t))),
      h("td", {}, statusCell(n.status)),
      h("td", {}, n.devices.map((d) => h("div", {}, `${d.kind} ${d.name}`, h("div", { class: "muted" }, `${fmt.bytes(d.memory_total - d.memory_free)} / ${fmt.bytes(d.memory_total)}`))),
        engineNote(n)),
      h("td", {}, n.models_loaded.map((m) => h("span", { class: "chip" }, m))),
      h("td", {}, n.models_on_disk.map((m) => h("span", { class: "chip" }, m))),
      h("td", { "data-sync": n.sync.state }, syncText(n.sync)),
      h("td", {}, `${n.slots_busy} / ${n.slots_total}`),
      h("td", {}, fmt.num(n.tokens_per_second)),
      h("td", { title: fmt.time(n.last_seen) }, fmt.ago(n.last_seen)),
      h("td", {}, nodeActions(n, refresh))))
      : [h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No nodes yet. Start one with: llmlb node --router URL"))]));
  };
  const refresh = async () => show((await api("GET", "/api/nodes")).data);
  if (canWrite()) root.append(endpointForm(refresh));
  refresh().catch((err) => toast(err.message));
  return { onNodes: show };
}

// What a node's engine runs on, and why a GPU goes unused when it does (node.devices).
function engineNote(node) {
  if (node.kind && node.kind !== "node") return h("div", { class: "muted" }, node.base_url);  // an endpoint: its own server
  const engine = node.engine || {};
  return h("div", { class: engine.warning ? "error" : "muted", "data-engine": engine.backend || "" },
    `engine: ${engine.backend || "?"}`, engine.warning ? h("div", {}, engine.warning) : null);
}

// A node's sync state in a few words (the CLI says the same: cli/base.py sync_text).
function syncText(sync) {
  if (sync.state === "syncing") {
    const pct = sync.bytes_total ? ` ${Math.floor((100 * sync.bytes_done) / sync.bytes_total)} %` : "";
    return `syncing${pct} (${sync.missing.join(", ")})`;
  }
  if (sync.state === "failed") return `failed: ${sync.error || sync.missing.join(", ")}`;
  return "in sync";
}

function nodeDetailPage(root, id) {
  const info = h("div", { class: "panel" });
  const charts = h("div", { class: "charts" });
  const logs = h("div", { class: "logs" });
  root.append(h("p", {}, h("a", { href: "#/nodes" }, "← all nodes")), info, charts,
    h("div", { class: "panel" }, h("h2", {}, "Recent log lines"), logs));
  const refresh = async () => {
    let node;
    try { node = await api("GET", `/api/nodes/${encodeURIComponent(id)}`); } catch (err) {
      info.replaceChildren(h("p", { class: "error" }, err.status === 404 ? "This node is gone (removed, or forgotten after being offline)." : err.message));
      return;
    }
    info.replaceChildren(h("h2", {}, node.label || node.name), h("table", {}, h("tbody", {},
      [["Name", node.name], ["Kind", node.kind || "node"], ["Id", node.id], ["URL", node.base_url], ["Version", node.version], ["Engine", `${(node.engine || {}).backend || "?"} · ${(node.engine || {}).build || ""}`],
       ["State", statusCell(node.status)],
       ["Registered", fmt.time(node.registered_at)], ["Last heartbeat", fmt.ago(node.last_seen)],
       ["Slots", `${node.slots_busy} / ${node.slots_total}`], ["Active / queued", `${node.active_requests} / ${node.queued_requests}`],
       ["CPU / RAM / GPU", `${fmt.num(node.cpu_percent)} % / ${fmt.num(node.ram_percent)} % / ${fmt.num(node.gpu_percent)} %`],
       ["Sync", syncText(node.sync)], ["Assigned", node.assigned_models.join(", ") || "–"],
       ["Tags", (node.tags || []).join(", ") || "–"]].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
      (node.engine || {}).warning ? h("p", { class: "error" }, node.engine.warning) : null,
      nodeActions(node, refresh));
    const trends = (await api("GET", `/api/nodes/${encodeURIComponent(id)}/trends`)).data;
    charts.replaceChildren(
      lineChart("Tokens/s", trends.map((s) => [s.ts, s.tokens_per_second]), { unit: "/s" }),
      lineChart("Slots busy", trends.map((s) => [s.ts, s.slots_busy])),
      lineChart("CPU %", trends.map((s) => [s.ts, s.cpu_percent])));
    try {
      const lines = (await api("GET", `/api/nodes/${encodeURIComponent(id)}/logs?limit=200`)).data;
      logs.replaceChildren(...lines.map(logLine));
    } catch (err) { logs.replaceChildren(h("span", { class: "muted" }, err.message)); }
  };
  refresh();
  return { onNodes: (nodes) => { if (!nodes.find((n) => n.id === id)) refresh(); } };
}

// A GGUF from Hugging Face into the catalog: POST /api/models/register.
function registerForm(refresh) {
  const reference = h("input", { name: "hub_reference", placeholder: "hf.co/ORG/REPO:Q4_K_M", required: true, maxlength: 500 });
  const name = h("input", { name: "hub_name", placeholder: "name (default: from the file)", maxlength: 128 });
  const register = () => act(async () => {
    const body = { model: reference.value.trim() };
    if (name.value.trim()) body.name = name.value.trim();
    const entry = await api("POST", "/api/models/register", body);
    toast(`registered ${entry.name}: ${entry.origin.hub.file} (${entry.chosen})`, true);
    reference.value = name.value = "";
    await refresh();
  });
  return h("div", { class: "panel" }, h("h2", {}, "Register a model from Hugging Face"),
    h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); register(); } },
      h("label", {}, "Repository or link", reference), h("label", {}, "Name", name),
      h("button", { type: "submit" }, "Register")));
}

function modelsPage(root) {
  const table = h("div", { class: "panel scroll" });
  root.append(table);
  let models = [];
  const progress = {};  // node id + model -> task
  const cell = (model, n) => {
    const task = progress[`${n.node_id}/${model.name}`];
    if (task && (task.state === "pending" || task.state === "in_progress")) {
      const pct = task.bytes_total ? Math.floor((100 * task.bytes_done) / task.bytes_total) : 0;
      return h("td", { "data-cell": `${model.name}@${n.node}` },
        h("span", { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 }, h("div", { style: { width: `${pct}%` } })),
        ` ${pct} % `, h("span", { class: "muted" }, fmt.speed(task.speed)));
    }
    const label = { loaded: "loaded", on_disk: "on disk", downloading: `downloading ${n.percent ?? ""}%`, absent: "–" }[n.state];
    return h("td", { "data-cell": `${model.name}@${n.node}` }, h("span", { class: `status ${n.state}` }, label),
      task && task.state === "failed" ? h("div", { class: "error" }, task.error) : null,
      canWrite() && (n.state === "on_disk" || n.state === "loaded")
        ? h("div", { class: "actions" }, h("button", { class: "secondary", onclick: () => act(async () => { await api("DELETE", `/api/nodes/${n.node_id}/models/${encodeURIComponent(model.name)}`); await refresh(); }, `removed ${model.name} from ${n.node}`) }, "Remove"))
        : null);
  };
  const show = () => {
    const nodes = models.length ? models[0].nodes : [];
    table.replaceChildren(h("h2", {}, "Models × nodes"), h("table", { "aria-label": "models" },
      h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Size"), h("th", {}, "Router store"),
        nodes.map((n) => h("th", {}, n.node)), h("th", {}, ""))),
      h("tbody", {}, models.map((m) => h("tr", { "data-model": m.name },
        h("td", {}, m.name, m.in_catalog ? null : h("div", { class: "muted" }, "not in catalog"),
          m.registered ? h("div", { class: "muted", "data-registered": "" }, "from Hugging Face") : null),
        h("td", {}, fmt.bytes(m.size_bytes)),
        h("td", {}, m.on_router ? "stored" : "–"),
        m.nodes.map((n) => cell(m, n)),
        h("td", {}, canWrite() ? h("div", { class: "actions" },
          h("button", { onclick: () => distribute(m, nodes) }, "Distribute…"),
          m.in_catalog && !m.on_router ? h("button", { class: "secondary", onclick: () => act(() => api("POST", `/api/models/${encodeURIComponent(m.name)}/pull`), `pulling ${m.name} into the router's store`) }, "Pull to router") : null,
          m.registered ? h("button", { class: "danger", onclick: () => confirm(`Unregister ${m.name}? Nodes keep their copies.`) && act(async () => { await api("DELETE", `/api/models/registered/${encodeURIComponent(m.name)}`); await refresh(); }, `unregistered ${m.name}`) }, "Unregister") : null) : null))))));
  };
  const distribute = (model, nodes) => {
    const boxes = nodes.map((n) => h("input", { type: "checkbox", value: n.node_id, "aria-label": n.node }));
    const overlay = h("div", { class: "overlay" }, h("div", { class: "dialog" },
      h("h2", {}, `Distribute ${model.name}`),
      h("div", {}, nodes.map((n, i) => h("div", {}, h("label", {}, boxes[i], n.node)))),
      h("div", { class: "actions" },
        h("button", { onclick: () => send({ model: model.name, target: "specific", node_ids: boxes.filter((b) => b.checked).map((b) => b.value) }) }, "To selected"),
        h("button", { onclick: () => send({ model: model.name, target: "all" }) }, "To all nodes"),
        h("button", { class: "secondary", onclick: () => overlay.remove() }, "Cancel"))));
    const send = (body) => act(async () => {
      if (body.node_ids && !body.node_ids.length) throw new Error("choose at least one node");
      const answer = await api("POST", "/api/models/distribute", body);
      for (const task of answer.tasks) progress[`${task.node_id}/${task.model}`] = task;
      overlay.remove();
      show();
    }, `distributing ${model.name}`);
    document.body.append(overlay);
  };
  const refresh = async () => {
    models = (await api("GET", "/api/models/available")).data;
    const tasks = (await api("GET", "/api/tasks")).data;
    for (const t of tasks.reverse()) if (t.node_id) progress[`${t.node_id}/${t.model}`] = t;
    show();
  };
  if (canWrite()) root.prepend(registerForm(() => refresh()));
  refresh().catch((err) => toast(err.message));
  return {
    // What nodes hold comes with their heartbeats: look again when the node table arrives.
    onNodes() { refresh().catch(() => {}); },
    onTask(task) {
      if (!task.node_id) return;
      progress[`${task.node_id}/${task.model}`] = task;
      if (task.state === "completed" || task.state === "failed") refresh().catch(() => {});
      else show();
    },
  };
}

// The filters, paging and export links of a table of rows (the history, the audit trail).
function filterPanel(inputs, search, turn, info, exportLink) {
  return h("div", { class: "panel" },
    h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); search(); } },
      Object.entries(inputs).map(([k, el]) => h("label", {}, k.replace("_id", ""), el)),
      h("button", { type: "submit" }, "Filter")),
    h("div", { class: "actions" }, h("button", { class: "secondary", onclick: () => turn(-1) }, "← Newer"),
      h("button", { class: "secondary", onclick: () => turn(1) }, "Older →"), info,
      h("span", {}, "Export: ", exportLink("csv"), " · ", exportLink("json"))));
}

function requestsPage(root) {
  const inputs = {
    model: h("input", { name: "model", placeholder: "model" }),
    node_id: h("select", { name: "node_id" }, h("option", { value: "" }, "any node")),
    status: h("input", { name: "status", placeholder: "status", size: 5, inputmode: "numeric" }),
    key_id: h("input", { name: "key_id", placeholder: "key id" }),
    user: h("input", { name: "user", placeholder: "user" }),
    since: h("input", { name: "since", type: "datetime-local" }),
    until: h("input", { name: "until", type: "datetime-local" }),
  };
  const PAGE = 50;
  let offset = 0;
  const body = h("tbody");
  const info = h("span", { class: "muted" });
  const detail = h("div");
  const query = () => {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) {
      if (!el.value) continue;
      q.set(k, k === "since" || k === "until" ? String(new Date(el.value).getTime() / 1000) : el.value.trim());
    }
    return q;
  };
  const exportLink = (format) => h("a", { href: "#", onclick: (e) => { e.preventDefault(); const q = query(); q.set("format", format); location.href = `/api/requests/export?${q}`; } }, format.toUpperCase());
  const load = async () => {
    const q = query(); q.set("limit", PAGE); q.set("offset", offset);
    const page = await api("GET", `/api/requests?${q}`);
    const of = page.total_exact === false ? `${page.total.toLocaleString()} or more` : page.total;
    info.textContent = page.total ? `${offset + 1}–${offset + page.data.length} of ${of}` : "no requests match";
    body.replaceChildren(...page.data.map((r) => h("tr", { class: "clickable", onclick: () => showDetail(r.id) },
      h("td", {}, fmt.time(r.ts)), h("td", {}, r.model), h("td", { class: "mono" }, r.node_id || "–"),
      h("td", {}, h("span", { class: r.status < 400 ? "status ready" : "status failed" }, r.status)),
      h("td", {}, fmt.ms(r.latency_ms)), h("td", {}, fmt.ms(r.ttft_ms)),
      h("td", {}, `${r.tokens_in ?? "–"} / ${r.tokens_out ?? "–"}`), h("td", { class: "mono" }, r.key_id || (r.user ? `user ${r.user}` : "–")))));
  };
  const showDetail = async (id) => {
    const r = await api("GET", `/api/requests/${id}`);
    detail.replaceChildren(h("div", { class: "panel" }, h("h2", {}, `Request ${r.request_id}`),
      h("table", {}, h("tbody", {}, Object.entries(r).filter(([k]) => !k.endsWith("_body")).map(([k, v]) =>
        h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, k === "ts" ? fmt.time(v) : v ?? "–"))))),
      ["request_body", "response_body"].map((k) => h("div", {}, h("h2", {}, k.replace("_", " ")),
        h("pre", { class: "logs" }, r[k] || "(not kept: start the router with --log-bodies to keep bodies)")))));
  };
  const search = () => { offset = 0; load().catch((err) => toast(err.message)); };
  const turn = (step) => { offset = Math.max(0, offset + step * PAGE); load(); };
  root.append(filterPanel(inputs, search, turn, info, exportLink),
  h("div", { class: "panel scroll" }, h("table", { "aria-label": "requests" },
    h("thead", {}, h("tr", {}, ["Time", "Model", "Node", "Status", "Latency", "TTFT", "Tokens in / out", "Key or user"].map((t) => h("th", {}, t)))), body)),
  detail);
  api("GET", "/api/nodes").then((nodes) => {
    for (const n of nodes.data) inputs.node_id.append(h("option", { value: n.id }, n.label || n.name));
  }).catch(() => {});
  search();
  return {};
}

function playgroundPage(root) {
  const model = h("select", { name: "model", "aria-label": "model" });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7, size: 4 });
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: 1, max: 8192, value: 64, size: 5 });
  const stream = h("input", { name: "stream", type: "checkbox", checked: true });
  const input = h("textarea", { name: "message", placeholder: "Ask something…" });
  const chat = h("div", { class: "chat", "aria-live": "polite" });
  const send = h("button", { type: "submit" }, "Send");
  const history = [];
  root.append(h("div", { class: "panel" },
    h("div", { class: "form-row" }, h("label", {}, "Model", model), h("label", {}, "Temperature", temperature),
      h("label", {}, "Max tokens", maxTokens), h("label", {}, stream, "Stream")),
    chat,
    h("form", { onsubmit: (e) => { e.preventDefault(); ask(); } }, input, h("div", { class: "actions" }, send,
      h("button", { type: "button", class: "secondary", onclick: () => { history.length = 0; chat.replaceChildren(); } }, "Clear")))));
  api("GET", "/v1/models").then((list) => {
    for (const m of list.data) model.append(h("option", { value: m.id }, m.id));
  }, (err) => toast(err.message));
  const ask = async () => {
    const text = input.value.trim();
    if (!text || !model.value) return;
    input.value = "";
    send.disabled = true;
    history.push({ role: "user", content: text });
    chat.append(h("div", { class: "msg user" }, text));
    const answer = h("div", {});
    const meta = h("div", { class: "meta" }, "…");
    chat.append(h("div", { class: "msg assistant" }, answer, meta));
    const started = performance.now();
    let first = null, tokens = 0, content = "";
    try {
      const body = { model: model.value, messages: history, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value), stream: stream.checked };
      if (stream.checked) body.stream_options = { include_usage: true };
      const response = await fetch("/v1/chat/completions", {
        method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": state.csrf || "" },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const err = await response.json().catch(() => null);
        throw new ApiError(response.status, err);
      }
      if (stream.checked) {
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
              const chunk = JSON.parse(line.slice(6));
              if (chunk.error) throw new Error(chunk.error.message);
              const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
              if (delta && delta.content) {
                if (first === null) first = performance.now();
                content += delta.content;
                answer.textContent = content;
                chat.scrollTop = chat.scrollHeight;
              }
              if (chunk.usage) tokens = chunk.usage.completion_tokens;
            }
          }
        }
      } else {
        const data = await response.json();
        first = performance.now();
        content = data.choices[0].message.content || "";
        answer.textContent = content;
        tokens = data.usage ? data.usage.completion_tokens : 0;
      }
      const total = (performance.now() - started) / 1000;
      const generating = first === null ? total : (performance.now() - first) / 1000;
      meta.textContent = `${tokens} tokens · first token ${fmt.ms(first === null ? null : first - started)} · ${fmt.num(tokens / Math.max(generating, 1e-3))} tokens/s · ${total.toFixed(2)} s`;
      history.push({ role: "assistant", content });
    } catch (err) {
      meta.textContent = "";
      answer.replaceChildren(h("span", { class: "error" }, err.message));
      history.pop();
    } finally { send.disabled = false; }
  };
  return {};
}

function keysPage(root) {
  const body = h("tbody");
  const created = h("div");
  const refresh = async () => {
    const keys = (await api("GET", "/api/keys")).data;
    body.replaceChildren(...keys.map((k) => h("tr", { "data-key": k.name },
      h("td", {}, k.name), h("td", { class: "mono" }, `${k.prefix}…`), h("td", {}, k.scopes.join(", ")),
      h("td", {}, fmt.time(k.created_at)), h("td", {}, k.expires_at ? fmt.time(k.expires_at) : "never"),
      h("td", {}, k.revoked_at ? h("span", { class: "status failed" }, "revoked") : h("span", { class: "status ready" }, "active")),
      h("td", {}, canWrite() && !k.revoked_at ? h("button", { class: "danger", onclick: () => confirm(`Revoke ${k.name}?`) && act(async () => { await api("DELETE", `/api/keys/${k.id}`); await refresh(); }, `revoked ${k.name}`) }, "Revoke") : null))));
  };
  if (canWrite()) {
    const name = h("input", { name: "key_name", placeholder: "name", required: true, maxlength: 200 });
    const scopes = ["api", "node", "admin"].map((s) => h("input", { type: "checkbox", value: s, checked: s === "api", "aria-label": s }));
    const days = h("input", { name: "expires_days", type: "number", min: 0, step: 1, placeholder: "days (empty: never)" });
    root.append(h("div", { class: "panel" }, h("h2", {}, "New key"), h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); create(); } },
      h("label", {}, "Name", name), scopes.map((box) => h("label", {}, box, box.value)), h("label", {}, "Expires in", days),
      h("button", { type: "submit" }, "Create")), created));
    const create = () => act(async () => {
      const body = { name: name.value, scopes: scopes.filter((b) => b.checked).map((b) => b.value) };
      if (days.value) body.expires_at = Date.now() / 1000 + Number(days.value) * 86400;
      const key = await api("POST", "/api/keys", body);
      created.replaceChildren(h("p", {}, "The key's secret, shown this once:"), h("div", { class: "secret", "data-secret": "" }, key.secret));
      name.value = "";
      await refresh();
    });
  }
  root.append(h("div", { class: "panel scroll" }, h("table", { "aria-label": "keys" },
    h("thead", {}, h("tr", {}, ["Name", "Prefix", "Scopes", "Created", "Expires", "State", ""].map((t) => h("th", {}, t)))), body)));
  refresh().catch((err) => toast(err.message));
  return {};
}

function usersPage(root) {
  const body = h("tbody");
  const refresh = async () => {
    const users = (await api("GET", "/api/users")).data;
    body.replaceChildren(...users.map((u) => h("tr", { "data-user": u.username },
      h("td", {}, u.sso ? `${u.username} (single sign-on)` : u.username), h("td", {}, u.role), h("td", {}, fmt.time(u.created_at)),
      h("td", {}, canWrite() ? h("div", { class: "actions" },
        h("button", { class: "secondary", onclick: () => act(async () => { await api("PATCH", `/api/users/${encodeURIComponent(u.username)}`, { role: u.role === "admin" ? "viewer" : "admin" }); await refresh(); }, "role changed") }, u.role === "admin" ? "Make viewer" : "Make admin"),
        u.sso ? null : h("button", { class: "secondary", onclick: () => { const p = prompt(`New password for ${u.username} (8 or more characters)`); if (p) act(() => api("PATCH", `/api/users/${encodeURIComponent(u.username)}`, { password: p }), "password set"); } }, "Reset password"),
        h("button", { class: "danger", onclick: () => confirm(`Delete ${u.username}?`) && act(async () => { await api("DELETE", `/api/users/${encodeURIComponent(u.username)}`); await refresh(); }, "deleted") }, "Delete")) : null))));
  };
  if (state.me.user && !state.me.user.sso) {
    const current = h("input", { type: "password", name: "current_password", autocomplete: "current-password", placeholder: "current password" });
    const next = h("input", { type: "password", name: "new_password", autocomplete: "new-password", placeholder: "new password" });
    root.append(h("div", { class: "panel" }, h("h2", {}, `My password (${state.me.user.username})`),
      h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); act(async () => {
        const me = await api("POST", "/api/auth/password", { current_password: current.value, new_password: next.value });
        state.csrf = me.csrf_token; current.value = ""; next.value = "";
      }, "password changed; other sessions are logged out"); } }, current, next, h("button", { type: "submit" }, "Change"))));
  }
  if (canWrite()) {
    const username = h("input", { name: "new_username", placeholder: "user name", required: true });
    const password = h("input", { name: "new_user_password", type: "password", placeholder: "password (8+)", required: true, autocomplete: "new-password" });
    const role = h("select", { name: "role" }, h("option", { value: "viewer" }, "viewer"), h("option", { value: "admin" }, "admin"));
    root.append(h("div", { class: "panel" }, h("h2", {}, "New user"), h("form", { class: "form-row", onsubmit: (e) => { e.preventDefault(); act(async () => {
      await api("POST", "/api/users", { username: username.value, password: password.value, role: role.value });
      username.value = ""; password.value = ""; await refresh();
    }, "user created"); } }, username, password, role, h("button", { type: "submit" }, "Create"))));
  }
  root.append(h("div", { class: "panel scroll" }, h("table", { "aria-label": "users" },
    h("thead", {}, h("tr", {}, ["User", "Role", "Created", ""].map((t) => h("th", {}, t)))), body)));
  refresh().catch((err) => toast(err.message));
  return {};
}

function logLine(l) {
  return h("div", { class: l.level }, `${new Date(l.ts * 1000).toLocaleTimeString()} ${l.level.toUpperCase().padEnd(7)} ${l.logger} [${l.request_id}] ${l.msg}`);
}

function logsPage(root) {
  const source = h("select", { name: "source", "aria-label": "source" }, h("option", { value: "" }, "router"));
  const level = h("select", { name: "level", "aria-label": "level" }, ["debug", "info", "warning", "error"].map((l) => h("option", { value: l, selected: l === "info" }, l)));
  const follow = h("input", { type: "checkbox", checked: true, "aria-label": "follow" });
  const out = h("div", { class: "logs" });
  root.append(h("div", { class: "panel" }, h("div", { class: "form-row" }, h("label", {}, "Source", source), h("label", {}, "Level", level),
    h("label", {}, follow, "follow (every 5 s)")), out));
  for (const n of state.nodes) source.append(h("option", { value: n.id }, n.label || n.name));
  api("GET", "/api/nodes").then((nodes) => {
    source.replaceChildren(h("option", { value: "" }, "router"), ...nodes.data.map((n) => h("option", { value: n.id }, n.label || n.name)));
  }).catch(() => {});
  let after = 0;
  const load = async (fresh) => {
    if (fresh) { after = 0; out.replaceChildren(); }
    const path = source.value ? `/api/nodes/${encodeURIComponent(source.value)}/logs` : "/api/logs";
    try {
      const lines = (await api("GET", `${path}?limit=500&level=${level.value}&after=${after}`)).data;
      if (lines.length) after = lines[lines.length - 1].seq;
      out.append(...lines.map(logLine));
      out.scrollTop = out.scrollHeight;
    } catch (err) { out.append(h("div", { class: "error" }, err.message)); }
  };
  source.onchange = () => load(true);
  level.onchange = () => load(true);
  load(true);
  const timer = setInterval(() => follow.checked && load(false), 5000);
  return { leave: () => clearInterval(timer) };
}

function metricsPage(root) {
  const filter = h("input", { placeholder: "filter, e.g. llmlb_requests_total", size: 40, "aria-label": "filter" });
  const body = h("tbody");
  root.append(h("div", { class: "panel" }, h("p", { class: "muted" }, "The figures Prometheus scrapes from /metrics. A Grafana dashboard for them ships in the repository (docs/grafana/llmlb.json)."),
    h("div", { class: "form-row" }, filter, h("button", { class: "secondary", onclick: () => load() }, "Refresh"))),
  h("div", { class: "panel scroll" }, h("table", { "aria-label": "metrics" }, h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Value"))), body)));
  let samples = [];
  const show = () => {
    const f = filter.value.trim();
    body.replaceChildren(...samples.filter((s) => !f || s[0].includes(f)).slice(0, 2000).map(([name, value]) => h("tr", {}, h("td", { class: "mono" }, name), h("td", { class: "mono" }, value))));
  };
  const load = async () => {
    const response = await fetch("/metrics", { credentials: "same-origin" });
    const text = await response.text();
    samples = text.split("\n").filter((l) => l && !l.startsWith("#")).map((l) => { const i = l.lastIndexOf(" "); return [l.slice(0, i), l.slice(i + 1)]; });
    show();
  };
  filter.oninput = show;
  load().catch((err) => toast(err.message));
  return {};
}

// The audit trail: every change through the admin API, newest first (secrets never kept).
function auditPage(root) {
  const inputs = {
    user: h("input", { name: "user", placeholder: "user" }),
    key_id: h("input", { name: "key_id", placeholder: "key id" }),
    action: h("input", { name: "action", placeholder: "POST /api/keys", size: 24 }),
  };
  const PAGE = 50;
  let offset = 0;
  const body = h("tbody");
  const info = h("span", { class: "muted" });
  const query = () => {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) if (el.value.trim()) q.set(k, el.value.trim());
    return q;
  };
  const exportLink = (format) => h("a", { href: "#", onclick: (e) => { e.preventDefault(); const q = query(); q.set("format", format); location.href = `/api/audit/export?${q}`; } }, format.toUpperCase());
  const load = async () => {
    const q = query(); q.set("limit", PAGE); q.set("offset", offset);
    const page = await api("GET", `/api/audit?${q}`);
    info.textContent = page.total ? `${offset + 1}–${offset + page.data.length} of ${page.total}` : "no changes match";
    body.replaceChildren(...page.data.map((r) => h("tr", {},
      h("td", {}, fmt.time(r.ts)), h("td", { class: "mono" }, r.user ? `user ${r.user}` : r.key_id ? `key ${r.key_id}` : "loopback"),
      h("td", { class: "mono" }, r.source || "–"), h("td", { class: "mono" }, r.action),
      h("td", {}, h("span", { class: r.status < 400 ? "status ready" : "status failed" }, r.status)),
      h("td", { class: "mono" }, r.detail ? JSON.stringify(r.detail) : "–"))));
  };
  const search = () => { offset = 0; load().catch((err) => toast(err.message)); };
  const turn = (step) => { offset = Math.max(0, offset + step * PAGE); load(); };
  root.append(filterPanel(inputs, search, turn, info, exportLink),
  h("div", { class: "panel scroll" }, h("table", { "aria-label": "audit" },
    h("thead", {}, h("tr", {}, ["Time", "Who", "From", "Change", "Result", "Detail"].map((t) => h("th", {}, t)))), body)));
  search();
  return {};
}

const PAGE_BUILDERS = {
  overview: overviewPage, nodes: nodesPage, models: modelsPage, requests: requestsPage,
  playground: playgroundPage, keys: keysPage, users: usersPage, logs: logsPage, audit: auditPage,
  metrics: metricsPage,
};

// -- start ---------------------------------------------------------------------------------------

async function start() {
  theme();
  try {
    const me = await fetch("/api/auth/me", { credentials: "same-origin" });
    if (me.ok) {
      state.me = await me.json();
      state.csrf = state.me.csrf_token;
    }
  } catch { /* the router is unreachable: the login shows the error */ }
  if (!state.me) await login();
  else renderShell();
  if (state.me && state.me.open) {
    const banner = h("div", { class: "banner" }, "No accounts exist yet, so the dashboard is open to this machine (loopback) only. Create an admin with: llmlb users create NAME --role admin");
    document.getElementById("page").before(banner);
  }
}

start();
