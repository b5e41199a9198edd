"""The lake's tables, declared once: name, clustering and dedupe keys, file sizing.

Every Delta table under ``$MLOPS_HOME/lake`` is maintained by ``jobs.maintain``
(compaction, clustering, checkpoints, vacuum); this registry says how. A table
that is not listed here is still maintained with the default spec (compacted,
checkpointed and vacuumed, never re-sorted), so a new table is safe from day
one; adding its line makes maintenance cluster it the way its readers prune.

To add a table, add one ``register(TableSpec(...))`` line below:

- ``cluster_by``: the sort order of its data files. Writers that can (bars,
  features, events) write each commit sorted this way, and maintenance rewrites
  the table sorted this way, so readers prune files and row groups on the
  min/max statistics of the first columns (an instrument is a few row groups).
  Empty: keep insertion order (e.g. time order) and only compact.
- ``dedupe_key`` + ``latest_by``: maintenance keeps, per key, only the row with
  the highest ``latest_by`` (the features table appends recomputed rows and
  readers keep the newest; maintenance drops the superseded ones).
- ``target_file_rows`` / ``row_group_rows``: the size of rewritten files and of
  their row groups; ``compression`` and ``dictionary_columns`` how they are encoded.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableSpec:
    name: str
    cluster_by: tuple[str, ...] = ()
    dedupe_key: tuple[str, ...] = ()
    latest_by: str | None = None
    target_file_rows: int = 1_000_000
    row_group_rows: int = 16_384
    compression: str = "zstd"
    dictionary_columns: tuple[str, ...] | None = None  # None: dictionary-encode all
    # row groups record min/max of ``stats_columns`` only (a wide table's other
    # columns are never pruned on, and their statistics cost ~14% of a write)
    narrow_stats: bool = False
    # a Delta checkpoint every this many commits (opening replays the commits since
    # the last one); a checkpoint of a maintained table is ~1 ms to write
    checkpoint_interval: int = 5
    # the ingest's own bound on small files: when a commit would leave more than
    # ``tail_files`` files of under ``tail_rows`` rows, it merges the older ones into
    # one file sorted by ``cluster_by`` in the same commit (0: never; maintenance only)
    tail_files: int = 0
    tail_rows: int = 131_072
    # rewrite by date era (calendar years): maintenance rewrites only the eras that
    # files written since the last pass touch, each into files of that era alone
    # (named ``era-<year>-``); older eras' files stay as they are, so a daily pass
    # costs the newest era's rows, not the whole history's
    date_eras: bool = False
    # the columns whose min/max the Delta log keeps per file (Delta's
    # ``delta.dataSkippingStatsColumns``); () keeps delta-rs's default, the first 32
    # columns. A wide table names its pruning columns: without it delta-rs dropped
    # the stats of ``feature_set`` (column 183 of features), so a full run read every
    # old file's feature_set column to learn what to replace (~30 ms of its commit),
    # and the log kept min/max of 30 factor columns nobody prunes on
    log_stats_columns: tuple[str, ...] = ()
    description: str = ""

    @property
    def stats_columns(self) -> tuple[str, ...]:
        """Columns whose min/max rewritten files record in the log (what readers prune
        on): the clustering columns and the usual range columns."""
        return tuple(dict.fromkeys(self.cluster_by + ("date", "data_version", "offset",
                                                      "time")))

    def __post_init__(self):
        if bool(self.dedupe_key) != bool(self.latest_by):
            raise ValueError(f"table {self.name!r}: dedupe_key and latest_by go together")
        if self.row_group_rows < 1 or self.target_file_rows < self.row_group_rows:
            raise ValueError(f"table {self.name!r}: need 1 <= row_group_rows <= "
                             "target_file_rows")


TABLES: dict[str, TableSpec] = {}


def register(spec: TableSpec) -> TableSpec:
    TABLES[spec.name] = spec
    return spec


def spec_for(name: str) -> TableSpec:
    """The registered spec of a table, or the safe default for an unlisted one."""
    return TABLES.get(name) or TableSpec(name, description="not registered: compact only")


# An instrument's history (1,260 days at 5 years) is one or two row groups of 8,192
# rows; a file holds ~1M rows (a few tens of MB of bars).
# Bars and features take one or two commits a day: a checkpoint at each keeps their
# open time that of one checkpoint read (~3 ms) whatever the days since maintenance.
# Each daily ingest is one file spanning every instrument, which no min/max prunes:
# a one-instrument read opened every daily file since the last maintenance (~1.6 ms
# each, 5,000 stocks); the ingest keeps at most 3 such small files (its own + 2).
# A merged file stops growing at 65,536 rows (13 days of 5,000 stocks): merging more
# would cost an ingest more than a day's own write. Prices are distinct floats:
# dictionary-encoding them made writing 95k rows 2.5x slower (54 -> 22 ms, measured)
# for 20% larger files. LZ4 (raw), not ZSTD: a one-instrument read decodes one row
# group of each file it opens, and ZSTD made that 1.3 ms a group against LZ4's 0.6 ms
# (5,000-row daily file; 1.6 vs 0.8 ms for 8,192 rows) for files ~40% larger, measured.
# Row groups record min/max of the pruning columns only (a smaller footer to parse).
register(TableSpec("bars", cluster_by=("instrument", "date"), row_group_rows=8_192,
                   target_file_rows=2_000_000, checkpoint_interval=1, tail_files=3,
                   tail_rows=65_536, dictionary_columns=("instrument", "factor"),
                   compression="lz4", narrow_stats=True,
                   description="daily bars; one data version per ingest commit"))
# ~190 float columns: 8,192 rows are ~7 MB; files of ~250k rows stay ~200 MB.
register(TableSpec("features", cluster_by=("feature_set", "instrument", "date"),
                   dedupe_key=("feature_set", "instrument", "date"), latest_by="data_version",
                   row_group_rows=8_192, target_file_rows=262_144, compression="lz4",
                   dictionary_columns=("instrument", "feature_set"), narrow_stats=True,
                   checkpoint_interval=1, date_eras=True,
                   log_stats_columns=("feature_set", "instrument", "date", "data_version"),
                   description="indicators + Alpha158 + label per feature set"))
# Events: a checkpoint at every commit too. At interval 5 a young table (day 1: a few
# commits, no checkpoint) opened from JSON alone and every later one from a checkpoint
# plus up to 4 commits: ~2x day 1's open. It costs a publish ~9 ms (6 -> 15 ms,
# measured); events are a few per day and per deployment step.
register(TableSpec("events", cluster_by=("offset",), checkpoint_interval=1,
                   description="the event bus; offsets materialised in the rows"))
register(TableSpec("predictions", description="served and batch predictions, time order"))
register(TableSpec("quarantine", cluster_by=("ingest_id",),
                   description="rejected rows and files with the reason"))
# Monitoring (cluster/monitoring/store.py): readers filter on version and date.
register(TableSpec("monitoring", cluster_by=("model_id", "kind", "date"),
                   description="realised performance, IC decay, drift score per version/day"))
register(TableSpec("drift", cluster_by=("model_id", "date", "feature"),
                   description="PSI / KS / tail share per version, day and feature"))
register(TableSpec("alerts", description="alert transitions (raised/resolved/acked), time order"))
register(TableSpec("ab_daily", cluster_by=("rollout_id", "date", "arm"),
                   dedupe_key=("rollout_id", "arm", "date"), latest_by="evaluated_at",
                   description="A/B: served rows and realised RankIC per rollout, arm and day"))
