// What every page does first: require a session, show who is signed in, keep the
// operator's buttons off for a viewer, then run the page and mark it rendered.
import { applyRole, role, session, signOut, toLogin } from "./api.js";
import { $, el } from "./ui.js";

// The page's first complete render: the browser tests and bench/console.py wait for
// body[data-ready] and read the "console-ready" performance mark.
function markReady(state) {
  performance.mark("console-ready");
  document.body.dataset.ready = state;
}

export async function startPage(main) {
  if (!session()) { toLogin(); return; }
  const who = $("#who-role");
  if (who) who.textContent = role();
  document.body.dataset.role = role();
  $("#logout")?.addEventListener("click", signOut);
  applyRole();
  try {
    await main();
    applyRole();
    markReady("true");
  } catch (err) {
    showError($("#main"), err);
    console.error(err);
    markReady("error");
  }
}

export function showError(where, err) {
  const box = el("p", { class: "error" }, String(err && err.message ? err.message : err));
  where.prepend(box);
  return box;
}

// Run the sections of a page concurrently: each draws itself; one failing section
// shows its error in place and fails the render.
export async function sections(parts) {
  const results = await Promise.allSettled(parts.map(p => p()));
  const failed = results.filter(r => r.status === "rejected");
  if (failed.length) throw failed[0].reason;
}
