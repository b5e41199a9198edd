"""What a prediction reads, the same for serving, MLflow pyfunc and batch scoring.

Every model of the zoo (and rolling and ensemble models) predicts from raw
windows: ``model.predict_window(windows, dates)`` with ``windows`` of shape
``(n, L, F)`` -- each row's last ``L`` feature rows of its instrument, oldest first,
the row predicted last, NaN where there is no row -- and ``dates`` the date of each
predicted row (or None when unknown). ``model.window_length`` says how many rows a
prediction reads (1 for tabular models). ``dates`` lets a rolling model pick the
step that covers each date and an ensemble combine members per date (one
cross-section per date; all rows are one cross-section when dates are None).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.models.torch_windows import make_windows

DATE_COLUMNS = ("datetime", "date")
INSTRUMENT_COLUMN = "instrument"


def window_length(model) -> int:
    return max(int(getattr(model, "window_length", 1) or 1), 1)


def frame_inputs(model, frame: pd.DataFrame, features: list[str]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw feature rows -> (windows, dates) for every row of ``frame``.

    ``frame`` holds the feature columns and, optionally, a ``datetime`` (or ``date``)
    and an ``instrument`` column (or index levels of those names). With both, a
    sequence model's window of each row is the earlier rows of its instrument in
    ``frame`` (as training builds them); without, every row is a window of one row."""
    if isinstance(frame.index, pd.MultiIndex) and INSTRUMENT_COLUMN in frame.index.names:
        frame = frame.reset_index()
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"input lacks {len(missing)} feature column(s) the model needs, "
                         f"e.g. {missing[:5]}")
    date_col = next((c for c in DATE_COLUMNS if c in frame.columns), None)
    dates = None if date_col is None else \
        np.asarray(pd.to_datetime(frame[date_col]).values, dtype="datetime64[ns]")
    values = frame[features].to_numpy(dtype=np.float32)
    length = window_length(model)
    if length > 1 and dates is not None and INSTRUMENT_COLUMN in frame.columns:
        index = pd.MultiIndex.from_arrays([pd.DatetimeIndex(dates),
                                           frame[INSTRUMENT_COLUMN].astype(str).to_numpy()],
                                          names=["datetime", "instrument"])
        return make_windows(values, index, length).astype(np.float32), dates
    return values[:, None, :], dates


def predict_frame_rows(model, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    windows, dates = frame_inputs(model, frame, features)
    return np.asarray(model.predict_window(windows, dates), dtype=np.float64).reshape(-1)
