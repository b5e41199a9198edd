// Explain: global mean |SHAP| per feature, the feature families' impact, and the local
// waterfall of one prediction (base value + each feature's contribution = prediction).
import { api } from "../api.js";
import { hbars, plot } from "../charts.js";
import { modelChoices } from "../models.js";
import { startPage } from "../page.js";
import { $, el, kpi, replace } from "../ui.js";

const TOP = 20;
const WATERFALL_TOP = 15;

async function drawGlobal(modelId) {
  const g = await api(`/api/explain/${modelId}`);
  replace("#explain-kpis", kpi("rows explained", g.rows, "rows"), kpi("base value", g.base_value, "base"),
          el("div", { class: "kpi" }, el("div", { class: "value" }, g.method),
             el("div", { class: "label" }, "method")));
  const items = Object.entries(g.importance).slice(0, TOP).reverse();
  plot("global-chart", [hbars(items.map(([k]) => k), items.map(([, v]) => v), "mean |SHAP|")],
       { height: 16 * items.length + 80, margin: { l: 110, r: 10, t: 10, b: 30 },
         hovermode: "closest", showlegend: false });
  const groups = Object.entries(g.groups).sort((a, b) => a[1] - b[1]);
  plot("groups-chart", [hbars(groups.map(([k]) => k), groups.map(([, v]) => v), "impact",
                              { marker: { color: "#b35900" } })],
       { height: Math.max(260, 24 * groups.length + 80), margin: { l: 140, r: 10, t: 10, b: 30 },
         hovermode: "closest", showlegend: false });
}

export function waterfall(local, top = WATERFALL_TOP) {
  const items = Object.entries(local.values).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const shown = items.slice(0, top);
  const rest = items.slice(top).reduce((s, [, v]) => s + v, 0);
  const x = ["base value", ...shown.map(([k]) => k), ...(items.length > top ? [`${items.length - top} others`] : []), "prediction"];
  const y = [local.base_value, ...shown.map(([, v]) => v), ...(items.length > top ? [rest] : []), local.prediction];
  const measure = ["absolute", ...shown.map(() => "relative"), ...(items.length > top ? ["relative"] : []), "total"];
  return [{ type: "waterfall", x, y, measure, orientation: "v",
            connector: { line: { color: "#999" } },
            increasing: { marker: { color: "#1a7f37" } }, decreasing: { marker: { color: "#c62828" } },
            totals: { marker: { color: "#2458c6" } } }];
}

async function drawLocal(modelId) {
  const instrument = $("#local-instrument").value, date = $("#local-date").value;
  if (!instrument || !date) return;
  const local = await api(`/api/explain/${modelId}/local`, { method: "POST", body: { instrument, date } });
  const sum = local.base_value + Object.values(local.values).reduce((s, v) => s + v, 0);
  replace("#local-kpis", kpi("prediction", local.prediction, "prediction"),
          kpi("base value", local.base_value, "base"), kpi("base + Σ SHAP", sum, "sum"));
  plot("local-waterfall", waterfall(local), { hovermode: "closest", showlegend: false,
       xaxis: { tickangle: -45 }, margin: { l: 60, r: 10, t: 20, b: 110 }, height: 380 });
}

startPage(async () => {
  const [choices, catalog] = await Promise.all([modelChoices(), api("/api/features")]);
  replace("#explain-model", choices.map(c => el("option", { value: c.model_id }, c.label)));
  const instruments = catalog.instruments || [];
  replace("#local-instrument", instruments.map(i => el("option", { value: i }, i)));
  const model = () => $("#explain-model").value;
  $("#explain-model").addEventListener("change", () => Promise.all([drawGlobal(model()), drawLocal(model())]));
  $("#local-form").addEventListener("submit", (e) => { e.preventDefault(); drawLocal(model()); });
  const chosen = choices[0];
  if (!chosen) return;
  // default: the last day of the version's test segment, from its lineage
  const segments = JSON.parse((chosen.tags || {})["lineage.segments"] || "{}");
  $("#local-date").value = (segments.test || [])[1] || "";
  await Promise.all([drawGlobal(model()), drawLocal(model())]);
});
