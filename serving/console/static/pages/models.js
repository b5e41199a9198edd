// Models: search and filter the registry, compare up to four versions (metrics, the
// long-short equity curves, feature importance), start a training run from a form
// built from the model type's defaults (operator) and follow it live.
import { api, applyRole } from "../api.js";
import { bars, line, plot } from "../charts.js";
import { EventStream } from "../events.js";
import { sections, startPage } from "../page.js";
import { openLive, showReport } from "../training.js";
import { $, badge, el, fmt, notice, replace, table } from "../ui.js";

const MAX_COMPARE = 4;
const selected = new Set();
let types = [];

// -- registry -----------------------------------------------------------------
function query() {
  const q = new URLSearchParams();
  for (const [id, key] of [["search-name", "name"], ["search-state", "state"],
                           ["search-metric", "metric"], ["search-min", "min_value"]]) {
    const v = $("#" + id).value.trim();
    if (v) q.set(key, v);
  }
  const tag = $("#search-tag").value.trim();
  if (tag) q.set("tag", tag);
  return q.toString();
}

async function search() {
  const q = query();
  const models = (await api("/api/models" + (q ? "?" + q : ""))).models || [];
  replace("#model-list", table(models, [
    ["model_id", "", id => el("input", { type: "checkbox", "data-compare": id, checked: selected.has(id),
      onchange: (e) => toggle(id, e.target) })],
    ["model_id", "model"], ["state", "state", v => badge(v)],
    ["tags", "type", t => (t || {}).model_type || "–"],
    ["tags", "data version", t => (t || {})["lineage.data_version"] ?? "–"],
    ["metrics", "test RankIC", m => fmt((m || {}).test_rank_ic)],
    ["metrics", "test IC", m => fmt((m || {}).test_ic)],
    ["metrics", "test L/S Sharpe", m => fmt((m || {}).test_ls_sharpe, 2)],
    ["feature_set", "feature set"],
    ["model_id", "", id => el("button", { type: "button", class: "secondary", "data-report": id,
      onclick: () => report(id) }, "Report")],
  ], { empty: "no model matches" }));
}

function toggle(id, box) {
  if (box.checked && selected.size >= MAX_COMPARE) {
    box.checked = false;
    notice(`compare at most ${MAX_COMPARE} models`);
    return;
  }
  box.checked ? selected.add(id) : selected.delete(id);
  $("#compare-button").disabled = selected.size < 2;
  replace("#compare-note", selected.size ? [...selected].join(", ") : "pick up to four");
}

async function report(id) {
  showReport(await api(`/api/models/${id}/training-report`), id);
}

// -- compare ------------------------------------------------------------------
async function compare() {
  const ids = [...selected];
  const c = await api(`/api/models/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
  const versions = c.versions || [];
  $("#compare-card").hidden = false;
  const metricRows = (c.metrics || []).map(n => Object.fromEntries([["metric", n],
    ...versions.map(v => [v.model_id, v.metrics[n]]), ["best", (c.best || {})[n]]]));
  const paramRows = (c.params_differing || []).map(n => Object.fromEntries([["metric", `param: ${n}`],
    ...versions.map(v => [v.model_id, v.params[n]]), ["best", ""]]));
  replace("#compare-metrics", table([...metricRows, ...paramRows],
    [["metric", "metric"], ...versions.map(v => [v.model_id, v.model_id]), ["best", "best"]]));
  // Equity curves and importance come from each version's training report.
  const reports = await Promise.all(versions.map(v => api(`/api/models/${v.model_id}/training-report`)));
  const withCurves = reports.map((r, i) => [versions[i].model_id, (r.backtest || {}).test])
    .filter(([, bt]) => bt && bt.dates);
  if (withCurves.length) {
    plot("compare-equity", withCurves.map(([id, bt]) => line(bt.dates, wealth(bt.returns), id)),
         { title: { text: "long-short equity, test segment" }, yaxis: { title: "wealth" } });
  } else {
    replace("#compare-equity", el("p", { class: "muted" },
      "the training reports hold no daily long-short series yet"));
  }
  const top = [...new Set(reports.flatMap(r => Object.entries(r.feature_importance || {})
    .sort((a, b) => b[1] - a[1]).slice(0, 10).map(([k]) => k)))];
  plot("compare-importance", reports.map((r, i) => bars(top, top.map(f => (r.feature_importance || {})[f] ?? 0),
    versions[i].model_id)), { title: { text: "feature importance (top 10 of each)" }, barmode: "group",
    hovermode: "closest", xaxis: { tickangle: -45 }, margin: { l: 50, r: 10, t: 30, b: 90 } });
  $("#compare-card").scrollIntoView({ block: "start" });
}

function wealth(returns) {
  let w = 1;
  return returns.map(r => (w *= 1 + (Number(r) || 0)));
}

// -- training ------------------------------------------------------------------
function drawParams() {
  const t = types.find(x => x.model_type === $("#train-type").value);
  $("#train-name").placeholder = `stock-${t.model_type}`;
  replace("#train-params", el("thead", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "value"),
                                               el("th", {}, "meaning"))),
    el("tbody", {}, t.parameters.map(p => el("tr", {},
      el("td", {}, el("label", { for: `param-${p.name}` }, p.name)),
      el("td", {}, p.type === "boolean"
        ? el("select", { id: `param-${p.name}`, "data-param": p.name, "data-type": p.type },
             el("option", { value: "true", selected: p.default === true }, "true"),
             el("option", { value: "false", selected: p.default === false }, "false"))
        : el("input", { id: `param-${p.name}`, "data-param": p.name, "data-type": p.type,
                        "data-default": String(p.default), value: String(p.default),
                        type: p.type === "string" ? "text" : "number",
                        step: p.type === "integer" ? "1" : "any" })),
      el("td", { class: "muted" }, p.meaning)))));
}

function overrides() {
  const out = {};
  for (const input of document.querySelectorAll("#train-params [data-param]")) {
    const t = input.dataset.type, raw = input.value;
    const value = t === "boolean" ? raw === "true" : t === "integer" ? parseInt(raw, 10)
      : t === "number" ? Number(raw) : raw;
    const def = types.find(x => x.model_type === $("#train-type").value).parameters
      .find(p => p.name === input.dataset.param).default;
    if (value !== def) out[input.dataset.param] = value;
  }
  return out;
}

function drawSegments() {
  replace("#train-segments", ["train", "valid", "test"].map(s => el("div", {},
    el("label", {}, s), el("input", { type: "date", "data-segment": s, "data-end": "0", "aria-label": `${s} from` }),
    el("input", { type: "date", "data-segment": s, "data-end": "1", "aria-label": `${s} to` }))));
}

function segments() {
  const out = {};
  for (const s of ["train", "valid", "test"]) {
    const [a, b] = [...document.querySelectorAll(`[data-segment="${s}"]`)].map(i => i.value);
    if (a || b) out[s] = [a, b];
  }
  return Object.keys(out).length ? out : undefined;
}

async function startTraining(ev) {
  ev.preventDefault();
  const type = $("#train-type").value;
  const name = $("#train-name").value.trim() || `stock-${type}`;
  try {
    const run = await api(`/api/models/${encodeURIComponent(name)}/training/start`, { method: "POST",
      body: { model_type: type, params: overrides(), segments: segments() } });
    notice(`training queued: job ${run.job_id}, run ${run.run_id}`);
    openLive(run);
    await jobs();
  } catch (err) {
    notice(String(err.message || err), "error");
  }
}

// A queued job as the live view needs it (its training metadata).
function runOf(job) {
  const m = job.metadata || {};
  return { job_id: job.id, run_id: m.run_id, model: m.model, model_type: m.model_type,
           events_offset: m.events_offset, state: job.state };
}

async function jobs() {
  const list = ((await api("/api/jobs?limit=50")).jobs || []).filter(j => j.type === "train");
  replace("#train-jobs", table(list, [["id", "job"], ["metadata", "registers as", m => m.model],
    ["metadata", "type", m => m.model_type], ["state", "state", v => badge(v)],
    ["priority", "priority"], ["submitted_at", "queued", v => fmtTime(v)],
    ["id", "", (id, j) => el("button", { type: "button", class: "secondary", "data-watch": id,
      onclick: () => openLive(runOf(j)) }, "Watch")]], { empty: "no training jobs yet" }));
}

function fmtTime(t) {
  return typeof t === "number" ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : fmt(t);
}

startPage(async () => {
  $("#model-search").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("#compare-button").addEventListener("click", compare);
  $("#train-form").addEventListener("submit", startTraining);
  await sections([search, jobs, async () => {
    types = (await api("/api/model-types")).model_types;
    replace("#train-type", types.map(t => el("option", { value: t.model_type },
      `${t.model_type} (${t.family}${t.sequence ? ", sequence" : ""})`)));
    $("#train-type").addEventListener("change", drawParams);
    drawParams();
    drawSegments();
  }]);
  applyRole();
  new EventStream({ types: ["model_registered"] }).on("model_registered", (ev) => {
    notice(`registered ${ev.name}/${ev.version}`);
    search();
    jobs();
  });
});
