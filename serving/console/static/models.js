// Registered model versions, as the pages that pick one need them.
import { api } from "./api.js";

const STATE_ORDER = { production: 0, staging: 1, validated: 2, trained: 3, archived: 4 };

export async function listModels(query = "") {
  return (await api("/api/models" + query)).models || [];
}

// Versions for a picker: production first, then the newest.
export async function modelChoices() {
  const models = await listModels();
  return models.map(m => ({ ...m, label: `${m.model_id} (${m.state})` }))
    .sort((a, b) => (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9)
      || a.name.localeCompare(b.name) || Number(b.version) - Number(a.version));
}
