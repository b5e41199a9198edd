// The API client every page uses: the session's token as a bearer header, errors
// with the API's own message, and the caller's role for the operator's buttons.
const KEY = "mlops.console.session";

export function session() {
  try { return JSON.parse(sessionStorage.getItem(KEY)) || null; } catch { return null; }
}

export function saveSession(token, role) {
  sessionStorage.setItem(KEY, JSON.stringify({ token, role }));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.assign("/login");
}

export function toLogin() {
  const next = location.pathname + location.search;
  location.assign("/login?next=" + encodeURIComponent(next));
}

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${path}: ${status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.detail = detail;
    this.path = path;
  }
}

// fetch() with the bearer token; JSON in and out. A 401 sends the user to sign in.
export async function api(path, { method = "GET", body, token } = {}) {
  const auth = token || session()?.token;
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = "Bearer " + auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers,
                                  body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!res.ok) {
    if (res.status === 401 && !token) toLogin();
    throw new ApiError(res.status, data && data.detail !== undefined ? data.detail : data, path);
  }
  return data;
}

export function role() { return session()?.role || null; }

const RANK = { viewer: 1, operator: 2, admin: 3 };
export function can(least) { return (RANK[role()] || 0) >= RANK[least]; }

// Disable the buttons a role may not press: [data-needs="operator"]. The API refuses
// them as well; this only keeps a viewer from trying. [data-off] keeps a button off
// for everyone (nothing to act on).
export function applyRole(root = document) {
  for (const el of root.querySelectorAll("[data-needs]")) {
    const ok = can(el.dataset.needs);
    el.disabled = !ok || el.hasAttribute("data-off");
    if (!ok) el.title = `needs the ${el.dataset.needs} role (you are ${role() || "signed out"})`;
  }
}
