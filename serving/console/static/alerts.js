// The alerts table (monitoring page and dashboard): state, rule, value vs threshold,
// and the operator's acknowledge button.
import { api, applyRole } from "./api.js";
import { badge, el, fmt, notice, table } from "./ui.js";

export async function fetchAlerts(query = "") {
  return (await api("/api/monitoring/alerts" + query)).alerts || [];
}

export function alertsTable(alerts, { onAck } = {}) {
  const rows = [...alerts].sort((a, b) => (a.state === "raised" ? 0 : 1) - (b.state === "raised" ? 0 : 1)
    || String(b.day || b.time || "").localeCompare(String(a.day || a.time || "")));
  const t = table(rows, [
    ["state", "state", v => badge(v)], ["rule", "rule"],
    ["subject", "model / subject", (v, r) => r.model ? `${r.model}/${r.version}` : fmt(v)],
    ["day", "day"], ["value", "value"], ["threshold", "threshold"], ["message", "message"],
    ["action", "action", (v, r) => v ? `${v}${r.action_result ? ": " + r.action_result : ""}` : "–"],
    ["alert_id", "", (id, r) => r.state === "raised" && !r.acked_by
      ? el("button", { type: "button", class: "secondary", "data-needs": "operator",
                       "data-ack": id, onclick: () => ack(id, onAck) }, "Acknowledge")
      : (r.acked_by ? `acked by ${r.acked_by}` : "")],
  ], { empty: "no alerts", rowAttrs: r => ({ "data-alert": r.alert_id, "data-state": r.state }) });
  applyRole(t);
  return t;
}

async function ack(id, onAck) {
  try {
    await api("/api/monitoring/alerts", { method: "POST",
      body: { alert_id: id, message: "acknowledged in the console" } });
    notice(`alert ${id} acknowledged`);
    if (onAck) await onAck();
  } catch (err) {
    notice(String(err.message || err), "error");
  }
}
