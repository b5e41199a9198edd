// Monitoring: realised rolling RankIC and IC decay per version, drift per feature per
// day (heat map), latency, alerts with their state.
import { api, ApiError } from "../api.js";
import { alertsTable, fetchAlerts } from "../alerts.js";
import { line, plot, purge } from "../charts.js";
import { EventStream } from "../events.js";
import { modelChoices } from "../models.js";
import { sections, startPage } from "../page.js";
import { $, el, fmt, kpi, replace } from "../ui.js";

// The heat map asks the API for what it draws: the chosen window of days, the most
// drifting features (by the chosen measure), the ones added by name, and the rest as
// one summary row (their maximum per day).
const extra = new Set();
let modelId = null;
let drift = null;

function driftQuery() {
  const q = new URLSearchParams({ format: "matrix", measure: $("#drift-measure").value });
  if ($("#drift-days").value) q.set("days", $("#drift-days").value);
  if ($("#drift-top").value) q.set("top", $("#drift-top").value);
  for (const f of extra) q.append("feature", f);
  return q;
}

function drawMetrics(modelId, rows) {
  const live = rows.filter(r => (r.kind || "live") === "live");
  const x = live.map(r => r.date);
  const last = live[live.length - 1] || {};
  replace("#monitor-kpis",
    kpi("days evaluated", live.length, "days"), kpi("RankIC, 20-day", last.rank_ic_20, "rank_ic_20"),
    kpi("RankIC, 60-day", last.rank_ic_60, "rank_ic_60"), kpi("test RankIC", last.test_rank_ic, "test_rank_ic"),
    kpi("decay, 20-day", last.ic_decay_20, "ic_decay_20"), kpi("drift score", last.drift_score, "drift_score"));
  plot("ic-chart", [
    line(x, live.map(r => r.rank_ic), "daily RankIC", { mode: "markers", marker: { size: 4, color: "#98a2b3" } }),
    line(x, live.map(r => r.rank_ic_20), "rolling 20"), line(x, live.map(r => r.rank_ic_60), "rolling 60"),
    line(x, live.map(r => r.test_rank_ic), "test RankIC", { line: { dash: "dash", color: "#444" } }),
  ], { title: { text: modelId } });
  plot("decay-chart", [line(x, live.map(r => r.ic_decay_20), "decay 20"),
                       line(x, live.map(r => r.ic_decay_60), "decay 60")],
       { shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#999" } }] });
  plot("drift-score-chart", [line(x, live.map(r => r.drift_score), "drift score"),
    line(x, live.map(r => r.drifting_features), "drifting features", { yaxis: "y2" })],
    { yaxis: { title: "score", range: [0, 1] },
      yaxis2: { title: "features", overlaying: "y", side: "right" } });
  plot("latency-chart", [line(x, live.map(r => r.p99_ms), "p99 ms", { connectgaps: false }),
    { type: "bar", x, y: live.map(r => r.requests), name: "requests", yaxis: "y2", opacity: 0.3 }],
    { yaxis: { title: "p99 ms" }, yaxis2: { title: "requests", overlaying: "y", side: "right" } });
}

function drawDrift() {
  const m = drift.measure.toUpperCase();
  const features = [...drift.features].reverse();            // the most drifting on top
  const z = [...drift.z].reverse();
  const y = [...features];
  if (drift.rest.features) {
    y.unshift(`${drift.rest.features} others (max)`);
    z.unshift(drift.rest.max);
  }
  replace("#drift-note", `(${m}: ${drift.features.length} of ${drift.features_total} ` +
                         `features, the most drifting first; the last ${drift.dates.length} of ` +
                         `${drift.days_total} days)`);
  plot("drift-heatmap", [{ type: "heatmap", x: drift.dates, y, z, colorscale: "YlOrRd",
    colorbar: { title: m } }],
    { height: Math.max(320, 14 * y.length + 80), margin: { l: 130, r: 20, t: 10, b: 40 },
      hovermode: "closest" });
  const shown = new Set(drift.features);
  replace("#drift-add", el("option", { value: "" }, "–"),
    drift.ranking.filter(r => !shown.has(r.feature)).map(r =>
      el("option", { value: r.feature }, `${r.feature} (max ${m} ${fmt(r.max, 3)})`)));
}

async function loadDrift() {
  const id = modelId;
  const answer = await api(`/api/monitoring/drift/${id}?${driftQuery()}`);
  if (id !== modelId) return;                                 // another version was picked
  drift = answer;
  drawDrift();
}

// A version the monitor has not evaluated yet: the API's 404 says so; show its words.
async function orMissing(work, where) {
  try {
    await work();
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    for (const id of where) { purge(id); replace("#" + id, el("p", { class: "muted" }, String(err.detail))); }
  }
}

async function load(id) {
  modelId = id;
  extra.clear();
  await sections([
    () => orMissing(async () => drawMetrics(id, (await api(`/api/monitoring/models/${id}/metrics`)).rows),
                    ["monitor-kpis", "ic-chart", "decay-chart", "drift-score-chart", "latency-chart"]),
    () => orMissing(loadDrift, ["drift-heatmap"]),
  ]);
}

const redrawDrift = () => orMissing(loadDrift, ["drift-heatmap"]);

async function alerts() {
  replace("#alerts", alertsTable(await fetchAlerts(), { onAck: alerts }));
}

startPage(async () => {
  const select = $("#monitor-model");
  select.addEventListener("change", () => load(select.value));
  for (const id of ["#drift-measure", "#drift-days", "#drift-top"]) {
    $(id).addEventListener("change", redrawDrift);
  }
  $("#drift-add").addEventListener("change", (e) => {
    if (!e.target.value) return;
    extra.add(e.target.value);
    redrawDrift();
  });
  await sections([alerts, async () => {                       // alerts beside the versions
    const choices = await modelChoices();
    replace(select, choices.map(c => el("option", { value: c.model_id }, c.label)));
    if (choices.length) await load(select.value);
  }]);
  new EventStream({ types: ["alert_raised", "alert_resolved"] })
    .on("alert_raised", () => alerts()).on("alert_resolved", () => alerts());
});
