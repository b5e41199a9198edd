// Plotly.js (served from the installed plotly wheel) with the console's defaults.
const CONFIG = { displaylogo: false, responsive: true,
                 modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const LAYOUT = { margin: { l: 50, r: 20, t: 30, b: 40 }, height: 320,
                 font: { family: "system-ui, sans-serif", size: 12 },
                 legend: { orientation: "h", y: -0.2 }, hovermode: "x unified" };

export function plot(div, traces, layout = {}) {
  const node = typeof div === "string" ? document.getElementById(div) : div;
  return window.Plotly.react(node, traces, { ...LAYOUT, ...layout }, CONFIG);
}

export function line(x, y, name, extra = {}) {
  return { type: "scatter", mode: "lines", x, y, name, ...extra };
}

export function bars(labels, values, name, extra = {}) {
  return { type: "bar", x: labels, y: values, name, ...extra };
}

export function hbars(labels, values, name, extra = {}) {
  return { type: "bar", orientation: "h", y: labels, x: values, name, ...extra };
}

export function purge(div) {
  const node = typeof div === "string" ? document.getElementById(div) : div;
  if (node && window.Plotly) window.Plotly.purge(node);
}
