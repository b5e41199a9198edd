"""Parse and check raw rows; produce canonical bars and the problems found.

Every rule is vectorised over the whole input; the location of each bad value
(file, line or row, column) comes from the provenance columns a reader keeps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cluster import errors as E
from cluster.schema import BAR_COLUMNS
from cluster.sources.adjust import default_vwap, yahoo_to_canonical
from cluster.sources.base import RawBars

log = logging.getLogger(__name__)


@dataclass
class Problem:
    error: type
    reason: str
    column: str | None
    position: int  # index into the raw frame

    def to_error(self, raw: pd.DataFrame, row_kind: dict[str, str], more: int = 0) -> E.DataError:
        file = str(raw["_file"].iat[self.position])
        value = None
        if self.column is not None and self.column in raw:
            value = raw[self.column].iat[self.position]
            value = value.item() if hasattr(value, "item") else value
        return self.error(self.reason, file=file, row=int(raw["_row"].iat[self.position]),
                          column=self.column, value=value,
                          row_kind=row_kind.get(file, "row"), more=more)


@dataclass
class Validated:
    bars: pd.DataFrame
    bad_rows: pd.DataFrame  # one row per rejected input row: where, why, raw values
    file_errors: list[E.DataError]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Columns:
    name: str
    date: str
    prices: list[str]
    open: str
    high: str
    low: str
    close: str
    volume: str
    positive: list[str]  # must be finite and > 0

    @classmethod
    def of(cls, kind: str) -> "_Columns":
        if kind == "yahoo":
            prices = ["High", "Low", "Open", "Close", "Adj Close"]
            return cls("Name", "Date", prices, "Open", "High", "Low", "Close", "Volume", prices)
        prices = ["open", "high", "low", "close"]
        return cls("instrument", "date", prices, "open", "high", "low", "close", "volume",
                   prices + ["factor", "vwap"])


def validate(raw: RawBars, tolerance: float = 1e-3) -> Validated:
    frame = raw.frame
    if frame.empty:
        return Validated(pd.DataFrame(columns=BAR_COLUMNS), _empty_bad(), raw.file_errors)
    cols = _Columns.of(raw.kind)
    problems: list[Problem] = []
    n = len(frame)

    def flag(mask: np.ndarray, error: type, reason, column: str | None) -> None:
        for pos in np.flatnonzero(mask):
            text = reason(int(pos)) if callable(reason) else reason
            problems.append(Problem(error, text, column, int(pos)))

    # instrument
    # Names are factorised once: comparisons and the duplicate check run on codes.
    names = frame[cols.name].astype("str").str.strip()
    codes, uniques = pd.factorize(names, use_na_sentinel=True)
    empty = np.flatnonzero(pd.Index(uniques) == "")
    missing_name = (codes < 0) | (np.isin(codes, empty) if len(empty) else False)
    flag(missing_name, E.MissingFieldError, "missing instrument name", cols.name)

    # date
    dates, date_bad, date_missing = _parse_dates(frame[cols.date])
    flag(date_missing, E.MissingFieldError, "missing date", cols.date)
    flag(date_bad, E.InvalidValueError, "unparseable date (expected YYYY-MM-DD)", cols.date)

    # numbers
    parsed = {}
    value_columns = [c for c in dict.fromkeys(cols.prices + cols.positive + [cols.volume])
                     if c in frame]
    for c in value_columns:
        values, bad, missing = _parse_numbers(frame[c])
        parsed[c] = values
        flag(missing, E.MissingFieldError, "missing value", c)
        flag(bad, E.InvalidValueError, "not a number", c)
    for c in cols.positive:
        if c not in parsed:
            continue
        v = parsed[c]
        ok_parse = ~np.isnan(v) | _was_nan_literal(frame[c])
        flag(ok_parse & np.isnan(v), E.InvalidValueError, "price is NaN", c)
        flag(np.isinf(v), E.InvalidValueError, "value is infinite", c)
        flag(np.isfinite(v) & (v <= 0), E.InvalidValueError, "price must be positive", c)
    vol = parsed[cols.volume]
    flag(np.isnan(vol) & _was_nan_literal(frame[cols.volume]), E.InvalidValueError,
         "volume is NaN", cols.volume)
    flag(np.isinf(vol), E.InvalidValueError, "volume is infinite", cols.volume)
    flag(vol < 0, E.InvalidValueError, "volume is negative", cols.volume)

    hi, lo, op, cl = (parsed[cols.high], parsed[cols.low], parsed[cols.open], parsed[cols.close])
    flag(hi < lo, E.InvalidValueError,
         lambda i: f"high < low (high {hi[i]:g}, low {lo[i]:g})", cols.high)
    upper, lower = hi * (1 + tolerance), lo * (1 - tolerance)
    for c, v in ((cols.open, op), (cols.close, cl)):
        outside = (hi >= lo) & ((v > upper) | (v < lower))
        flag(outside, E.InvalidValueError,
             lambda i, v=v, c=c: f"{c.lower()} {v[i]:g} outside the day's range "
                                 f"[low {lo[i]:g}, high {hi[i]:g}]", c)

    # duplicate (instrument, date) among rows whose key parsed
    keyed = ~(missing_name | date_bad | date_missing)
    day = np.where(keyed, dates.astype("datetime64[D]").astype(np.int64), 0)
    key = pd.Series((codes.astype(np.int64) << 32) | (day & 0xFFFFFFFF))
    dup = keyed & key.duplicated(keep=False).to_numpy()
    if dup.any():
        files, rows = frame["_file"].to_numpy(), frame["_row"].to_numpy()
        key_values = key.to_numpy()

        def dup_reason(i: int) -> str:
            others = np.flatnonzero(dup & (key_values == key_values[i]))
            j = int(others[others != i][0])
            return (f"duplicate (instrument, date) ({uniques[codes[i]]}, "
                    f"{pd.Timestamp(dates[i]):%Y-%m-%d}); also at {files[j]} "
                    f"{raw.row_kind.get(str(files[j]), 'row')} {rows[j]}")
        flag(dup, E.DuplicateKeyError, dup_reason, cols.date)

    bad = np.zeros(n, dtype=bool)
    for p in problems:
        bad[p.position] = True
    warnings = []
    zero_vol = (vol == 0) & ~bad
    if zero_vol.any():
        i = int(np.flatnonzero(zero_vol)[0])
        warnings.append(f"{int(zero_vol.sum())} row(s) with zero volume accepted "
                        f"(first: {frame['_file'].iat[i]} "
                        f"{raw.row_kind.get(str(frame['_file'].iat[i]), 'row')} "
                        f"{frame['_row'].iat[i]})")
        for w in warnings:
            log.warning(w)
    good = ~bad
    parsed_frame = pd.DataFrame({c: parsed[c][good] for c in parsed})
    parsed_frame[cols.name] = pd.array(np.asarray(uniques, dtype=object), dtype="str").take(
        codes[good])
    parsed_frame[cols.date] = dates[good]
    if raw.kind == "yahoo":
        bars = yahoo_to_canonical(parsed_frame)
    else:
        bars = parsed_frame.reindex(columns=BAR_COLUMNS)
        if "vwap" not in parsed:
            bars["vwap"] = default_vwap(bars)
    bars = bars.sort_values(["instrument", "date"], kind="stable").reset_index(drop=True)
    return Validated(bars, _bad_rows(frame, problems, raw), raw.file_errors, warnings)


def first_error(raw: RawBars, validated: Validated) -> E.DataError | None:
    """The error ``--on-error fail`` raises: a file error first, else the first bad row."""
    n_problems = len(validated.bad_rows) + len(validated.file_errors)
    if validated.file_errors:
        err = validated.file_errors[0]
        err.more = n_problems - 1
        return type(err)(err.reason, file=err.file, row=err.row, column=err.column,
                         value=err.value, row_kind=err.row_kind, more=n_problems - 1)
    if len(validated.bad_rows):
        r = validated.bad_rows.iloc[0]
        return r["_error"](r["first_reason"], file=r["file"], row=int(r["row"]),
                           column=r["column"], value=r["value"], row_kind=r["row_kind"],
                           more=n_problems - 1)
    return None


def _bad_rows(frame: pd.DataFrame, problems: list[Problem], raw: RawBars) -> pd.DataFrame:
    if not problems:
        return _empty_bad()
    by_pos: dict[int, list[Problem]] = {}
    for p in problems:
        by_pos.setdefault(p.position, []).append(p)
    data_cols = [c for c in frame.columns if not c.startswith("_")]
    records = []
    for pos in sorted(by_pos):
        ps = by_pos[pos]
        err = ps[0].to_error(frame, raw.row_kind)
        records.append({
            "file": err.file, "row": err.row, "row_kind": err.row_kind, "column": err.column,
            "value": err.value,
            "reason": "; ".join(f"{p.column}: {p.reason}" if p.column else p.reason for p in ps),
            "first_reason": ps[0].reason, "_error": ps[0].error,
            "error_type": ps[0].error.__name__,
            "raw": {c: _jsonable(frame[c].iat[pos]) for c in data_cols},
        })
    return pd.DataFrame.from_records(records)


def _empty_bad() -> pd.DataFrame:
    return pd.DataFrame(columns=["file", "row", "row_kind", "column", "value", "reason",
                                 "first_reason", "_error", "error_type", "raw"])


def _jsonable(v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v.item() if hasattr(v, "item") else (v if isinstance(v, (int, float, str)) else str(v))


def _was_nan_literal(series: pd.Series) -> np.ndarray:
    """True where the value is a NaN the file really holds (not an unparseable string)."""
    if pd.api.types.is_numeric_dtype(series.dtype):
        return np.ones(len(series), dtype=bool)
    s = series.astype("string").str.strip().str.lower()
    return s.isin(["nan", "+nan", "-nan"]).fillna(False).to_numpy(dtype=bool)


def _parse_numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (float64 values, unparseable mask, missing mask)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        n = len(series)
        return np.full(n, np.nan), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        # A null in a numeric parquet column reads as NaN: the price rules name it.
        return values, np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    text = series.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
    values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan)
    nan_literal = _was_nan_literal(series)
    bad = np.isnan(values) & ~missing & ~nan_literal
    return values, bad, missing


def _in_ns_range(values: np.ndarray) -> np.ndarray:
    """Where a date lies in the range datetime64[ns] holds (year 0000 would wrap around)."""
    return (values >= np.datetime64("1677-09-22")) & (values <= np.datetime64("2262-04-11"))


def _parse_dates(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (datetime64[ns] values, unparseable mask, missing mask)."""
    n = len(series)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        s = series.dt.tz_localize(None) if getattr(series.dt, "tz", None) else series
        values = s.to_numpy(dtype="datetime64[ns]")
        missing = np.isnat(values)
        not_midnight = ~missing & (values != values.astype("datetime64[D]"))
        return values, not_midnight, missing
    if series.dtype == object and n and all(hasattr(v, "isoformat") or v is None
                                            for v in series.iloc[:5]):
        # python date objects (parquet date32 read by pandas)
        try:
            values = pd.to_datetime(series).to_numpy(dtype="datetime64[ns]")
            return values, np.zeros(n, dtype=bool), np.isnat(values)
        except (TypeError, ValueError):
            pass
    text = series.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
    arr = pa.array(text.array, type=pa.string())  # zero-copy for arrow-backed strings
    if not missing.any():  # clean YYYY-MM-DD text: Arrow's strict cast, 10x faster
        try:                 # (2019-02-30 fails it; NaT is outside the range below)
            days = pc.cast(arr, pa.date32()).to_numpy(zero_copy_only=False)
            if _in_ns_range(days).all():
                return days.astype("datetime64[ns]"), np.zeros(n, dtype=bool), missing
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some value is not plain YYYY-MM-DD: the checks below name it
    fast = pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls impossible days over (2019-02-30 -> 2019-03-02): a date is
    # only taken when it formats back to the text it came from.
    shaped = pc.match_substring_regex(arr, r"^\d{4}-\d{2}-\d{2}$")
    day = pc.cast(pc.utf8_slice_codeunits(pc.if_else(shaped, arr, "0000-00-00"), 8, 10),
                  pa.int64())
    exact = pc.and_(shaped, pc.equal(pc.day(fast), day))
    fast = pc.if_else(pc.fill_null(exact, False), fast, pa.scalar(None, fast.type))
    values = fast.to_numpy(zero_copy_only=False)
    values = np.where(_in_ns_range(values), values, np.datetime64("NaT")).astype("datetime64[ns]")
    retry = np.isnat(values) & ~missing
    if retry.any():  # other ISO 8601 spellings, e.g. 2015-01-12T00:00:00
        again = pd.to_datetime(text[retry], format="ISO8601", errors="coerce")
        again = again.to_numpy(dtype="datetime64[ns]")
        midnight = again == again.astype("datetime64[D]")
        values[retry] = np.where(midnight, again, np.datetime64("NaT"))
    bad = np.isnat(values) & ~missing
    return values, bad, missing
