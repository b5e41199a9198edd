// A/B experiments: arms, split, per-arm realised RankIC with its confidence interval,
// the verdict; start and stop (operator).
import { api, applyRole } from "../api.js";
import { line, plot } from "../charts.js";
import { EventStream } from "../events.js";
import { modelChoices } from "../models.js";
import { sections, startPage } from "../page.js";
import { $, badge, el, fields, fmt, kpi, notice, pct, replace, table } from "../ui.js";

let deployment = null;

async function live() {
  deployment = (await api("/api/deployments")).deployments[0];
  const d = deployment;
  replace("#ab-live", el("div", { class: "row" }, el("strong", {}, d.deployment), badge(d.state),
                         el("span", { class: "muted" }, `stable ${d.stable || "–"}`)),
    table(Object.entries(d.split || {}).map(([version, share]) => ({ version, share })),
          [["version", "arm"], ["share", "share", v => pct(v)]], { empty: "nothing deployed" }));
  const running = d.rollout && !["promoted", "rolled_back", "failed"].includes(d.state);
  for (const b of [$("#ab-stop-keep"), $("#ab-stop-promote")]) {
    b.toggleAttribute("data-off", !running);
    b.title = running ? "" : "no experiment is running";
  }
  applyRole($("#ab-live").parentElement);
}

async function candidates() {
  const choices = await modelChoices();
  replace("#ab-candidate", choices.map(c => el("option", { value: c.model_id }, c.label)));
}

async function list() {
  const exps = (await api("/api/experiments")).experiments || [];
  replace("#ab-list", table(exps, [["rollout_id", "experiment", v => el("a", {
      href: `#${v}`, "data-experiment": v, onclick: (e) => { e.preventDefault(); analyse(v); } }, v)],
    ["arms", "arms", v => v.join(" vs ")], ["rows", "predictions"],
    ["first_day", "first day"], ["last_day", "last day"]], { empty: "no experiment has served yet" }));
  const chosen = decodeURIComponent(location.hash.slice(1)) || exps[exps.length - 1]?.rollout_id;
  if (chosen) await analyse(chosen);
}

async function analyse(id) {
  const a = await api(`/api/experiments/${encodeURIComponent(id)}`);
  history.replaceState(null, "", `#${id}`);
  replace("#ab-selected", id);
  const arms = a.arms || [];
  const mean = a.mean_rank_ic || {};
  const armCi = a.arm_ci || {};
  replace("#ab-kpis", el("div", { class: "kpi", dataset: { kpi: "verdict" } },
      el("div", { class: "value" }, a.verdict), el("div", { class: "label" }, "verdict")),
    kpi("days", a.days), kpi(`difference (${a.difference_of || "b − a"})`, a.difference),
    kpi("Newey-West t", a.newey_west_t));
  plot("ab-arms-chart", [{ type: "bar", x: arms, y: arms.map(k => mean[k]), name: "mean daily RankIC",
    error_y: armCi[arms[0]] ? { type: "data", symmetric: false,
      array: arms.map(k => armCi[k] ? armCi[k][1] - mean[k] : 0),
      arrayminus: arms.map(k => armCi[k] ? mean[k] - armCi[k][0] : 0) } : undefined }],
    { title: { text: "per-arm realised RankIC" + (a.arm_ci ? " (95% CI)" : "") }, hovermode: "closest" });
  const daily = a.daily || [];
  plot("ab-daily-chart", arms.map(k => line(daily.map(r => r.date), daily.map(r => r[k]), k)),
       { title: { text: "daily RankIC per arm" } });
  replace("#ab-stats", fields({
    "mean RankIC": arms.map(k => `${k}: ${fmt(mean[k])}` +
      (armCi[k] ? ` [${fmt(armCi[k][0])}, ${fmt(armCi[k][1])}]` : "")).join("; "),
    "difference CI (stationary bootstrap)": a.bootstrap_ci ? `[${fmt(a.bootstrap_ci[0])}, ${fmt(a.bootstrap_ci[1])}]` : "–",
    "sequential statistic / boundary": `${fmt(a.sequence_statistic)} / ${fmt(a.sequence_boundary)}`,
    "stopping rule": a.stopping_rule, winner: a.winner || "none yet", reason: a.reason,
  }));
}

async function act(path, body, what) {
  try {
    await api(path, { method: "POST", body });
    notice(what);
    await live();
  } catch (err) {
    notice(String(err.message || err), "error");
  }
}

startPage(async () => {
  await sections([live, candidates, list]);
  $("#ab-start").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const share = Number($("#ab-weight").value) / 100;
    act(`/api/models/${$("#ab-candidate").value}/deploy`,
        { strategy: "ab", weights: [1 - share, share] }, "A/B test started");
  });
  $("#ab-stop-keep").addEventListener("click", () => act(
    `/api/deployments/${deployment.deployment}/rollback`, { reason: "A/B test stopped in the console" },
    "stopped: the incumbent keeps all traffic"));
  $("#ab-stop-promote").addEventListener("click", () => act(
    `/api/deployments/${deployment.deployment}/promote`, { reason: "A/B test ended in the console" },
    "stopped: the candidate is promoted"));
  applyRole();
  new EventStream({ types: ["deployment_changed"] }).on("deployment_changed", () => live());
});
