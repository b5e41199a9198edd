// Features: one stock's price with its indicators overlaid and its Alpha158 values
// over time; recalculate (a queued job); the feature set's definition.
import { api } from "../api.js";
import { EventStream } from "../events.js";
import { line, plot } from "../charts.js";
import { sections, startPage } from "../page.js";
import { $, badge, el, fmt, notice, replace, table } from "../ui.js";

// Which indicator columns go on the price axis, and which under it.
const OVERLAYS = {
  SMA: /^sma_\d+$/, EMA: /^ema_\d+$/, Bollinger: /^bb_(upper|mid|lower)$/, SAR: /^sar$/, VWAP: /^vwap_\d+$/,
};
const OSCILLATORS = /^(rsi_\d+|stoch_[kd]|willr_\d+)$/;
const DEFAULT_DAYS = 250;          // without dates: the last trading year
let catalog = null;
let frame = [];
const shown = new Set(["SMA", "Bollinger"]);

function column(name) { return frame.map(r => r[name]); }

function drawPrice() {
  const x = column("date");
  const cols = Object.keys(frame[0] || {});
  const traces = [frame[0] && frame[0].open !== undefined
    ? { type: "candlestick", x, open: column("open"), high: column("high"), low: column("low"),
        close: column("close"), name: "price", increasing: { line: { width: 1 } },
        decreasing: { line: { width: 1 } } }
    : line(x, column("close"), "close", { line: { color: "#1d2330" } })];
  for (const [family, re] of Object.entries(OVERLAYS)) {
    if (!shown.has(family)) continue;
    for (const c of cols.filter(c => re.test(c))) {
      traces.push(family === "SAR" ? line(x, column(c), c, { mode: "markers", marker: { size: 3 } })
                                   : line(x, column(c), c, { line: { width: 1 } }));
    }
  }
  plot("price-chart", traces, { height: 420, xaxis: { rangeslider: { visible: false } },
                                yaxis: { title: "adjusted price" } });
  const osc = cols.filter(c => OSCILLATORS.test(c));
  plot("oscillator-chart", osc.map(c => line(x, column(c), c, { line: { width: 1 } })),
       { height: 220, yaxis: { title: "oscillators" } });
}

function drawToggles() {
  replace("#overlay-toggles", Object.keys(OVERLAYS).map(f => el("label", { class: "row" },
    el("input", { type: "checkbox", checked: shown.has(f), "data-overlay": f,
                  onchange: (e) => { e.target.checked ? shown.add(f) : shown.delete(f); drawPrice(); } }),
    f)));
}

function drawAlpha() {
  const names = catalog.features.filter(f => f.source === "alpha158").map(f => f.name)
    .filter(n => frame.length && n in frame[0]);
  const pick = $("#alpha-pick");
  if (!pick.options.length) {
    replace(pick, names.map(n => el("option", { value: n }, n)));
    pick.value = names.includes("ROC5") ? "ROC5" : names[0];
  }
  const x = column("date");
  plot("alpha-line", [line(x, column(pick.value), pick.value)], { height: 240 });
  // every factor at once, each scaled to its own z-score over the window
  const z = names.map(n => {
    const v = column(n).map(Number);
    const ok = v.filter(Number.isFinite);
    const m = ok.reduce((s, a) => s + a, 0) / (ok.length || 1);
    const sd = Math.sqrt(ok.reduce((s, a) => s + (a - m) ** 2, 0) / (ok.length || 1)) || 1;
    return v.map(a => (Number.isFinite(a) ? (a - m) / sd : null));
  });
  plot("alpha-heatmap", [{ type: "heatmap", x, y: names, z, zmin: -3, zmax: 3, colorscale: "RdBu",
                           reversescale: true, colorbar: { title: "z" } }],
       { height: 900, margin: { l: 80, r: 20, t: 10, b: 40 }, hovermode: "closest",
         yaxis: { tickfont: { size: 8 } } });
}

async function load() {
  const stock = $("#feature-stock").value;
  const q = new URLSearchParams();
  if ($("#feature-start").value) q.set("start", $("#feature-start").value);
  if ($("#feature-end").value) q.set("end", $("#feature-end").value);
  else if (!$("#feature-start").value) q.set("limit", DEFAULT_DAYS);
  const data = await api(`/api/features/${encodeURIComponent(stock)}?${q}`);
  const prices = new Map((data.bars || []).map(b => [b.date, b]));
  frame = (data.records || []).map(r => ({ ...(prices.get(r.date) || {}), ...r }));
  replace("#price-note", `${stock}: ${frame.length} days, features version ${fmt(data.features_version)}` +
                         `, data version ${fmt(data.data_version)}`);
  drawPrice();
  drawAlpha();
}

function drawCatalog() {
  const needle = $("#catalog-filter").value.trim().toLowerCase();
  const rows = catalog.features.filter(f => !needle || f.name.toLowerCase().includes(needle)
    || String(f.family).toLowerCase().includes(needle) || String(f.source).includes(needle));
  replace("#catalog", table(rows, [["name", "feature"], ["source", "source"], ["family", "family"],
    ["calculation", "calculation", v => el("code", {}, String(v))],
    ["dependencies", "reads", v => (v || []).join(", ")], ["lookback", "look-back (rows)"],
    ["update_frequency", "updated"]]));
}

async function recalculate() {
  const stock = $("#feature-stock").value;
  try {
    const job = await api("/api/features/calculate", { method: "POST",
                                                     body: { incremental: true, instruments: [stock] } });
    const id = job.job_id;
    replace("#recalc-status", "job ", el("code", {}, id), " ", badge(job.state || "queued"));
    notice(`recalculation queued as job ${id}`);
    await follow(id);
  } catch (err) {
    notice(String(err.message || err), "error");
  }
}

async function follow(id) {
  for (;;) {
    const job = await api(`/api/jobs/${id}`);
    replace("#recalc-status", "job ", el("code", {}, id), " ", badge(job.state));
    if (["succeeded", "failed", "stopped", "cancelled"].includes(job.state)) {
      if (job.state === "succeeded") await load();
      return;
    }
    await new Promise(r => setTimeout(r, 1000));
  }
}

startPage(async () => {
  catalog = await api("/api/features");
  replace("#feature-set-id", `${catalog.feature_set} (${catalog.features.length} features)`);
  const stocks = catalog.instruments || [];
  replace("#feature-stock", stocks.map(s => el("option", { value: s }, s)));
  drawToggles();
  drawCatalog();
  $("#catalog-filter").addEventListener("input", drawCatalog);
  $("#features-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  $("#alpha-pick").addEventListener("change", drawAlpha);
  $("#recalculate").addEventListener("click", recalculate);
  new EventStream({ types: ["features_updated"] }).on("features_updated",
    (ev) => notice(`features updated: version ${ev.features_version}, ${ev.rows} rows`));
  if (stocks.length) await sections([load]);
});
