// Dashboard: active models and their split, training jobs, predictions per hour,
// cluster load, active alerts; deployments changing and alerts firing arrive over
// the WebSocket and redraw their panel without a reload.
import { api } from "../api.js";
import { bars, plot } from "../charts.js";
import { alertsTable, fetchAlerts } from "../alerts.js";
import { EventStream } from "../events.js";
import { startPage } from "../page.js";
import { badge, el, fields, fmt, kpi, notice, pct, replace, table } from "../ui.js";

function time(t) {
  if (typeof t === "number") return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
  return t ? String(t).replace("T", " ").slice(0, 19) : "–";
}

export function drawDeployments(status) {
  const deps = status.deployments || [];
  replace("#deployment-summary", deps.map(d => el("div", { class: "deployment",
      dataset: { deployment: d.deployment, state: d.state, revision: d.revision } },
    el("div", { class: "row" }, el("strong", {}, d.deployment), badge(d.state),
       el("span", { class: "muted" }, `revision ${d.revision}, ${d.replicas} replica(s)`)),
    fields({ stable: d.stable, standby: d.standby, versions: (d.versions || []).join(", "),
             shadow: (d.shadow || []).join(", ") || "none" }),
    table(Object.entries(d.split || {}).map(([version, share]) => ({ version, share })),
          [["version", "version"], ["share", "share of traffic", v => pct(v)]],
          { empty: "nothing deployed", rowAttrs: r => ({ "data-split": r.version }) }))));
  const split = deps.flatMap(d => Object.entries(d.split || {}));
  plot("split-chart", [bars(split.map(([v]) => v), split.map(([, s]) => 100 * s), "split %")],
       { yaxis: { title: "% of traffic", range: [0, 100] }, height: 240, hovermode: "closest" });
  const history = deps.flatMap(d => (d.history || []).map(h => ({ ...h, deployment: d.deployment })))
    .sort((a, b) => b.time - a.time);
  replace("#deployment-history", table(history,
    [["time", "time", time], ["deployment", "deployment"], ["event", "event", v => badge(v)],
     ["detail", "detail"], ["split", "split", v => v ? Object.entries(v).map(
       ([k, s]) => `${k} ${pct(s)}`).join(", ") : "–"]], { empty: "no changes yet" }));
}

async function deployments() {
  const status = await api("/api/deployments");
  drawDeployments(status);
  const live = document.querySelector('[data-kpi="live"] .value');
  if (live) live.textContent = fmt(Object.keys(((status.deployments || [])[0] || {}).split || {}).length);
  return status;
}

async function jobs() {
  const list = ((await api("/api/jobs?limit=20")).jobs || []);
  replace("#dash-jobs", table(list.filter(j => j.type === "train"), [["id", "job"],
    ["metadata", "model", m => `${m.model || "–"} (${m.model_type || "?"})`],
    ["state", "state", v => badge(v)], ["submitted_at", "queued", time], ["ended_at", "ended", time]],
    { empty: "no training jobs" }));
  return list;
}

async function cluster() {
  const c = await api("/api/cluster");
  const cap = c.capacity || {};
  const used = c.used_by_queue || {};
  replace("#dash-cluster", fields({
    "CPUs (queue's capacity)": cap.cpus, "GPUs": cap.gpus,
    "CPUs used by queued jobs": used.cpus, "GPUs used by queued jobs": used.gpus,
    "CPU load": cap.cpus ? pct((used.cpus || 0) / cap.cpus) : "–",
    "jobs waiting": c.queued, "Ray dashboard": c.dashboard,
  }));
  return c;
}

async function perHour() {
  const p = await api("/api/monitoring/predictions?hours=24");
  const keys = [...new Set(p.rows.map(r => `${r.version} (${r.source})`))].sort();
  const hours = [...new Set(p.rows.map(r => r.hour))].sort();
  const count = new Map(p.rows.map(r => [`${r.hour}|${r.version} (${r.source})`, r.count]));
  plot("per-hour", keys.map(k => bars(hours, hours.map(h => count.get(`${h}|${k}`) || 0), k,
                                      { width: 3_240_000 })),
       { barmode: "stack", height: 260, yaxis: { title: "predictions" },
         xaxis: { type: "date", range: [p.since, new Date().toISOString()] } });
  return p.rows.reduce((s, r) => s + r.count, 0);
}

async function alerts() {
  const active = await fetchAlerts("?state=raised");
  replace("#dash-alerts", alertsTable(active, { onAck: alerts }));
  const count = document.querySelector('[data-kpi="alerts"] .value');
  if (count) count.textContent = fmt(active.length);
  return active;
}

function logEvent(ev) {
  const box = document.getElementById("dash-events");
  const what = ev.type === "deployment_changed"
    ? `${ev.deployment}: ${ev.state} (${Object.entries(ev.split || {}).map(([k, s]) => `${k} ${pct(s)}`).join(", ")}) ${ev.reason || ""}`
    : ev.type.startsWith("alert")
      ? `${ev.rule || ev.alert} ${ev.model ? ev.model + "/" + ev.version : ""}: ${fmt(ev.value)} vs ${fmt(ev.threshold)} ${ev.message || ""}`
      : ev.type === "model_registered" ? `${ev.name}/${ev.version}` : `${ev.model || ""} ${ev.stage || ""}`;
  box.prepend(el("div", { class: "row", dataset: { event: ev.type } },
                 el("span", { class: "muted" }, time(ev.time)), badge(ev.type), what));
}

startPage(async () => {
  const [status, jobList, c, predictions, active] = await Promise.all([
    deployments(), jobs(), cluster(), perHour(), alerts()]);
  const d = (status.deployments || [])[0] || {};
  replace("#dash-kpis", kpi("versions live", Object.keys(d.split || {}).length, "live"),
          kpi("predictions, last 24 h", predictions, "predictions"),
          kpi("active alerts", active.length, "alerts"),
          kpi("training jobs", jobList.filter(j => j.type === "train").length, "jobs"),
          kpi("jobs waiting", c.queued, "queued"));
  new EventStream({ types: ["deployment_changed", "alert_raised", "alert_resolved",
                            "model_registered"] })
    .on("deployment_changed", (ev) => { logEvent(ev); deployments(); })
    .on("alert_raised", (ev) => {
      logEvent(ev);
      notice(`alert: ${ev.rule || ev.alert} ${ev.message || ""}`, "error");
      alerts();
    })
    .on("alert_resolved", (ev) => { logEvent(ev); alerts(); })
    .on("model_registered", (ev) => { logEvent(ev); jobs(); });
});
