// The live training view and the training report, as modals any page can open.
import { api, applyRole } from "./api.js";
import { hbars, line, plot, purge } from "./charts.js";
import { EventStream } from "./events.js";
import { $, fields, fmt, modal, notice, replace, table } from "./ui.js";

const SMALL = { height: 260, margin: { l: 50, r: 10, t: 30, b: 40 } };

// -- training report -------------------------------------------------------
export function drawHistory(history, lossDiv, icDiv) {
  const h = history || [];
  const x = h.map(r => r.epoch ?? r.round);
  plot(lossDiv, [line(x, h.map(r => r.train_loss), "train loss"),
                 line(x, h.map(r => r.valid_loss), "valid loss")],
       { ...SMALL, title: { text: "loss" }, xaxis: { title: "epoch / round" } });
  plot(icDiv, [line(x, h.map(r => r.valid_ic), "valid IC", { line: { color: "#1a7f37" } })],
       { ...SMALL, title: { text: "validation IC" }, xaxis: { title: "epoch / round" } });
}

export function drawImportance(div, importance, top = 20, extra = {}) {
  const items = Object.entries(importance || {}).sort((a, b) => b[1] - a[1]).slice(0, top)
    .reverse();
  plot(div, [hbars(items.map(([k]) => k), items.map(([, v]) => v), "importance")],
       { height: Math.max(260, 16 * items.length + 60), margin: { l: 110, r: 10, t: 10, b: 30 },
         hovermode: "closest", showlegend: false, ...extra });
}

export function metricsTable(metrics) {
  const segments = Object.keys(metrics || {});
  const names = [...new Set(segments.flatMap(s => Object.keys(metrics[s])))];
  return table(names.map(n => Object.fromEntries([["metric", n],
    ...segments.map(s => [s, metrics[s][n]])])),
    [["metric", "metric"], ...segments.map(s => [s, s])]);
}

export function showReport(report, id) {
  const box = modal("training-report");
  replace("#report-id", id || report.run_id);
  const data = report.data || {};
  replace("#report-fields", fields({
    "run id": report.run_id, "model type": report.model_type, status: report.status,
    "registered as": report.registry ? `${report.registry.name}/${report.registry.version}` : "–",
    started: report.started_at, "duration (s)": report.duration_seconds,
    [`best ${report.iteration_unit || "epoch"}`]: report.best_epoch ?? report.best_round,
    [`${report.iteration_unit || "epoch"}s run`]: report.total_epochs ?? report.total_rounds,
    "data version": data.data_version, "feature set": data.feature_set,
    "features version": data.features_version, instruments: data.instruments,
    "rows train / valid / test": data.rows ? ["train", "valid", "test"].map(
      s => fmt(data.rows[s])).join(" / ") : "–",
    segments: data.segments ? Object.entries(data.segments).map(
      ([s, [a, b]]) => `${s} ${a}..${b}`).join(", ") : "–",
    error: report.error ? report.error.message : undefined,
  }));
  replace("#report-metrics", metricsTable(report.metrics));
  replace("#report-params", table(Object.entries(report.hyper_parameters || {}).map(
    ([name, value]) => ({ name, value })), [["name", "parameter"], ["value", "value"]]));
  const blob = new Blob([JSON.stringify(report, null, 2)], { type: "application/json" });
  const link = $("#report-download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = `training-report-${report.run_id}.json`;
  box.open();
  drawHistory(report.history, "report-history-loss", "report-history-ic");
  drawImportance("report-importance", report.feature_importance);
  document.body.dataset.report = report.run_id;
}

$("#report-close")?.addEventListener("click", () => modal("training-report").close());
$("#live-close")?.addEventListener("click", () => live?.close());

// -- live training ------------------------------------------------------------
// A run started through the queue: its training_progress events over the WebSocket
// (from the offset the start returned, so nothing before or twice), a stop button.
let live = null;
const FINAL = ["completed", "failed", "stopped"];

class LiveRun {
  constructor(run) {
    this.run = run;              // {run_id, job_id, model, model_type, events_offset}
    this.history = [];
    this.lines = [];
    this.box = modal("training-live");
    replace("#live-run", `${run.model} · ${run.model_type || ""} · run ${run.run_id}`);
    this.box.dialog.dataset.run = run.run_id;
    delete this.box.dialog.dataset.done;
    $("#live-log").textContent = "";
    $("#live-report-link").hidden = true;
    $("#live-stop").onclick = () => this.stop();
    $("#live-open-report").onclick = () => this.openReport();
    this.box.open();
    applyRole(this.box.dialog);
    drawHistory([], "live-loss", "live-ic");
    this.apply({ stage: run.state || "queued", percent: 0, message: `job ${run.job_id} queued` });
    this.stream = new EventStream({ types: ["training_progress"], runId: run.run_id,
                                    after: run.events_offset ?? -1 })
      .on("training_progress", (ev) => this.apply(ev));
  }

  // One training_progress event.
  apply(ev) {
    const stage = ev.stage || "–";
    replace("#live-stage", stage);
    const pct = Math.max(0, Math.min(100, Number(ev.percent) || 0));
    $("#live-progress").value = pct;
    replace("#live-percent", `${pct.toFixed(0)}%`);
    const step = ev.epoch ?? ev.round;
    const total = ev.n_epochs ?? ev.n_rounds;
    if (step) replace("#live-epoch", `${ev.round ? "round" : "epoch"} ${step}${total ? " / " + total : ""}`);
    if (step && (ev.train_loss != null || ev.valid_ic != null)) {
      this.history = this.history.filter(r => (r.epoch ?? r.round) !== step).concat([ev])
        .sort((a, b) => (a.epoch ?? a.round) - (b.epoch ?? b.round));
      drawHistory(this.history, "live-loss", "live-ic");
    }
    const time = (ev.time ? new Date(ev.time) : new Date()).toISOString().slice(11, 19);
    this.lines.push(`${time} ${stage.padEnd(11)} ${pct.toFixed(0).padStart(3)}% ${ev.message || ""}`);
    const log = $("#live-log");
    log.textContent = this.lines.slice(-400).join("\n");
    log.scrollTop = log.scrollHeight;
    this.box.dialog.dataset.stage = stage;
    this.box.dialog.dataset.percent = pct.toFixed(0);
    if (FINAL.includes(stage)) {
      this.box.dialog.dataset.done = stage;
      $("#live-stop").disabled = true;
      if (stage === "completed") $("#live-report-link").hidden = false;
      this.stream?.close();
    }
  }

  async stop() {
    try {
      const res = await api(`/api/models/${encodeURIComponent(this.run.model)}/training/stop`,
                            { method: "POST" });
      notice(`stop requested: job ${res.job_id} ${res.state || ""}`);
    } catch (err) {
      notice(String(err.message || err), "error");
    }
  }

  async openReport() {
    showReport(await api(`/api/models/${encodeURIComponent(this.run.model)}/training-report`),
               this.run.run_id);
  }

  close() {
    this.stream?.close();
    this.box.close();
    purge("live-loss");
    purge("live-ic");
    live = null;
  }
}

export function openLive(run) {
  if (live) live.close();
  live = new LiveRun(run);
  return live;
}

export function currentLive() { return live; }
