// Dashboard: the live deployments and their split.
import { api } from "../api.js";
import { bars, plot } from "../charts.js";
import { sections, startPage } from "../page.js";
import { badge, el, fields, fmt, pct, replace, table } from "../ui.js";

function time(t) {
  return typeof t === "number" ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19)
                               : fmt(t);
}

export function drawDeployments(status) {
  const deps = status.deployments || [];
  replace("#deployment-summary", deps.map(d => el("div", { class: "deployment",
      dataset: { deployment: d.deployment } },
    el("div", { class: "row" }, el("strong", {}, d.deployment), badge(d.state),
       el("span", { class: "muted" }, `revision ${d.revision}, ${d.replicas} replica(s)`)),
    fields({ stable: d.stable, standby: d.standby, versions: (d.versions || []).join(", "),
             shadow: (d.shadow || []).join(", ") || "none" }),
    table(Object.entries(d.split || {}).map(([version, share]) => ({ version, share })),
          [["version", "version"], ["share", "share of traffic", v => pct(v)]],
          { empty: "nothing deployed" }))));
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
  drawDeployments(await api("/api/deployments"));
}

startPage(() => sections([deployments]));
