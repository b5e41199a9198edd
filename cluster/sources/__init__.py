"""Readers that all end in the canonical bars schema (via ``cluster.validation``).

``read_source(path_or_"synthetic", fmt)`` picks the reader: a folder or file of
Yahoo-style CSVs, a parquet file or folder (Yahoo or canonical columns), a Qlib
provider directory, or the seeded synthetic market.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.errors import EmptySourceError, SchemaMismatchError
from cluster.sources.base import RawBars
from cluster.sources.csv_folder import read_csv_source
from cluster.sources.parquet_files import read_parquet_source
from cluster.sources.qlib_provider import is_qlib_dir, read_qlib_source
from cluster.sources.synthetic import synthetic_market

FORMATS = ("auto", "csv", "parquet", "qlib", "synthetic")


def detect_format(source: str) -> str:
    if source == "synthetic":
        return "synthetic"
    path = Path(source)
    if not path.exists():
        raise EmptySourceError("source path does not exist", file=source)
    if is_qlib_dir(path):
        return "qlib"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix in (".parquet", ".pq"):
            return "parquet"
        raise SchemaMismatchError(f"cannot tell the format from the suffix {suffix!r}; "
                                  "pass --format csv|parquet", file=source)
    suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
    found = [f for f, s in (("csv", {".csv"}), ("parquet", {".parquet", ".pq"})) if suffixes & s]
    if len(found) == 1:
        return found[0]
    if not found:
        raise EmptySourceError("folder holds no .csv or .parquet files", file=source)
    raise SchemaMismatchError("folder holds both CSV and parquet files; pass --format",
                              file=source)


def count_units(source: str, fmt: str) -> int:
    """How many files (or instruments) a reader will visit, for a progress bar."""
    path = Path(source)
    if fmt == "synthetic" or path.is_file():
        return 1
    if fmt == "qlib":
        return sum(1 for p in (path / "features").iterdir() if p.is_dir())
    suffixes = {".csv"} if fmt == "csv" else {".parquet", ".pq"}
    return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def read_source(source: str, fmt: str = "auto", *, stocks: int = 50, days: int = 500,
                seed: int = 0, progress=None, regime_shift_at: float | None = None,
                signal_ic: float | None = None) -> RawBars:
    fmt = detect_format(source) if fmt == "auto" else fmt
    if regime_shift_at is not None and fmt != "synthetic":
        raise ValueError("--regime-shift-at applies to the synthetic source only")
    if signal_ic is not None and fmt != "synthetic":
        raise ValueError("--signal-ic applies to the synthetic source only")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    if fmt == "synthetic":
        frame = synthetic_market(stocks, days, seed, regime_shift_at=regime_shift_at,
                                 signal_ic=signal_ic)
        label = f"synthetic(stocks={stocks},days={days},seed={seed})"
        if regime_shift_at is not None:
            label = label[:-1] + f",regime_shift_at={regime_shift_at:g})"
        if signal_ic is not None:
            label = label[:-1] + f",signal_ic={signal_ic:g})"
        frame["_file"] = label
        frame["_row"] = np.arange(len(frame), dtype=np.int64)
        return RawBars(frame=frame, kind="yahoo", source=label, row_kind={label: "row"}, files=1)
    path = Path(source)
    if fmt == "csv":
        return read_csv_source(path, progress)
    if fmt == "parquet":
        return read_parquet_source(path, progress)
    return read_qlib_source(path, progress)
