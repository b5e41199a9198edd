// Small DOM helpers shared by the pages.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function fmt(v, digits = 4) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return v.toFixed(digits);
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function pct(v, digits = 1) {
  return v === null || v === undefined ? "–" : (100 * v).toFixed(digits) + "%";
}

// A table from rows of objects: columns are [key, label, render?].
export function table(rows, columns, { empty = "none", rowAttrs } = {}) {
  const head = el("tr", {}, columns.map(([, label]) => el("th", { scope: "col" }, label)));
  const body = rows.length ? rows.map((r, i) => el("tr", rowAttrs ? rowAttrs(r, i) : {},
    columns.map(([key, , render]) => {
      const v = render ? render(r[key], r) : fmt(r[key]);
      return el("td", { class: typeof r[key] === "number" ? "num" : undefined }, v);
    })))
    : [el("tr", {}, el("td", { colspan: columns.length, class: "empty" }, empty))];
  return el("table", { class: "grid" }, el("thead", {}, head), el("tbody", {}, body));
}

// Definition list of an object's fields.
export function fields(obj, keys) {
  return el("dl", { class: "fields" }, (keys || Object.keys(obj)).flatMap(k =>
    [el("dt", {}, k), el("dd", {}, fmt(obj[k]))]));
}

export function replace(target, ...children) {
  const node = typeof target === "string" ? $(target) : target;
  node.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined));
  return node;
}

let noticeTimer = null;
export function notice(message, kind = "info") {
  const box = $("#notice");
  if (!box) return;
  box.textContent = message;
  box.className = kind;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

export function badge(text, kind) {
  return el("span", { class: `badge ${kind || String(text).toLowerCase()}` }, text);
}

export function modal(id) {
  const dialog = document.getElementById(id);
  return {
    dialog,
    open() { if (!dialog.open) dialog.showModal(); },
    close() { if (dialog.open) dialog.close(); },
  };
}

export function kpi(label, value, key) {
  return el("div", { class: "kpi", dataset: { kpi: key || label } },
            el("div", { class: "value" }, fmt(value, 3)), el("div", { class: "label" }, label));
}
