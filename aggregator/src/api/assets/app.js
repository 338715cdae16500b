// selfheal incidents page: plain DOM code, no framework and no build step. Everything shown is
// set with textContent (never innerHTML), so label values from the fleet cannot inject markup.
"use strict";

const REFRESH_MS = 10000;
const main = document.getElementById("main");
const statusEl = document.getElementById("status");

function el(tag, attrs, ...kids) {
  const ns = tag === "svg" || tag === "polyline" || tag === "line" || tag === "circle" || tag === "title";
  const e = ns ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function fmtTime(ms) {
  if (ms === null || ms === undefined || !isFinite(ms) || Math.abs(ms) > 8.64e15) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function fmtAge(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function sev(s) { return el("span", { class: "sev " + s }, s); }
function mutedText(m) {
  if (!m) return null;
  return m.kind === "silence" ? "silenced by " + m.id : "inhibited by " + m.rule + " (" + m.by + ")";
}

// Writes need the API token (incidents.api_token_file); asked once and kept for this tab only.
const TOKEN_KEY = "selfheal-api-token";
async function api(path, opts) {
  const write = opts && opts.method && opts.method !== "GET";
  for (let attempt = 0; ; attempt++) {
    const headers = { "content-type": "application/json" };
    const token = write ? sessionStorage.getItem(TOKEN_KEY) : null;
    if (token) headers["authorization"] = "Bearer " + token;
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    const body = await r.json().catch(() => ({}));
    if (write && r.status === 401 && attempt === 0) {
      const t = prompt("API token (the aggregator's incidents.api_token_file):");
      if (!t) throw new Error(body.error || "a token is needed");
      sessionStorage.setItem(TOKEN_KEY, t.trim());
      continue;
    }
    if (write && r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return body;
  }
}

function setStatus(text, bad) {
  statusEl.textContent = text;
  statusEl.className = "status" + (bad ? " error" : "");
}

const FILTERS = ["state", "severity", "namespace", "workload", "family", "since", "until"];

function withParam(params, key, value) {
  const p = new URLSearchParams(params);
  if (p.get(key) === value) p.delete(key); else p.set(key, value);
  p.delete("after");
  return "/incidents" + (p.toString() ? "?" + p : "");
}

async function listView() {
  const params = new URLSearchParams(location.search);
  const q = new URLSearchParams();
  for (const k of FILTERS.concat(["limit", "after"])) if (params.get(k)) q.set(k, params.get(k));
  const data = await api("/api/v1/incidents?" + q);
  const counts = el("div", { class: "counts", id: "counts" });
  for (const [state, n] of Object.entries(data.counts.by_state)) {
    counts.append(el("a", { class: "chip" + (params.get("state") === state ? " on" : ""), href: withParam(params, "state", state), "data-state": state }, state + " " + n));
  }
  for (const [s, n] of Object.entries(data.counts.by_severity)) {
    counts.append(el("a", { class: "chip" + (params.get("severity") === s ? " on" : ""), href: withParam(params, "severity", s), "data-severity": s }, sev(s), " " + n));
  }
  const form = el("form", { class: "filters", method: "get", action: "/incidents" });
  for (const k of FILTERS) {
    form.append(el("label", {}, k, el("input", { name: k, value: params.get(k) || "", size: k === "workload" ? 24 : 12, placeholder: k === "since" || k === "until" ? "RFC 3339" : "" })));
  }
  form.append(el("button", { type: "submit" }, "Filter"), el("a", { href: "/incidents" }, "clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const k of FILTERS) { const v = form.elements[k].value.trim(); if (v) p.set(k, v); }
    history.pushState(null, "", "/incidents" + (p.toString() ? "?" + p : ""));
    render();
  });
  const rows = data.incidents.map((i) => el("tr", { "data-id": i.id },
    el("td", {}, el("a", { href: "/incidents/" + i.id }, i.id)),
    el("td", {}, i.state),
    el("td", {}, sev(i.severity)),
    el("td", {}, i.family),
    el("td", {}, i.labels.namespace || "", i.labels.namespace ? "/" : "", i.labels.workload || i.labels.node || ""),
    el("td", {}, String(i.anomaly_count)),
    el("td", {}, i.pod_count + " pods · " + i.node_count + " nodes"),
    el("td", {}, i.peak.score.toFixed(3) + " / " + i.peak.threshold.toFixed(3)),
    el("td", {}, fmtAge(i.updated_at_ms, data.now_ms)),
    el("td", { class: "muted-by" }, mutedText(i.muted) || "")));
  const table = el("table", { id: "incidents" },
    el("thead", {}, el("tr", {}, ["id", "state", "severity", "family", "workload / node", "anomalies", "affected", "peak / threshold", "updated", "muted"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  const more = data.next ? el("p", {}, el("a", { href: "/incidents?" + new URLSearchParams(Object.assign(Object.fromEntries(params), { after: data.next })) }, "next page →")) : null;
  main.replaceChildren(el("h1", {}, "Incidents"), counts, await efficacyView(), form,
    rows.length ? table : el("p", { class: "muted", id: "empty" }, "No incident matches."), more);
}

// Healing's efficacy per playbook (share of verified actions that healed); nothing when
// healing is off or nothing was verified yet.
async function efficacyView() {
  let eff;
  try { eff = await api("/api/v1/heal/efficacy"); } catch (_) { return el("span", {}); }
  const chips = Object.entries(eff.playbooks || {}).map(([name, e]) =>
    el("span", { class: "chip", "data-playbook": name }, name + " " + (e.share === null ? "–" : Math.round(e.share * 100) + " %") + " (" + e.healed + "/" + (e.healed + e.not_healed) + " healed)"));
  return chips.length ? el("div", { class: "counts", id: "efficacy" }, el("span", { class: "muted" }, "healing efficacy: "), ...chips) : el("span", {});
}

function sparkline(series, w, h) {
  const svg = el("svg", { class: "spark", id: "sparkline", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": "score against threshold" });
  if (!series.length) return svg;
  const t0 = series[0].ts_ms, t1 = series[series.length - 1].ts_ms;
  const vals = series.flatMap((p) => [p.score, p.threshold]).filter(isFinite);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const pad = 4;
  const x = (t) => pad + (t1 === t0 ? (w - 2 * pad) / 2 : (t - t0) / (t1 - t0) * (w - 2 * pad));
  const y = (v) => h - pad - (v - lo) / (hi - lo) * (h - 2 * pad);
  const pts = (f) => series.map((p) => x(p.ts_ms).toFixed(1) + "," + y(f(p)).toFixed(1)).join(" ");
  svg.append(
    el("polyline", { points: pts((p) => p.threshold), fill: "none", stroke: "#98a2b3", "stroke-dasharray": "4 3", "stroke-width": "1", class: "threshold" }, el("title", {}, "threshold")),
    el("polyline", { points: pts((p) => p.score), fill: "none", stroke: "#d92d20", "stroke-width": "1.5", class: "score" }, el("title", {}, "score")));
  if (series.length === 1) svg.append(el("circle", { cx: x(t0), cy: y(series[0].score), r: 2.5, fill: "#d92d20" }));
  return svg;
}

function actionText(r) {
  const t = r.target.namespace + "/" + r.target.kind + "/" + r.target.name;
  const a = r.action;
  switch (a.kind) {
    case "scale": return "scale " + t + " " + a.from + " → " + a.to + " replicas";
    case "rollout_restart": return "rollout restart " + t;
    case "delete_pod": return "delete pod " + a.pod + " of " + t;
    case "set_hpa_min_replicas": return "set HPA " + a.hpa + " minReplicas " + a.from + " → " + a.to + " (" + t + ")";
    default: return a.kind + " " + t;
  }
}

function describe(ev) {
  const k = ev.kind;
  switch (k.type) {
    case "opened": return "opened";
    case "anomalies": return "+" + k.added + " anomalies (" + k.pods + " pods, " + k.nodes + " nodes; peak " + k.peak_score.toFixed(3) + " vs " + k.threshold.toFixed(3) + ")";
    case "state_changed": return k.from + " → " + k.to;
    case "severity_changed": return "severity " + k.from + " → " + k.to + " (score " + k.score.toFixed(2) + ")";
    case "muted": return mutedText(k.by);
    case "unmuted": return "no longer " + mutedText(k.was);
    case "notified": return "notification: " + k.reason;
    case "notification_suppressed": return "notification " + k.reason + " held back: " + mutedText(k.by);
    case "heal_decided": return "heal: " + k.playbook + ": " + k.decision;
    case "heal_refused": return "heal refused by " + k.guardrail + ": " + k.reason + (k.retry_at_ms ? " (again at " + fmtTime(k.retry_at_ms) + ")" : "");
    case "action_intent": return (k.dry_run ? "dry-run: would " : "") + actionText(k.request) + " via " + k.executor + " [" + k.request_id + "]";
    case "action_applied": return "applied [" + k.request_id + "]: " + k.outcome.detail;
    case "action_failed": return "failed [" + k.request_id + "]: " + k.error.kind + ": " + k.error.message;
    case "verification_started": return "verifying [" + k.request_id + "] until " + fmtTime(k.until_ms);
    case "verified": return "verification [" + k.request_id + "]: " + (k.healed ? "healed" : "not healed") + ": " + k.detail;
    default: return k.type;
  }
}

async function act(id, what) {
  const by = prompt("Your name (recorded on the timeline):");
  if (!by) return;
  const comment = prompt("Comment (optional):") || "";
  try { await api("/api/v1/incidents/" + id + "/" + what, { method: "POST", body: JSON.stringify({ by, comment }) }); }
  catch (e) { alert(e.message); }
  render();
}

async function incidentView(id) {
  const data = await api("/api/v1/incidents/" + encodeURIComponent(id));
  const i = data.incident;
  const dl = el("dl", { class: "grid" });
  const fig = (k, v) => dl.append(el("div", {}, el("dt", {}, k), el("dd", {}, v)));
  fig("state", i.state + (i.acknowledged_by ? " (by " + i.acknowledged_by + ")" : ""));
  fig("severity", [sev(i.severity), " score " + i.severity_score.toFixed(2)]);
  fig("grouping key", i.key);
  fig("first seen", fmtTime(i.first_seen_ms));
  fig("last seen", fmtTime(i.last_seen_ms));
  fig("anomalies", String(i.anomaly_count));
  fig("peak score / threshold", i.peak.score.toFixed(3) + " / " + i.peak.threshold.toFixed(3));
  fig("latest score / threshold", i.latest.score.toFixed(3) + " / " + i.latest.threshold.toFixed(3));
  fig("model versions", i.model_versions.join(", "));
  fig("top features", i.features.slice(0, 5).map((f) => f.name + " ×" + f.count).join(", "));
  fig("notifications sent", String(i.notify.sent));
  if (i.muted) fig("muted", mutedText(i.muted));
  const buttons = el("p", {});
  if (i.state === "open" || i.state === "escalated") buttons.append(el("button", { id: "ack", onclick: () => act(i.id, "ack") }, "Acknowledge"), " ");
  if (i.state !== "resolved") buttons.append(el("button", { id: "resolve", onclick: () => act(i.id, "resolve") }, "Resolve"), " ");
  if (i.state !== "resolved") buttons.append(el("a", { href: "/silences?matchers=" + encodeURIComponent("key=" + i.key) }, "Silence…"));
  const timeline = el("ol", { class: "timeline", id: "timeline" }, data.events.map((e) =>
    el("li", {}, el("time", {}, fmtTime(e.at_ms)), el("span", { class: "tag" }, e.actor.kind === "person" ? e.actor.name : e.actor.kind), describe(e), e.cause && e.kind.type !== "anomalies" ? el("span", { class: "muted" }, " — " + e.cause) : null)));
  main.replaceChildren(
    el("p", {}, el("a", { href: "/incidents" }, "← incidents")),
    el("h1", {}, i.family + " · " + (i.labels.namespace ? i.labels.namespace + "/" : "") + (i.labels.workload || i.labels.node || i.key)),
    buttons, dl,
    el("h2", {}, "Score against threshold"), sparkline(i.series, 600, 90),
    el("h2", {}, "Affected"),
    el("p", {}, i.pod_count + " pods, " + i.node_count + " nodes"),
    el("div", { class: "grid" },
      el("div", {}, el("h3", {}, "Pods"), el("ul", { id: "pods" }, i.pods.map((p) => el("li", {}, p)))),
      el("div", {}, el("h3", {}, "Nodes"), el("ul", { id: "nodes" }, i.nodes.map((n) => el("li", {}, n))))),
    el("h2", {}, "Timeline"), timeline);
}

async function silencesView() {
  const params = new URLSearchParams(location.search);
  const list = await api("/api/v1/silences");
  const form = el("form", { class: "filters", id: "new-silence" },
    el("label", {}, "matchers (comma separated)", el("input", { name: "matchers", size: 40, value: params.get("matchers") || "" })),
    el("label", {}, "hours", el("input", { name: "hours", size: 4, value: "2" })),
    el("label", {}, "by", el("input", { name: "by", size: 10 })),
    el("label", {}, "comment", el("input", { name: "comment", size: 30 })),
    el("button", { type: "submit" }, "Create silence"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      await api("/api/v1/silences", { method: "POST", body: JSON.stringify({
        matchers: f.matchers.value.split(",").map((s) => s.trim()).filter(Boolean),
        duration_secs: parseFloat(f.hours.value) * 3600, created_by: f.by.value, comment: f.comment.value }) });
      history.pushState(null, "", "/silences");
    } catch (e) { alert(e.message); }
    render();
  });
  const rows = list.map((s) => el("tr", {},
    el("td", {}, s.id), el("td", {}, s.state),
    el("td", {}, s.matchers.map((m) => m.name + m.op + m.value).join(", ")),
    el("td", {}, fmtTime(s.starts_at_ms) + " → " + fmtTime(s.ends_at_ms)),
    el("td", {}, s.created_by), el("td", {}, s.comment),
    el("td", {}, s.state !== "expired" ? el("button", { onclick: async () => {
      const by = prompt("Your name:"); if (!by) return;
      try { await api("/api/v1/silences/" + encodeURIComponent(s.id) + "?by=" + encodeURIComponent(by), { method: "DELETE" }); } catch (e) { alert(e.message); }
      render(); } }, "Expire") : "")));
  main.replaceChildren(el("h1", {}, "Silences"), form,
    el("table", { id: "silences" }, el("thead", {}, el("tr", {}, ["id", "state", "matchers", "when", "by", "comment", ""].map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
}

let timer = null;
async function render() {
  clearTimeout(timer);
  const path = location.pathname;
  try {
    const m = path.match(/^\/incidents\/([0-9a-f]{20})$/);
    if (m) await incidentView(m[1]);
    else if (path === "/silences") await silencesView();
    else await listView();
    setStatus("updated " + new Date().toLocaleTimeString(), false);
  } catch (e) {
    setStatus("refresh failed: " + e.message, true);
  }
  // A page with a half-typed form is not refreshed under the user's hands.
  timer = setTimeout(() => {
    if (document.activeElement && document.activeElement.tagName === "INPUT") { timer = setTimeout(render, REFRESH_MS); return; }
    render();
  }, REFRESH_MS);
}

window.addEventListener("popstate", render);
render();
