"""Which columns a source file may have, and how they are told apart."""
from __future__ import annotations

from cluster.errors import MissingFieldError, SchemaMismatchError
from cluster.schema import BAR_COLUMNS, YAHOO_COLUMNS

YAHOO_REQUIRED = [c for c in YAHOO_COLUMNS if c != "Name"]
CANONICAL_REQUIRED = [c for c in BAR_COLUMNS if c != "vwap"]
CANONICAL_ALLOWED = set(BAR_COLUMNS)
YAHOO_ALLOWED = set(YAHOO_COLUMNS)

# pandas writes its index into parquet under these names; they are not data.
IGNORED_PREFIXES = ("__index_level_",)


def classify_columns(columns: list[str], file: str, *, name_required: bool) -> str:
    """Return ``"yahoo"`` or ``"canonical"``, or raise naming the bad column."""
    cols = [c for c in columns if not c.startswith(IGNORED_PREFIXES)]
    seen = set()
    for c in cols:
        if c in seen:
            raise SchemaMismatchError("column appears twice in the header", file=file, column=c)
        seen.add(c)
    kind = "canonical" if {"instrument", "date"} & set(cols) or (
        "close" in cols and "Close" not in cols) else "yahoo"
    if kind == "yahoo":
        allowed, required = YAHOO_ALLOWED, list(YAHOO_REQUIRED) + (["Name"] if name_required else [])
    else:
        allowed, required = CANONICAL_ALLOWED, CANONICAL_REQUIRED
    for c in cols:
        if c not in allowed:
            hint = "" if c.lower() not in {a.lower() for a in allowed} else " (names are case-sensitive)"
            raise SchemaMismatchError(
                f"unknown column; expected the {kind} columns {sorted(allowed)}{hint}",
                file=file, column=c)
    for c in required:
        if c not in cols:
            raise MissingFieldError("required column is missing", file=file, column=c)
    return kind
