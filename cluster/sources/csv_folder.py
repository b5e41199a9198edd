"""Yahoo-style CSV files (``<TICKER>_data.csv``), one file or a folder of them.

Read with the ``csv`` module so every row keeps its physical line number and a
truncated or malformed line is named exactly; values stay strings here and are
parsed, vectorised, in validation.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from cluster.errors import (CorruptFileError, DataError, EmptySourceError, MissingFieldError,
                            SchemaMismatchError)
from cluster.sources.base import RawBars, concat_raw
from cluster.sources.columns import classify_columns


def ticker_from_filename(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_data")] if stem.endswith("_data") else stem


def fill_name_from_filename(frame: pd.DataFrame, path: Path) -> None:
    """A per-ticker file may leave out ``Name``: the file name gives the ticker.
    A file with several rows per date cannot be one ticker's, so it must have it."""
    if frame["Date"].duplicated().any():
        raise MissingFieldError("required column is missing: the file holds several rows per "
                                "date, so the ticker cannot be taken from the file name",
                                file=str(path), column="Name")
    frame["Name"] = ticker_from_filename(path)


def read_csv_file(path: Path) -> tuple[pd.DataFrame, str]:
    """One CSV file -> (raw string frame with _file/_row, kind). Raises DataError."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})",
                               file=file) from None
    except OSError as exc:
        raise CorruptFileError(f"cannot be read: {exc.strerror}", file=file) from None
    if "\x00" in text:
        raise CorruptFileError("binary content (NUL bytes) in a CSV file", file=file)
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise CorruptFileError(f"malformed CSV header: {exc}", file=file, row=1,
                               row_kind="line") from None
    if not header or not any(h.strip() for h in header):
        raise EmptySourceError("empty file (no header line)", file=file)
    header = [h.strip() for h in header]
    kind = classify_columns(header, file, name_required=False)
    width = len(header)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if len(record) != width:
                what = "truncated line" if len(record) < width else "malformed line"
                raise CorruptFileError(f"{what}: {len(record)} fields where the header has {width}",
                                       file=file, row=reader.line_num, row_kind="line")
            rows.append(record)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise CorruptFileError(f"malformed CSV: {exc}", file=file, row=reader.line_num + 1,
                               row_kind="line") from None
    if not rows:
        raise EmptySourceError("file has a header but no data rows", file=file)
    frame = pd.DataFrame(np.array(rows, dtype=object), columns=header)
    if kind == "yahoo" and "Name" not in frame.columns:
        fill_name_from_filename(frame, path)
    frame["_file"] = file
    frame["_row"] = np.asarray(lines, dtype=np.int64)
    return frame, kind


def list_files(path: Path, suffixes: Iterable[str]) -> list[Path]:
    suffixes = tuple(suffixes)
    if path.is_file():
        return [path]
    if not path.exists():
        raise EmptySourceError("source path does not exist", file=str(path))
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise EmptySourceError(f"folder holds no {'/'.join(suffixes)} files", file=str(path))
    return files


def read_csv_source(path: Path, progress=None, files: list[Path] | None = None) -> RawBars:
    files = files if files is not None else list_files(path, [".csv"])
    parts, kinds, errors = [], {}, []
    for f in files:
        try:
            frame, kind = read_csv_file(f)
        except DataError as exc:
            errors.append(exc)
        else:
            parts.append(frame)
            kinds[str(f)] = kind
        if progress is not None:
            progress.update(1)
    return assemble(parts, kinds, errors, str(path), row_kind="line", files=len(files))


def assemble(parts: list[pd.DataFrame], kinds: dict[str, str], errors: list[DataError],
             source: str, row_kind: str, files: int) -> RawBars:
    """Join per-file frames; all files of one ingest must be of one kind."""
    distinct = sorted(set(kinds.values()))
    if len(distinct) > 1:
        first = {k: f for f, k in reversed(list(kinds.items()))}
        raise SchemaMismatchError(
            f"files mix Yahoo and canonical columns (e.g. {first['yahoo']} is Yahoo); "
            "ingest them separately", file=first["canonical"])
    frame = concat_raw(parts)
    return RawBars(frame=frame, kind=distinct[0] if distinct else "yahoo", source=source,
                   row_kind={f: row_kind for f in kinds}, file_errors=errors, files=files)
