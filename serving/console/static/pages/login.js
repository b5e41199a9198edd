// Sign in: check the token with the API, keep it (and its role) for this session.
import { api, ApiError, saveSession } from "../api.js";
import { $ } from "../ui.js";

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("#token").value.trim();
  const error = $("#login-error");
  error.hidden = true;
  try {
    const me = await api("/console/whoami", { token });
    saveSession(token, me.role);
    location.assign(nextPage());
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401
      ? "That token is not valid here." : String(err.message || err);
    error.hidden = false;
  }
});
performance.mark("console-ready");
document.body.dataset.ready = "true";
