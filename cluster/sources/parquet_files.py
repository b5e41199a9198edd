"""A parquet file or folder, in Yahoo columns or in canonical columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.errors import CorruptFileError, DataError, EmptySourceError
from cluster.sources.base import RawBars
from cluster.sources.columns import IGNORED_PREFIXES, classify_columns
from cluster.sources.csv_folder import assemble, fill_name_from_filename, list_files


def read_parquet_file(path: Path):
    file = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise CorruptFileError(f"unreadable or corrupt parquet: {exc}", file=file) from None
    names = [n for n in table.column_names if not n.startswith(IGNORED_PREFIXES)]
    kind = classify_columns(names, file, name_required=False)
    if table.num_rows == 0:
        raise EmptySourceError("parquet file has no rows", file=file)
    frame = table.select(names).to_pandas()
    if kind == "yahoo" and "Name" not in frame.columns:
        fill_name_from_filename(frame, path)
    frame["_file"] = file
    frame["_row"] = np.arange(len(frame), dtype=np.int64)
    return frame, kind


def read_parquet_source(path: Path, progress=None) -> RawBars:
    files = list_files(path, [".parquet", ".pq"])
    parts, kinds, errors = [], {}, []
    for f in files:
        try:
            frame, kind = read_parquet_file(f)
        except DataError as exc:
            errors.append(exc)
        else:
            parts.append(frame)
            kinds[str(f)] = kind
        if progress is not None:
            progress.update(1)
    return assemble(parts, kinds, errors, str(path), row_kind="row", files=len(files))
