// Data versions: list, detail (with the models trained on each), diff of two, and
// what served on a chosen date (version, inputs and lineage of every prediction).
import { api } from "../api.js";
import { sections, startPage } from "../page.js";
import { $, badge, el, fields, fmt, replace, table } from "../ui.js";

let versions = [];

async function list() {
  versions = (await api("/api/data/versions")).versions || [];
  replace("#versions", table([...versions].reverse(), [
    ["version", "version", v => el("a", { href: `#v${v}`, "data-version": v,
      onclick: (e) => { e.preventDefault(); detail(v); } }, String(v))],
    ["created_at", "created"], ["source", "source"], ["start", "from"], ["end", "to"],
    ["instruments", "instruments"], ["rows", "rows"], ["rows_added", "added"],
    ["rows_restated", "restated"], ["rows_quarantined", "quarantined"],
    ["status", "status", v => badge(v)]], { empty: "nothing ingested yet" }));
  const options = versions.map(v => el("option", { value: v.version }, String(v.version)));
  replace("#diff-a", options.map(o => o.cloneNode(true)));
  replace("#diff-b", options);
  if (versions.length) {
    $("#diff-a").value = versions[Math.max(0, versions.length - 2)].version;
    $("#diff-b").value = versions[versions.length - 1].version;
    const wanted = Number(location.hash.replace("#v", ""));
    await Promise.all([detail(Number.isInteger(wanted) && location.hash ? wanted
                              : versions[versions.length - 1].version), diff(), servedLast()]);
  }
}

// What served on the last day of the newest version's range (the default date),
// fetched beside the detail and the diff, not after them.
async function servedLast() {
  const last = versions[versions.length - 1];
  if (!$("#served-form") || !last || !last.end) return;
  $("#served-date").value = last.end;
  await served();
}

async function detail(id) {
  const [d, trained] = await Promise.all([api(`/api/data/versions/${id}`),
    api(`/api/models?tag=${encodeURIComponent(`lineage.data_version:${id}`)}`)]);
  replace("#version-id", String(id));
  const { stats, ...rest } = d;
  replace("#version-detail", fields({ ...rest, ...Object.fromEntries(Object.entries(stats || {})
    .map(([k, v]) => [`as of it: ${k}`, v])) }));
  replace("#version-models", table(trained.models || [], [["model_id", "model"],
    ["state", "state", v => badge(v)], ["feature_set", "feature set"],
    ["tags", "training run", t => (t || {})["lineage.training_run"] || "–"],
    ["metrics", "test RankIC", m => fmt((m || {}).test_rank_ic)]],
    { empty: "no model was trained on this version" }));
}

async function diff() {
  const a = $("#diff-a").value, b = $("#diff-b").value;
  const d = await api(`/api/data/diff?a=${a}&b=${b}`);
  const list = (xs) => (xs && xs.length ? `${xs.length}: ${xs.slice(0, 12).join(", ")}${xs.length > 12 ? ", …" : ""}` : "none");
  replace("#diff", fields({
    from: d.from, to: d.to, "instruments added": list(d.instruments_added),
    "instruments removed": list(d.instruments_removed), "dates added": list(d.dates_added),
    "rows added": d.rows_added, "rows removed": d.rows_removed, "rows restated": d.rows_restated,
  }), d.restated && d.restated.length ? [el("h2", {}, `restated rows (first ${Math.min(50, d.restated.length)})`),
    el("div", { class: "scroll" }, table(d.restated.slice(0, 50),
      Object.keys(d.restated[0]).map(k => [k, k])))] : null);
}

async function served() {
  const date = $("#served-date").value;
  if (!date) return;
  const inst = $("#served-instrument").value.trim();
  const q = `date=${date}` + (inst ? `&instrument=${encodeURIComponent(inst)}` : "");
  const s = await api(`/api/served?${q}`);
  replace("#served-summary", fields({ date: s.date, instrument: s.instrument || "all",
    predictions: s.predictions, versions: (s.versions || []).join(", ") || "none" }));
  replace("#served", table(s.rows || [], [
    ["instrument", "instrument"], ["version", "version"], ["output", "prediction"],
    ["source", "source"], ["arm", "arm"], ["rollout_id", "rollout"],
    ["inputs", "inputs: data / features version", v => v ? `${fmt(v.data_version)} / ${fmt(v.features_version)}` : "–"],
    ["trained_on", "trained on data version", v => fmt(v?.data_version)],
    ["trained_on", "feature set", v => fmt(v?.feature_set)],
    ["trained_on", "training run / tune trial", v => v ? [v.training_run, v.tune_trial_id].filter(Boolean).join(" / ") || "–" : "–"],
    ["time", "time"]], { empty: "nothing served or scored on that date" }));
}

startPage(async () => {
  $("#diff-form").addEventListener("submit", (e) => { e.preventDefault(); diff(); });
  const servedForm = $("#served-form");
  servedForm?.addEventListener("submit", (e) => { e.preventDefault(); served(); });
  await sections([list]);
});
