"""The training reference sample: a seeded sample of a model's train-segment feature
rows, stored with every registered version as the artefact ``reference.parquet``.

Drift (``cluster.monitoring.drift``) compares each served day with it; the explainer
uses it as the SHAP background of torch models. Written by the one registration
path (``ModelRegistry.register(..., artefacts=reference_artefacts(...))``), read
with :func:`load_reference` (sha256-checked like every artefact).

Format: Parquet, columns ``date`` (date32), ``instrument`` (string) and the model's
feature columns (float32), at most ``REFERENCE_ROWS`` rows drawn uniformly without
replacement from the train segment with ``numpy.random.default_rng(REFERENCE_SEED)``,
sorted by (date, instrument).
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REFERENCE_ARTEFACT = "reference.parquet"
REFERENCE_ROWS = 5000
REFERENCE_SEED = 20240501


def reference_sample(frame: pd.DataFrame, train: tuple, features: list[str],
                     rows: int = REFERENCE_ROWS, seed: int = REFERENCE_SEED) -> pd.DataFrame:
    """``rows`` seeded rows of ``frame`` (features-table rows) with date in ``train``."""
    dates = pd.to_datetime(frame["date"])
    start, end = pd.Timestamp(train[0]), pd.Timestamp(train[1])
    idx = np.flatnonzero(((dates >= start) & (dates <= end)).to_numpy())
    if len(idx) > rows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, rows, replace=False))
    out = frame.iloc[idx][["date", "instrument", *features]].copy()
    out["date"] = pd.to_datetime(out["date"])
    out[features] = out[features].astype(np.float32)
    return out.sort_values(["date", "instrument"], kind="stable").reset_index(drop=True)


def to_bytes(sample: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(sample, preserve_index=False)
    table = table.set_column(0, "date", table.column("date").cast(pa.date32()))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_bytes(blob: bytes) -> pd.DataFrame:
    frame = pq.read_table(io.BytesIO(blob)).to_pandas(date_as_object=False)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def reference_artefacts(frame: pd.DataFrame, segments: dict, features: list[str]) -> dict:
    """{artefact name: bytes} to register with a version trained on ``frame``."""
    if not segments or "train" not in segments:
        return {}
    return {REFERENCE_ARTEFACT: to_bytes(reference_sample(frame, segments["train"], features))}


def load_reference(registry, name: str, version: str | int) -> pd.DataFrame | None:
    """The version's reference sample (None for versions registered before it existed)."""
    if f"sha256.{REFERENCE_ARTEFACT}" not in registry.get(name, version).tags:
        return None
    return from_bytes(registry.artefact_bytes(name, version, REFERENCE_ARTEFACT))
