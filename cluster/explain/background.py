"""The fixed background windows of a sequence model's explanations: a seeded sample of
training windows stored with every registered version whose prediction reads more
than one row per instrument (lstm, transformer, informer, timesnet, patchtst, and
rolling models or ensembles with such a member), as the artefact
``explain_windows.parquet``.

Why not the training reference sample (:mod:`cluster.monitoring.reference`): its
rows are drawn one by one across the whole train segment, so it holds almost no run
of consecutive rows of one instrument -- no window. Written by the one registration
path (:func:`cluster.training.registration.register_model`), read with
:func:`load_windows` (sha256-checked like every artefact).

The sample: ``WINDOWS`` window ends drawn uniformly without replacement, with
``numpy.random.default_rng(WINDOWS_SEED)``, from the train-segment rows that have a
full window (``length - 1`` earlier rows of their instrument; all train rows when
none has); each window is the end row's instrument's last ``length`` rows up to it,
as training builds windows (:mod:`cluster.models.torch_windows`). The first
``BACKGROUND_WINDOWS`` are the explainers' background, the others the rows the
global explanation is computed on.

Format: Parquet, long: one row per window row, columns ``window`` (int32),
``step`` (int16, 0 = oldest; a window padded at the front has no rows for its first
steps), ``date`` (date32), ``instrument`` (string) and the feature columns (float32).
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.models.inputs import window_length
from cluster.models.torch_windows import panel_layout, window_indices

WINDOWS_ARTEFACT = "explain_windows.parquet"
WINDOWS = 48
BACKGROUND_WINDOWS = 16   # the explainers integrate over these; the rest: global rows
WINDOWS_SEED = 20240608


def window_sample(frame: pd.DataFrame, train: tuple, features: list[str], length: int,
                  n: int = WINDOWS, seed: int = WINDOWS_SEED) -> pd.DataFrame:
    """``n`` seeded windows of ``length`` rows ending on train-segment rows of
    ``frame`` (features-table rows), in the long format above."""
    dates = pd.DatetimeIndex(pd.to_datetime(frame["date"]))
    index = pd.MultiIndex.from_arrays([dates, frame["instrument"].astype(str).to_numpy()],
                                      names=["datetime", "instrument"])
    order, starts = panel_layout(index)
    ordered_dates = dates.values[order]
    start, end = pd.Timestamp(train[0]), pd.Timestamp(train[1])
    in_train = (ordered_dates >= start.to_datetime64()) & (ordered_dates <= end.to_datetime64())
    full = in_train & (np.arange(len(order)) - starts >= length - 1)
    candidates = np.flatnonzero(full if full.any() else in_train)
    if len(candidates) > n:
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, n, replace=False))
    idx = window_indices(candidates, starts, length, pad=-1)      # ordered positions
    window, step = np.nonzero(idx >= 0)
    rows = order[idx[window, step]]                              # frame positions
    out = frame.iloc[rows][["date", "instrument", *features]].reset_index(drop=True)
    out.insert(0, "step", step.astype(np.int16))
    out.insert(0, "window", window.astype(np.int32))
    out["date"] = pd.to_datetime(out["date"])
    out["instrument"] = out["instrument"].astype(str)
    out[features] = out[features].astype(np.float32)
    return out


def to_bytes(sample: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(sample, preserve_index=False)
    i = table.schema.get_field_index("date")
    table = table.set_column(i, "date", table.column("date").cast(pa.date32()))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def windows_array(sample: pd.DataFrame, features: list[str], length: int) -> np.ndarray:
    """The long format -> ``(windows, length, F)`` float32, NaN where a window is padded."""
    n = int(sample["window"].max()) + 1 if len(sample) else 0
    out = np.full((n, length, len(features)), np.nan, dtype=np.float32)
    steps = sample["step"].to_numpy(dtype=np.int64) + (length - int(sample["step"].max()) - 1
                                                       if len(sample) else 0)
    keep = steps >= 0                    # a longer stored window: its last ``length`` rows
    out[sample["window"].to_numpy()[keep], steps[keep]] = \
        sample.loc[keep, features].to_numpy(dtype=np.float32)
    return out


def window_artefacts(model, frame: pd.DataFrame, segments: dict, features: list[str]) -> dict:
    """{artefact name: bytes} to register with ``model`` trained on ``frame``: the
    background windows when its prediction reads windows, nothing otherwise."""
    length = window_length(model)
    if length <= 1 or not segments or "train" not in segments or not features:
        return {}
    return {WINDOWS_ARTEFACT: to_bytes(window_sample(frame, segments["train"], features,
                                                     length))}


def load_windows(registry, name: str, version: str | int, features: list[str],
                 length: int) -> np.ndarray | None:
    """The version's stored windows in ``features``' order (None for versions
    registered before they existed, or that lack one of ``features``)."""
    if f"sha256.{WINDOWS_ARTEFACT}" not in registry.get(name, version).tags:
        return None
    sample = pq.read_table(io.BytesIO(registry.artefact_bytes(name, version,
                                                              WINDOWS_ARTEFACT))).to_pandas()
    if not set(features) <= set(sample.columns):
        return None
    return windows_array(sample, features, length)
