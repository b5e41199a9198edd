// Monitoring: realised rolling RankIC and IC decay per version, drift per feature per
// day (heat map), latency, alerts with their state.
import { api, ApiError } from "../api.js";
import { alertsTable, fetchAlerts } from "../alerts.js";
import { line, plot, purge } from "../charts.js";
import { EventStream } from "../events.js";
import { modelChoices } from "../models.js";
import { sections, startPage } from "../page.js";
import { $, el, kpi, replace } from "../ui.js";

const TOP_FEATURES = 30;
const DRIFT_DAYS = 120;
let driftRows = [];

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
  const measure = $("#drift-measure").value;
  const byFeature = new Map();
  const days = [...new Set(driftRows.map(r => r.date))].sort();
  for (const r of driftRows) {
    if (!byFeature.has(r.feature)) byFeature.set(r.feature, new Map());
    byFeature.get(r.feature).set(r.date, r[measure]);
  }
  const ranked = [...byFeature.entries()].map(([f, m]) => [f, Math.max(...[...m.values()]
    .filter(Number.isFinite))]).sort((a, b) => b[1] - a[1]).slice(0, TOP_FEATURES);
  const features = ranked.map(([f]) => f).reverse();
  replace("#drift-note", `(${measure.toUpperCase()}, the ${features.length} most drifting of ` +
                         `${byFeature.size} features, ${days.length} days)`);
  plot("drift-heatmap", [{ type: "heatmap", x: days, y: features, colorscale: "YlOrRd",
    z: features.map(f => days.map(d => byFeature.get(f).get(d) ?? null)),
    colorbar: { title: measure.toUpperCase() } }],
    { height: Math.max(320, 14 * features.length + 80), margin: { l: 110, r: 20, t: 10, b: 40 },
      hovermode: "closest" });
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

async function load(modelId) {
  await sections([
    () => orMissing(async () => {
      const rows = (await api(`/api/monitoring/models/${modelId}/metrics`)).rows;
      drawMetrics(modelId, rows);
      // the heat map covers the last DRIFT_DAYS evaluated days (every feature, every day)
      const days = [...new Set(rows.map(r => r.date))].sort();
      const since = days[Math.max(0, days.length - DRIFT_DAYS)];
      await orMissing(async () => {
        driftRows = (await api(`/api/monitoring/drift/${modelId}` + (since ? `?since=${since}` : ""))).rows;
        drawDrift();
      }, ["drift-heatmap"]);
    }, ["monitor-kpis", "ic-chart", "decay-chart", "drift-score-chart", "latency-chart", "drift-heatmap"]),
    alerts,
  ]);
}

async function alerts() {
  replace("#alerts", alertsTable(await fetchAlerts(), { onAck: alerts }));
}

startPage(async () => {
  const select = $("#monitor-model");
  const choices = await modelChoices();
  replace(select, choices.map(c => el("option", { value: c.model_id }, c.label)));
  select.addEventListener("change", () => load(select.value));
  $("#drift-measure").addEventListener("change", drawDrift);
  if (choices.length) await load(select.value);
  else await alerts();
  new EventStream({ types: ["alert_raised", "alert_resolved"] })
    .on("alert_raised", () => alerts()).on("alert_resolved", () => alerts());
});
