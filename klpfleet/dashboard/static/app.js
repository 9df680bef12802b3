// klpfleet dashboard: reads the JSON API, follows /api/events (server-sent events) and redraws what changed.
// Everything from the database is inserted as text (textContent), never as HTML.
"use strict";

const config = JSON.parse(document.body.dataset.config || "{}");
let selectedRollout = null;
let selectedHost = null;
let selectedWave = null;
let selectedCve = null;
let refreshTimer = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = el("td");
      td.appendChild(cell);
      tr.appendChild(td);
    } else {
      tr.appendChild(el("td", cell === null || cell === undefined ? "" : cell));
    }
  }
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows.map(row));
}

function pairs(obj) {
  return Object.entries(obj || {}).map(([k, v]) => `${k} ${v}`).join(", ");
}

// Event details as people read them: key=value, nested values flattened; a kernel log (or any long list) folded
// under its name with its length, opened on a click.
function details(obj) {
  const box = el("span", null, "details");
  const plain = [];
  for (const [key, value] of Object.entries(obj || {})) {
    if (Array.isArray(value) && value.length && (key === "kernel_log" || value.length > 3)) {
      const fold = el("details");
      fold.append(el("summary", `${key} (${value.length} ${key === "kernel_log" ? "lines" : "items"})`));
      fold.append(el("pre", value.map((v) => (typeof v === "object" ? flat(v) : String(v))).join("\n")));
      box.append(fold);
    } else {
      plain.push(`${key}=${typeof value === "object" && value !== null ? flat(value) : value}`);
    }
  }
  box.prepend(el("span", plain.join(", ")));
  return box;
}

function flat(value) {
  if (Array.isArray(value)) return `[${value.map(flat).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${k}=${flat(v)}`).join(", ")}}`;
  }
  return String(value);
}

// Every view has an address (#/rollouts/7, #/hosts/web-01): it survives a reload and can be pasted elsewhere.
function link(text, address) {
  const a = el("a", text);
  a.href = address;
  return a;
}

function rolloutAddress(id) {
  return `#/rollouts/${id}`;
}

function hostAddress(name) {
  return `#/hosts/${encodeURIComponent(name)}`;
}

function cveAddress(cve) {
  return `#/cves/${encodeURIComponent(cve)}`;
}

function badge(id, text) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.className = `badge ${text}`;
}

class NeedsToken extends Error {}

async function getJSON(url) {
  // With a token configured, reads carry the session cookie /api/session set (same-origin fetches send it).
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (response.status === 401) throw new NeedsToken(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// The exposure lines move slowly: fetched once a minute, not on every event.
let historyCache = { at: 0, data: {} };

async function cveHistory() {
  if (Date.now() - historyCache.at > 60000) historyCache = { at: Date.now(), data: await getJSON("/api/cves/history") };
  return historyCache.data;
}

async function loadStatus() {
  const s = await getJSON("/api/status");
  badge("health", s.health);
  document.getElementById("hosts-total").textContent = s.hosts.total;
  document.getElementById("hosts-unreachable").textContent = s.hosts.unreachable;
  document.getElementById("attention-total").textContent = s.attention.total;
  document.getElementById("reboot-total").textContent = s.reboot_required ? s.reboot_required.total : 0;
  document.getElementById("hosts-summary").textContent =
    `${s.hosts.total} hosts, ${s.hosts.reachable} reachable`;
  fill("patches", s.patches.map((p) => [p.name, p.kernel_release, pairs(p.states)]));
  fill(
    "blocked",
    (s.blocked_patches || []).map((b) => [b.patch, b.blocked_at, b.blocked_by, b.reason, `${b.running_on} hosts`]),
  );
  const history = await cveHistory();
  fill(
    "cves",
    (s.cves || []).map((c) => [
      link(c.cve, cveAddress(c.cve)),
      c.covered,
      c.exposed,
      c.unknown,
      pairs(c.exposed_by_reason),
      chart(history[c.cve] || []),
    ]),
  );
  fill("kernels", Object.entries(s.hosts.by_kernel_release).map(([k, v]) => [k, v]));
  fill(
    "attention",
    s.attention.hosts.map((a) => [link(a.host, hostAddress(a.host)), a.patch, a.state, a.reason, a.error_code]),
  );
}

async function loadRollouts() {
  const rows = await getJSON("/api/rollouts");
  fill(
    "rollouts",
    rows.map((r) => [
      link(`#${r.id}`, rolloutAddress(r.id)),
      r.patch,
      el("span", r.status, `badge ${r.status}`),
      r.hosts,
      `${r.current_wave || "-"}/${r.waves}`,
      r.pause_reason,
    ]),
  );
}

// How a wave host counts (as klpfleet.states.counted_as): its outcome once it has one, else its status.
function countedAs(h) {
  return (h.status === "done" || h.status === "running") && h.outcome ? h.outcome : h.status;
}

const ORDER = ["applied", "rolled_back", "running", "pending", "refused", "stalled", "failed", "unreachable", "health_failed"];

// A bar with a segment per outcome: a wave with a refusal and a stall is never a full green bar.
function bar(outcomes, done, total) {
  const outer = el("span", null, "bar");
  const keys = Object.keys(outcomes).sort((a, b) => ORDER.indexOf(a) - ORDER.indexOf(b));
  for (const key of keys) {
    const part = el("span", null, `seg-${key}`);
    part.style.width = `${total ? (100 * outcomes[key]) / total : 0}%`;
    part.title = `${key} ${outcomes[key]}`;
    outer.appendChild(part);
  }
  const wrap = el("span");
  wrap.append(outer, el("span", ` ${done}/${total}`));
  return wrap;
}

// Exposure over time (from the audit trail): covered hosts in green, exposed in red, oldest on the left.
function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 160;
  const height = 28;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "chart");
  if (!points.length) return el("span", "no state change recorded yet", "muted");
  const top = Math.max(1, ...points.map((p) => p.covered + p.exposed));
  for (const [key, cls] of [["covered", "line-covered"], ["exposed", "line-exposed"]]) {
    const line = document.createElementNS(ns, "polyline");
    const xy = points.map((p, i) => {
      const x = points.length > 1 ? (i * (width - 2)) / (points.length - 1) + 1 : width / 2;
      const y = height - 1 - ((height - 2) * p[key]) / top;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    line.setAttribute("points", xy.join(" "));
    line.setAttribute("class", cls);
    svg.appendChild(line);
  }
  const last = points[points.length - 1];
  const title = document.createElementNS(ns, "title");
  title.textContent = `now: ${last.covered} covered, ${last.exposed} exposed (${points.length} points since ${points[0].at})`;
  svg.appendChild(title);
  svg.dataset.covered = points.map((p) => p.covered).join(",");
  return svg;
}

// Each wave's hosts as a row of cells coloured by state; a cell opens its host.
function grid(waves) {
  const box = document.getElementById("grid");
  box.replaceChildren(
    ...waves.map((w) => {
      const line = el("div", null, "wave");
      line.append(el("b", `wave ${w.index + 1}`));
      for (const h of w.hosts) {
        const state = countedAs(h);
        const cell = link("", hostAddress(h.host));
        cell.className = `cell seg-${state}`;
        cell.title = `${h.host}: ${state}${h.error_code ? ` (${h.error_code})` : ""}`;
        cell.dataset.host = h.host;
        cell.dataset.state = state;
        line.append(cell);
      }
      return line;
    }),
  );
}

async function showRollout(id) {
  selectedRollout = id;
  const r = await getJSON(`/api/rollouts/${id}`);
  document.getElementById("rollout").hidden = false;
  document.getElementById("rollout-title").textContent = `Rollout ${r.id}: ${r.patch} (${r.selector || "all"})`;
  badge("rollout-status", r.status);
  document.getElementById("actions").hidden = !config.actions;
  document.getElementById("rollout-reason").textContent = r.pause_reason ? `${r.status}: ${r.pause_reason}` : "";
  fill(
    "waves",
    r.waves.map((w) => {
      const done = w.hosts.filter((h) => h.status === "done" || h.status === "rolled_back").length;
      return [
        link(w.index + 1, `${rolloutAddress(id)}/waves/${w.index + 1}`),
        w.domain,
        el("span", w.status, `badge ${w.status}`),
        bar(w.outcomes, done, w.hosts.length),
        pairs(w.outcomes),
        w.transition ? `${w.transition.p50}s / ${w.transition.p95}s / ${w.transition.max}s` : "",
        w.analysis ? el("span", w.analysis.result, `badge ${w.analysis.result}`) : "",
      ];
    }),
  );
  // Each check's latest measurement per wave (what Prometheus answered, or the wave's transition times).
  fill(
    "analysis",
    r.waves.flatMap((w) =>
      Object.entries((w.analysis && w.analysis.checks) || {}).map(([name, m]) => [
        w.index + 1,
        name,
        el("span", m.result, `badge ${m.result}`),
        m.value === null || m.value === undefined ? "" : String(m.value),
        m.control === null || m.control === undefined ? "" : String(m.control),
        m.reason,
      ]),
    ),
  );
  grid(r.waves);
  if (selectedWave !== null) highlightWave(selectedWave);
  const flying = r.waves.flatMap((w) => w.hosts.filter((h) => h.status === "running").map((h) => h.host));
  document.getElementById("in-flight").textContent = flying.length
    ? `in flight (${flying.length}): ${flying.join(", ")}`
    : "";
  const problems = r.waves.flatMap((w) =>
    w.hosts.filter((h) => h.outcome && h.outcome !== "applied"),
  );
  fill(
    "problems",
    problems.map((h) => [link(h.host, hostAddress(h.host)), h.outcome, h.error_code, h.attempts, h.held_by]),
  );
  fill(
    "preflight",
    (r.preflight || []).map((v) => [
      link(v.host, hostAddress(v.host)),
      v.excluded ? "left out" : "planned",
      el("span", v.verdict, `badge ${v.verdict}`),
      v.klp_error,
      v.reasons.join("; "),
    ]),
  );
}

async function showCve(cve) {
  selectedCve = cve;
  const c = await getJSON(`/api/cves/${encodeURIComponent(cve)}`);
  document.getElementById("cve").hidden = false;
  const n = c.counts;
  document.getElementById("cve-title").textContent =
    `${c.cve}: ${n.covered} covered, ${n.exposed} exposed, ${n.unknown} unknown`;
  const rows = [];
  for (const kind of ["exposed", "unknown", "covered"]) {
    for (const h of c.hosts[kind]) {
      rows.push([link(h.host, hostAddress(h.host)), el("span", kind, `badge ${kind}`), h.kernel_release, h.reason, h.patch]);
    }
  }
  fill("cve-hosts", rows);
}

function highlightWave(number) {
  document.querySelectorAll("#waves tbody tr, #grid .wave").forEach((node) => node.classList.remove("selected"));
  const row = document.querySelectorAll("#waves tbody tr")[number - 1];
  const cells = document.querySelectorAll("#grid .wave")[number - 1];
  for (const node of [row, cells]) if (node) node.classList.add("selected");
  return row;
}

async function showHost(name) {
  selectedHost = name;
  const h = await getJSON(`/api/hosts/${encodeURIComponent(name)}`);
  document.getElementById("host").hidden = false;
  document.getElementById("host-title").textContent =
    `Host ${h.name}: ${h.kernel_release || "kernel unknown"}${h.reachable === false ? " (unreachable)" : ""}`;
  fill(
    "host-patches",
    h.patches.map((p) => [p.patch, p.state, p.error_code, p.errno, p.refused_object, p.observed_at]),
  );
  fill("host-events", h.events.map((e) => [e.at, e.kind, details(e.details)]));
  fill(
    "host-functions",
    (h.functions || []).map((f) => [f.object, `${f.function},${f.sympos}`, f.in_effect, f.patches.join(" > "), f.stack_order_source]),
  );
  document.getElementById("host-reboot").textContent = (h.reboot_required || []).length
    ? `owes a reboot: ${h.reboot_required.map((r) => r.why).join("; ")}`
    : "";
  // Who held a transition back, and where it sleeps: the top of its stack names the patched function.
  const stalled = h.patches.flatMap((p) => (p.stalled_tasks || []).map((t) => [p.patch, t.pid, t.comm, (t.stack || []).slice(0, 4).join(" < ")]));
  document.getElementById("host-stalled-section").hidden = !stalled.length;
  fill("host-stalled", stalled);
  // Events come newest first: the first one of each patch that carries kernel log lines is its last result.
  const seen = new Set();
  const lines = [];
  for (const e of h.events) {
    const log = e.details && e.details.kernel_log;
    if (e.patch && log && !seen.has(e.patch)) {
      seen.add(e.patch);
      lines.push(`# ${e.patch} (${e.at})`, ...log);
    }
  }
  document.getElementById("host-kernel-log").textContent = lines.join("\n") || "(no kernel log lines recorded)";
}

function addEvent(e) {
  const body = document.querySelector("#events tbody");
  body.prepend(
    row([
      e.at,
      e.actor,
      e.kind,
      e.host ? link(e.host, hostAddress(e.host)) : "",
      e.patch,
      e.rollout ? link(`#${e.rollout}`, rolloutAddress(e.rollout)) : "",
      details(e.details),
    ]),
  );
  while (body.children.length > 200) body.lastChild.remove();
}

let refreshing = false;
let refreshAgain = false;

async function refresh() {
  // One redraw at a time, in order: a late answer to an earlier redraw never overwrites a newer one.
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    do {
      refreshAgain = false;
      await Promise.all([loadStatus(), loadRollouts()]);
      if (selectedRollout !== null) await showRollout(selectedRollout);
      if (selectedHost !== null) await showHost(selectedHost);
      if (selectedCve !== null) await showCve(selectedCve);
    } while (refreshAgain);
  } finally {
    refreshing = false;
  }
}

function refreshSoon() {
  // Many events arrive at once during a wave: one redraw for them all.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 300);
}

function follow() {
  const source = new EventSource("/api/events");
  const live = document.getElementById("live");
  source.addEventListener("open", () => {
    live.textContent = "live";
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting…";
  });
  source.addEventListener("klp", (message) => {
    const e = JSON.parse(message.data);
    addEvent(e);
    refreshSoon();
  });
}

async function act(action) {
  const result = document.getElementById("action-result");
  const response = await fetch(`/api/rollouts/${selectedRollout}/${action}`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${document.getElementById("token").value}`,
      "X-CSRF-Token": config.csrf || "",
    },
  });
  const body = await response.json();
  result.textContent = response.ok ? `${action}: ${body.status}` : `${action} refused: ${body.error}`;
  refreshSoon();
}

document.querySelectorAll("#actions button").forEach((button) => {
  button.addEventListener("click", () => act(button.dataset.action));
});

function needToken() {
  document.getElementById("login").hidden = false;
  document.getElementById("live").textContent = "needs the token";
}

// The address says what is open: #/rollouts/ID, #/rollouts/ID/waves/N, #/hosts/NAME, #/cves/CVE-ID.
async function route() {
  const match = location.hash.match(/^#\/(rollouts|hosts|cves)\/([^/]+)(?:\/waves\/(\d+))?$/);
  if (!match) return;
  if (match[1] === "rollouts" && /^\d+$/.test(match[2])) {
    selectedWave = match[3] ? Number(match[3]) : null;
    await showRollout(Number(match[2]));
    const row = selectedWave !== null ? highlightWave(selectedWave) : null;
    (row || document.getElementById("rollout")).scrollIntoView();
  } else if (match[1] === "hosts") {
    await showHost(decodeURIComponent(match[2]));
    document.getElementById("host").scrollIntoView();
  } else if (match[1] === "cves") {
    await showCve(decodeURIComponent(match[2]));
    document.getElementById("cve").scrollIntoView();
  }
}

window.addEventListener("hashchange", () => route().catch(() => {}));

async function start() {
  const session = await getJSON("/api/session");
  if (!session.authorized) return needToken();
  Promise.all([loadStatus(), loadRollouts(), route()]).then(follow, (error) => {
    if (!(error instanceof NeedsToken)) throw error;
    needToken();
  });
}

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/session", {
    method: "POST",
    headers: { Authorization: `Bearer ${document.getElementById("login-token").value}` },
  });
  if (!response.ok) {
    document.getElementById("login-result").textContent = "wrong token";
    return;
  }
  document.getElementById("login").hidden = true;
  start();
});

start();
