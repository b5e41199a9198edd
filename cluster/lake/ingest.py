"""Ingest: read a source, validate, commit one data version, announce it.

``on_error="fail"`` (default) refuses the whole input on the first problem and
leaves the lake exactly as it was. ``on_error="quarantine"`` lands the good rows
and writes the bad rows (and unreadable files) to the ``quarantine`` table with
the reason; the summary counts both.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from cluster.config import Settings, get_settings
from cluster.errors import EmptySourceError
from cluster.events import DataSynced, EventBus, get_bus
from cluster.lake.bars import BarsTable
from cluster.lake.quarantine import QuarantineTable
from cluster.progress import progress_bar
from cluster.sources import count_units, detect_format, read_source
from cluster.validation import first_error, validate

log = logging.getLogger(__name__)


def ingest(source: str, fmt: str = "auto", on_error: str | None = None, *,
           stocks: int = 50, days: int = 500, seed: int = 0,
           regime_shift_at: float | None = None, signal_ic: float | None = None,
           settings: Settings | None = None, bus: EventBus | None = None,
           show_progress: bool = False) -> dict:
    """Returns the JSON summary ``jobs.ingest`` prints. Raises DataError on refusal."""
    settings = settings or get_settings()
    on_error = on_error or settings.ingest.on_error
    if on_error not in ("fail", "quarantine"):
        raise ValueError(f"on_error must be 'fail' or 'quarantine', not {on_error!r}")
    started = time.perf_counter()
    fmt = detect_format(source) if fmt == "auto" else fmt
    units = count_units(source, fmt)
    with progress_bar(total=units, desc=f"reading {fmt}", unit="file",
                      enabled=show_progress and units > 1) as bar:
        raw = read_source(source, fmt, stocks=stocks, days=days, seed=seed, progress=bar,
                          regime_shift_at=regime_shift_at, signal_ic=signal_ic)
    checked = validate(raw, settings.ingest.range_tolerance)
    if on_error == "fail":
        error = first_error(raw, checked)
        if error is not None:
            raise error
    n_bad_rows, n_bad_files = len(checked.bad_rows), len(checked.file_errors)
    if checked.bars.empty and not (n_bad_rows or n_bad_files):
        raise EmptySourceError("source holds no rows", file=raw.source)

    lake = settings.lake_dir
    bars_table = BarsTable(lake)
    ingest_id = uuid.uuid4().hex
    if n_bad_rows or n_bad_files:
        QuarantineTable(lake).append(ingest_id, raw.source, checked.bad_rows, checked.file_errors)
        log.warning("quarantined %d row(s) and %d file(s) of %s (ingest %s)",
                    n_bad_rows, n_bad_files, raw.source, ingest_id)
    extra = {"ingest_id": ingest_id, "rows_quarantined": n_bad_rows,
             "files_quarantined": n_bad_files,
             "status": "partial" if (n_bad_rows or n_bad_files) else "ok"}
    if checked.bars.empty:
        result = None
        stats = bars_table.stats()
        version = bars_table.data_version()
    else:
        result = bars_table.commit(checked.bars, raw.source, extra)
        stats, version = result.summary, result.data_version
        if result.created:
            (bus or get_bus(lake)).publish(DataSynced(
                data_version=result.data_version, instruments=result.instruments_changed,
                start=result.start.date(), end=result.end.date(), rows_added=result.rows_added,
                rows_restated=result.rows_restated, source=raw.source))
    summary = {
        "data_version": version if version is not None else -1,
        "rows_added": result.rows_added if result else 0,
        "rows_restated": result.rows_restated if result else 0,
        "rows_total": int(stats["rows"]),
        "instruments": int(stats["instruments"]),
        "start": stats["start"],
        "end": stats["end"],
        "created": bool(result and result.created),
        "rows_quarantined": n_bad_rows,
        "files_quarantined": n_bad_files,
        "ingest_id": ingest_id,
        "warnings": checked.warnings,
        "source": raw.source,
        "lake": str(lake),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if fmt == "synthetic":
        from cluster.sources.synthetic import regime_shift_day
        summary["regime_shift_day"] = regime_shift_day(days, regime_shift_at)
        # the planted signal's theoretical daily RankIC (null: no planted signal)
        summary["planted_rank_ic"] = None if signal_ic is None else float(signal_ic)
    return summary
