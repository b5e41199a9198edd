"""Qlib provider directories: ``calendars/day.txt``, ``instruments/all.txt``,
``features/<inst>/<field>.day.bin``.

A ``.day.bin`` file is little-endian float32: the first value is the index of
the instrument's first date in the calendar, then one value per calendar day
from there (NaN where the instrument has no bar), as Qlib's ``dump_bin`` writes.
Prices in a provider directory are already adjusted, so rows are canonical.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cluster.errors import CorruptFileError, DataError, EmptySourceError, MissingFieldError
from cluster.sources.base import RawBars, concat_raw
from cluster.sources.adjust import default_vwap

FIELDS = ["open", "high", "low", "close", "volume", "factor"]
OPTIONAL_FIELDS = ["vwap"]


def is_qlib_dir(path: Path) -> bool:
    return path.is_dir() and (path / "calendars").is_dir() and (path / "features").is_dir()


def read_calendar(root: Path) -> pd.DatetimeIndex:
    cal = root / "calendars" / "day.txt"
    if not cal.exists():
        raise MissingFieldError("calendar file is missing", file=str(cal))
    lines = [ln.strip() for ln in cal.read_text().splitlines() if ln.strip()]
    if not lines:
        raise EmptySourceError("calendar is empty", file=str(cal))
    dates = pd.to_datetime(pd.Series(lines), format="ISO8601", errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise CorruptFileError("unparseable date in calendar", file=str(cal), row=int(bad[0]) + 1,
                               row_kind="line", value=lines[bad[0]])
    return pd.DatetimeIndex(dates)


def read_instruments(root: Path) -> list[str]:
    path = root / "instruments" / "all.txt"
    if path.exists():
        names = [ln.split("\t")[0].strip() for ln in path.read_text().splitlines() if ln.strip()]
    else:
        names = sorted(p.name.upper() for p in (root / "features").iterdir() if p.is_dir())
    if not names:
        raise EmptySourceError("provider directory lists no instruments", file=str(path))
    return names


def read_bin(path: Path, calendar_len: int) -> tuple[int, np.ndarray]:
    raw = path.read_bytes()
    if len(raw) < 4 or len(raw) % 4:
        raise CorruptFileError(f"truncated .bin file ({len(raw)} bytes, not a multiple of 4)",
                               file=str(path))
    arr = np.frombuffer(raw, dtype="<f4")
    start = arr[0]
    if not np.isfinite(start) or start < 0 or start != int(start) or \
            int(start) + len(arr) - 1 > calendar_len:
        raise CorruptFileError(f"bad start index {start!r} for a calendar of {calendar_len} days",
                               file=str(path), row=0)
    return int(start), arr[1:].astype(np.float64)


def read_qlib_source(root: Path, progress=None) -> RawBars:
    calendar = read_calendar(root)
    parts, errors = [], []
    instruments = read_instruments(root)
    for inst in instruments:
        inst_dir = root / "features" / inst.lower()
        try:
            parts.append(_read_instrument(inst, inst_dir, calendar))
        except DataError as exc:
            errors.append(exc)
        if progress is not None:
            progress.update(1)
    frame = concat_raw(parts)
    return RawBars(frame=frame, kind="canonical", source=str(root),
                   row_kind={str(root / "features" / i.lower()): "calendar row" for i in instruments},
                   file_errors=errors, files=len(instruments))


def _read_instrument(inst: str, inst_dir: Path, calendar: pd.DatetimeIndex) -> pd.DataFrame:
    if not inst_dir.is_dir():
        raise MissingFieldError("instrument has no features folder", file=str(inst_dir))
    columns = {}
    start = None
    for field in FIELDS + OPTIONAL_FIELDS:
        path = inst_dir / f"{field}.day.bin"
        if not path.exists():
            if field in OPTIONAL_FIELDS:
                continue
            raise MissingFieldError("required field file is missing", file=str(path), column=field)
        s, values = read_bin(path, len(calendar))
        if start is not None and (s != start or len(values) != len(next(iter(columns.values())))):
            raise CorruptFileError("field does not cover the same dates as the others",
                                   file=str(path), column=field)
        start = s
        columns[field] = values
    n = len(columns["close"])
    frame = pd.DataFrame(columns)
    frame.insert(0, "date", calendar[start:start + n])
    frame.insert(0, "instrument", inst)
    # Calendar days the instrument has no bar for are stored as all-NaN rows.
    present = ~frame[["open", "high", "low", "close"]].isna().all(axis=1).to_numpy()
    frame["_file"] = str(inst_dir)
    frame["_row"] = np.arange(start, start + n, dtype=np.int64)
    frame = frame[present].reset_index(drop=True)
    if "vwap" not in frame:
        frame["vwap"] = default_vwap(frame)
    return frame


def write_qlib_provider(bars: pd.DataFrame, root: Path, calendar=None) -> Path:
    """Write canonical bars as a Qlib provider directory Qlib's ``D.features`` reads.

    ``calendar`` defaults to the sorted union of the bars' dates; each instrument
    is stored between its own first and last date, NaN where it has no bar.
    """
    root = Path(root)
    (root / "calendars").mkdir(parents=True, exist_ok=True)
    (root / "instruments").mkdir(parents=True, exist_ok=True)
    dates = pd.DatetimeIndex(pd.to_datetime(bars["date"]))
    cal = pd.DatetimeIndex(sorted(set(dates))) if calendar is None else pd.DatetimeIndex(calendar)
    (root / "calendars" / "day.txt").write_text("\n".join(cal.strftime("%Y-%m-%d")) + "\n")
    lines = []
    pos = pd.Series(np.arange(len(cal)), index=cal)
    fields = FIELDS + ["vwap"]
    for inst, grp in bars.assign(date=dates).sort_values(["instrument", "date"]).groupby(
            "instrument", sort=True):
        idx = pos.loc[pd.DatetimeIndex(grp["date"])].to_numpy()
        first, last = int(idx[0]), int(idx[-1])
        lines.append(f"{inst}\t{cal[first]:%Y-%m-%d}\t{cal[last]:%Y-%m-%d}")
        out_dir = root / "features" / str(inst).lower()
        out_dir.mkdir(parents=True, exist_ok=True)
        for field in fields:
            values = np.full(last - first + 1, np.nan, dtype="<f4")
            col = grp[field].to_numpy(dtype=np.float64) if field in grp else default_vwap(grp)
            values[idx - first] = col
            np.hstack([np.array([first], dtype="<f4"), values]).astype("<f4").tofile(
                out_dir / f"{field}.day.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")
    return root
