"""Typed errors. Data errors name the file, the row (or line) and the column.

The hierarchy follows the seed's recovery idea: a corrupt file, a schema
mismatch and missing fields are different failures with different fixes, so a
caller (or ``--on-error quarantine``) can tell them apart.
"""
from __future__ import annotations


class MlopsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(MlopsError):
    """A settings file or variable is invalid; the message names the key."""


class DataError(MlopsError):
    """Bad input data. ``file``, ``row`` (1-based line for CSV, 0-based row for
    parquet), ``column`` and ``value`` say where; ``reason`` says what."""

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None, value: object = None, row_kind: str = "row",
                 more: int = 0):
        self.reason = reason
        self.file = file
        self.row = row
        self.column = column
        self.value = value
        self.row_kind = row_kind
        self.more = more
        super().__init__(self._message())

    def location(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.row is not None:
            parts.append(f"{self.row_kind} {self.row}")
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        return ", ".join(parts)

    def _message(self) -> str:
        where = self.location()
        msg = f"{where}: {self.reason}" if where else self.reason
        if self.value is not None:
            msg += f" (value {self.value!r})"
        if self.more:
            msg += f" [and {self.more} more problem(s) of this input]"
        return msg


class CorruptFileError(DataError):
    """The file cannot be read at all (not parquet, not text, truncated binary)."""


class SchemaMismatchError(DataError):
    """Columns are unknown, or of a kind that cannot be the expected type."""


class MissingFieldError(DataError):
    """A required column is absent, or a required value is empty."""


class InvalidValueError(DataError):
    """A value is unparseable or breaks a rule (NaN price, high < low, ...)."""


class DuplicateKeyError(DataError):
    """The same (instrument, date) appears more than once in one input."""


class EmptySourceError(DataError):
    """An empty file or a folder with no data files."""


class LakeError(MlopsError):
    """A lake table is missing, or a version does not exist."""


class LayoutError(LakeError):
    """A lake table has the layout of an older release; ``jobs.maintain --migrate``
    rewrites it."""


class TrainingStopped(MlopsError):
    """A training run was stopped from outside (its stop flag was set)."""


class NotFoundError(MlopsError):
    """What a request names does not exist (no such instrument, run, job, version)."""
