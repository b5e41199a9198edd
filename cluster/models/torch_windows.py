"""Sequence windows of the zoo's PyTorch models (Qlib ``TSDatasetH`` semantics).

The sample of row (t, i) is the last ``seq_len`` rows of instrument i up to and
including t (never a later row), in date order; rows before the instrument's
first row are padding. Windows count the instrument's own rows (a day on which
the instrument has no row is skipped rather than padded). Qlib pads with NaN;
the models pad with the scaled value of NaN, i.e. 0 (the training median).

Training gathers windows per batch by integer indexing into one scaled,
instrument-grouped array with a zero row at its end (:func:`panel_layout`,
:func:`window_indices`, :class:`Panel`); no Python loop runs per sample. Serving
builds the same windows from the features table (:func:`last_rows_windows`) or
takes posted ones, raw and NaN-padded at the front.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def levels(index: pd.MultiIndex) -> tuple[pd.Index, pd.Index]:
    """(datetime, instrument) levels of an index, whichever order they come in."""
    names = list(index.names)
    d = names.index("datetime") if "datetime" in names else 0
    i = names.index("instrument") if "instrument" in names else 1
    return index.get_level_values(d), index.get_level_values(i)


def panel_layout(index: pd.MultiIndex) -> tuple[np.ndarray, np.ndarray]:
    """Rows indexed (datetime, instrument) -> ``(order, starts)``.

    ``order`` puts the rows grouped by instrument, each group in date order;
    ``starts[k]`` is the position (in that order) of the first row of the group
    that ordered row ``k`` belongs to.
    """
    if index.has_duplicates:
        raise ValueError("feature rows must be unique per (datetime, instrument)")
    dates, insts = levels(index)
    codes, _ = pd.factorize(insts)
    order = np.lexsort((np.asarray(dates.values), codes))
    c = codes[order]
    n = len(c)
    first = np.ones(n, dtype=bool)
    first[1:] = c[1:] != c[:-1]
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else \
        np.zeros(0, dtype=np.int64)
    return order.astype(np.int64), starts.astype(np.int64)


def window_indices(pos: np.ndarray, starts: np.ndarray, seq_len: int, pad: int) -> np.ndarray:
    """Row numbers of the windows ending at ordered rows ``pos``: shape
    ``(len(pos), seq_len)``, oldest first; ``pad`` where the instrument has no
    earlier row (windows never cross into another instrument's rows)."""
    pos = np.asarray(pos, dtype=np.int64)
    idx = pos[:, None] - np.arange(seq_len - 1, -1, -1, dtype=np.int64)[None, :]
    return np.where(idx >= starts[pos][:, None], idx, pad)


def make_windows(values: np.ndarray, index: pd.MultiIndex, seq_len: int,
                 fill: float = np.nan) -> np.ndarray:
    """NumPy reference of the window building: ``(n_rows, seq_len, n_cols)`` windows
    of every row of ``values`` (in the order of ``index``), padded with ``fill``."""
    order, starts = panel_layout(index)
    values = np.asarray(values)
    data = np.concatenate([values[order], np.full((1,) + values.shape[1:], fill,
                                                  dtype=np.result_type(values, type(fill)))])
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    return data[window_indices(pos, starts, seq_len, len(order))]


def fit_windows(windows: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` rows of each ``(n, L, F)`` window, NaN-padded at the front
    when a window is shorter (as an instrument with too little history is)."""
    w = np.asarray(windows, dtype=np.float32)
    if w.ndim != 3:
        raise ValueError(f"windows must be (rows, length, features), got shape {w.shape}")
    if w.shape[1] >= length:
        return w[:, w.shape[1] - length:]
    pad = np.full((w.shape[0], length - w.shape[1], w.shape[2]), np.nan, dtype=np.float32)
    return np.concatenate([pad, w], axis=1)


def last_rows_windows(frame: pd.DataFrame, instruments: list, features: list[str],
                      length: int, date_col: str = "date",
                      inst_col: str = "instrument") -> np.ndarray:
    """``(len(instruments), length, F)`` windows from features-table rows: each
    instrument's last ``length`` rows (up to whatever date ``frame`` ends at), oldest
    first, NaN-padded at the front. An instrument without rows is all padding."""
    out = np.full((len(instruments), length, len(features)), np.nan, dtype=np.float32)
    if frame.empty:
        return out
    ordered = frame.sort_values([inst_col, date_col], kind="stable")
    values = ordered[features].to_numpy(dtype=np.float32)
    insts = ordered[inst_col].to_numpy()
    bounds = {}
    change = np.flatnonzero(np.r_[True, insts[1:] != insts[:-1], True])
    for a, b in zip(change[:-1], change[1:]):
        bounds[insts[a]] = (a, b)
    for k, inst in enumerate(instruments):
        if inst in bounds:
            a, b = bounds[inst]
            rows = values[max(a, b - length):b]
            out[k, length - len(rows):] = rows
    return out


class Panel:
    """Scaled feature rows grouped by instrument (date order) plus a zero pad row."""

    def __init__(self, data: torch.Tensor, starts: np.ndarray, index: pd.MultiIndex):
        self.data = data
        self.starts = starts
        self.index = index
        self.pad = len(starts)

    def locate(self, target: pd.Index) -> np.ndarray:
        pos = self.index.get_indexer(target)
        if (pos < 0).any():
            missing = target[pos < 0][:3].tolist()
            raise KeyError(f"rows {missing} are not in the feature history")
        return pos.astype(np.int64)

    def gather(self, pos: np.ndarray, seq_len: int | None) -> torch.Tensor:
        """Rows (``seq_len`` None) or windows ending at ordered rows ``pos``."""
        if seq_len is None:
            return self.data[torch.from_numpy(pos).to(self.data.device)]
        idx = window_indices(pos, self.starts, seq_len, self.pad)
        return self.data[torch.from_numpy(idx).to(self.data.device)]
