"""What every source reader hands to validation: raw rows with provenance."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cluster.errors import DataError


@dataclass
class RawBars:
    """Rows as read, before parsing and validation.

    ``frame`` holds either Yahoo columns (``kind="yahoo"``) or canonical columns
    (``kind="canonical"``), values still as read (strings for CSV), plus the
    provenance columns ``_file`` and ``_row``. ``row_kind[file]`` says what
    ``_row`` counts in that file: ``"line"`` (1-based, CSV) or ``"row"`` (0-based).
    ``file_errors`` are whole files that could not be read: in quarantine mode
    they are recorded and skipped, in fail mode the first one is raised.
    """

    frame: pd.DataFrame
    kind: str
    source: str
    row_kind: dict[str, str] = field(default_factory=dict)
    file_errors: list[DataError] = field(default_factory=list)
    files: int = 0


def concat_raw(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame()
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)
