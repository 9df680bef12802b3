// klpfleet dashboard: reads the JSON API, follows /api/events (server-sent events) and redraws what changed.
// Everything from the database is inserted as text (textContent), never as HTML.
"use strict";

const config = JSON.parse(document.body.dataset.config || "{}");
let selectedRollout = null;
let selectedHost = null;
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

function details(obj) {
  const td = el("span", obj && Object.keys(obj).length ? JSON.stringify(obj) : "", "details");
  return td;
}

function link(text, onClick) {
  const a = el("a", text);
  a.addEventListener("click", onClick);
  return a;
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

async function loadStatus() {
  const s = await getJSON("/api/status");
  badge("health", s.health);
  document.getElementById("hosts-total").textContent = s.hosts.total;
  document.getElementById("hosts-unreachable").textContent = s.hosts.unreachable;
  document.getElementById("attention-total").textContent = s.attention.total;
  document.getElementById("hosts-summary").textContent =
    `${s.hosts.total} hosts, ${s.hosts.reachable} reachable`;
  fill("patches", s.patches.map((p) => [p.name, p.kernel_release, pairs(p.states)]));
  fill("cves", (s.cves || []).map((c) => [c.cve, c.covered, c.exposed, c.unknown, pairs(c.exposed_by_reason)]));
  fill("kernels", Object.entries(s.hosts.by_kernel_release).map(([k, v]) => [k, v]));
  fill(
    "attention",
    s.attention.hosts.map((a) => [link(a.host, () => showHost(a.host)), a.patch, a.state, a.reason, a.error_code]),
  );
}

async function loadRollouts() {
  const rows = await getJSON("/api/rollouts");
  fill(
    "rollouts",
    rows.map((r) => [
      link(`#${r.id}`, () => showRollout(r.id)),
      r.patch,
      el("span", r.status, `badge ${r.status}`),
      r.hosts,
      `${(r.current_wave || 0) + 1}/${r.waves}`,
      r.pause_reason,
    ]),
  );
}

function bar(done, total) {
  const outer = el("span", null, "bar");
  const inner = el("span");
  inner.style.width = `${total ? Math.round((100 * done) / total) : 0}%`;
  outer.appendChild(inner);
  const wrap = el("span");
  wrap.append(outer, el("span", ` ${done}/${total}`));
  return wrap;
}

async function showRollout(id) {
  selectedRollout = id;
  const r = await getJSON(`/api/rollouts/${id}`);
  document.getElementById("rollout").hidden = false;
  document.getElementById("rollout-title").textContent = `Rollout ${r.id}: ${r.patch} (${r.selector || "all"})`;
  badge("rollout-status", r.status);
  document.getElementById("actions").hidden = !config.actions;
  fill(
    "waves",
    r.waves.map((w) => {
      const done = w.hosts.filter((h) => h.status === "done" || h.status === "rolled_back").length;
      return [w.index + 1, w.domain, w.status, bar(done, w.hosts.length), pairs(w.outcomes)];
    }),
  );
  const flying = r.waves.flatMap((w) => w.hosts.filter((h) => h.status === "running").map((h) => h.host));
  document.getElementById("in-flight").textContent = flying.length
    ? `in flight (${flying.length}): ${flying.join(", ")}`
    : r.pause_reason
      ? `paused: ${r.pause_reason}`
      : "";
  const problems = r.waves.flatMap((w) =>
    w.hosts.filter((h) => h.outcome && h.outcome !== "applied"),
  );
  fill("problems", problems.map((h) => [link(h.host, () => showHost(h.host)), h.outcome, h.error_code, h.attempts]));
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
    row([e.at, e.actor, e.kind, e.host ? link(e.host, () => showHost(e.host)) : "", e.patch, e.rollout, details(e.details)]),
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

async function start() {
  const session = await getJSON("/api/session");
  if (!session.authorized) return needToken();
  Promise.all([loadStatus(), loadRollouts()]).then(follow, (error) => {
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
