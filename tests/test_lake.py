"""The bars table: data versions, reads as of a version, diffs, atomic commits."""
import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from cluster.lake.bars import BarsTable
from cluster.schema import BAR_COLUMNS, KEY
from tests.strategies import valid_bars


def norm(frame):
    return frame[BAR_COLUMNS].sort_values(KEY).reset_index(drop=True)


@st.composite
def ingest_sequences(draw):
    """A first batch, then batches that append, restate or repeat earlier rows."""
    first = draw(valid_bars())
    batches = [first]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["append", "restate", "repeat", "mixed"]))
        new = draw(valid_bars())
        prev = batches[-1].reset_index(drop=True)
        if kind == "repeat":
            batches.append(prev.copy())
        elif kind == "restate":
            changed = prev.copy()
            pick = draw(st.lists(st.integers(0, len(prev) - 1), min_size=1, max_size=3))
            changed.loc[pick, "close"] = changed.loc[pick, "close"] * 1.01
            changed.loc[pick, "high"] = changed.loc[pick, ["high", "close"]].max(axis=1)
            batches.append(changed)
        elif kind == "append":
            batches.append(new)
        else:
            batches.append(pd.concat([prev.head(2).assign(volume=prev.head(2)["volume"] + 1),
                                      new]).drop_duplicates(KEY, keep="first"))
    return batches


@given(batches=ingest_sequences(), tail=st.sampled_from([None, 1, 2]))
def test_property8_read_at_version_is_exactly_what_was_ingested(batches, tail):
    """Feature: mlops-optimization, Property 8: reading at version v returns exactly what
    was ingested up to v, whatever sequence of appends and restatements came before
    (also when ingests merge the small files before them: ``tail``)."""
    with tempfile.TemporaryDirectory() as d:
        table = BarsTable(Path(d))
        if tail is not None:
            table.spec = dataclasses.replace(table.spec, tail_files=tail)
        expected: dict[int, pd.DataFrame] = {}
        state = pd.DataFrame(columns=BAR_COLUMNS)
        for batch in batches:
            before = table.version()
            result = table.commit(batch, source="test")
            state = pd.concat([state[~state.set_index(KEY).index.isin(
                batch.set_index(KEY).index)], batch]) if len(state) else batch
            if result.created:
                assert result.data_version == (0 if before is None else before + 1)
                expected[result.data_version] = norm(state)
            else:
                assert result.data_version == before
                pd.testing.assert_frame_equal(norm(table.read()), norm(state),
                                              check_dtype=False)
        for version, frame in expected.items():
            got = norm(table.read(version))
            pd.testing.assert_frame_equal(got, frame, check_dtype=False)
        versions = table.versions()
        assert [v["version"] for v in versions] == sorted(expected)
        assert all(v["rows"] == len(expected[v["version"]]) for v in versions)


def test_commit_counts_added_restated_and_skips_identical(tmp_path, ):
    bars = pd.DataFrame({
        "instrument": ["A", "A", "B"], "date": pd.to_datetime(["2020-01-01", "2020-01-02",
                                                                "2020-01-01"]),
        "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0, "factor": 1.0,
        "vwap": 1.3})
    t = BarsTable(tmp_path)
    r0 = t.commit(bars, "s")
    assert (r0.data_version, r0.rows_added, r0.rows_restated) == (0, 3, 0)
    assert not t.commit(bars, "s").created
    more = bars.copy()
    more.loc[0, "close"] = 1.6
    more = pd.concat([more, bars.iloc[[2]].assign(date=pd.Timestamp("2020-01-02"))])
    r1 = t.commit(more, "s")
    assert (r1.data_version, r1.rows_added, r1.rows_restated) == (1, 1, 1)
    diff = t.diff(0, 1)
    assert diff["rows_added"] == 1 and diff["rows_restated"] == 1
    assert diff["dates_added"] == [] and diff["instruments_added"] == []
    assert diff["restated"] == [{"instrument": "A", "date": "2020-01-01"}]
    assert t.read(0).loc[0, "close"] == 1.5 and t.read(1).loc[0, "close"] == 1.6
    only_b = t.read(instruments=["B"])
    assert set(only_b["instrument"]) == {"B"} and len(only_b) == 2
    v = t.versions()
    assert [x["rows"] for x in v] == [3, 4]
    assert v[1]["start"] == "2020-01-01" and v[1]["end"] == "2020-01-02"
    assert v[1]["instruments"] == 2 and v[1]["status"] == "ok"


def test_failed_commit_leaves_previous_version(tmp_path, monkeypatch):
    bars = pd.DataFrame({"instrument": ["A"], "date": pd.to_datetime(["2020-01-01"]),
                         "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0,
                         "factor": 1.0, "vwap": 1.0})
    t = BarsTable(tmp_path)
    t.commit(bars, "s")
    files = sorted(t.path.glob("*.parquet"))
    from cluster.lake import tables

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(tables, "commit_files", broken)
    with pytest.raises(OSError):
        t.commit(bars.assign(date=pd.Timestamp("2020-01-02")), "s")
    assert t.version() == 0
    pd.testing.assert_frame_equal(norm(t.read()), norm(bars), check_dtype=False)
    assert sorted(t.path.glob("*.parquet")) == files  # the failed commit's file is gone


def test_one_instrument_is_a_few_row_groups_of_unpartitioned_sorted_files(tmp_path):
    """Not partitioned: a commit is few files sorted by (instrument, date) whose row
    groups are small, so reading one instrument prunes files on the log's statistics
    and row groups on the file's own."""
    import dataclasses

    import pyarrow.dataset as ds
    days = pd.bdate_range("2020-01-01", periods=12)
    bars = pd.DataFrame([{"instrument": i, "date": d, "open": 1.0, "high": 2.0, "low": 0.5,
                          "close": 1.5, "volume": 1.0, "factor": 1.0, "vwap": 1.0}
                         for d in days for i in "CAB"])
    t = BarsTable(tmp_path)
    t.spec = dataclasses.replace(t.spec, row_group_rows=4)
    t.commit(bars, "s")
    assert not [p for p in t.path.iterdir() if p.is_dir() and not p.name.startswith("_")]
    files = list(t.path.glob("*.parquet"))
    assert len(files) == 1
    frag = next(ds.dataset(files[0], format="parquet").get_fragments())
    stored = frag.to_table(columns=["instrument", "date"]).to_pandas()
    assert stored.equals(stored.sort_values(["instrument", "date"], ignore_index=True))
    groups = frag.split_by_row_group(ds.field("instrument") == "B")
    assert len(groups) == 3 and frag.metadata.num_row_groups == 9
    assert set(t.read(instruments=["B"])["instrument"]) == {"B"}
    later = bars[bars["date"] == days[-1]].assign(date=pd.Timestamp("2020-02-03"))
    t.commit(later, "s")
    from cluster.lake import tables
    dt = tables.open_table(t.path)
    assert len(t._files(dt, None, "2020-02-01", None)) == 1  # date-pruned on the log
    assert t.instruments() == ["A", "B", "C"] and len(t.calendar()) == 13
    assert len(t.changes(after=0)) == 3


def test_daily_ingests_merge_their_small_files_and_keep_every_version(tmp_path):
    """Each daily commit is one file spanning every instrument (no min/max prunes it):
    past ``tail_files`` small files, an ingest merges the older ones into one file
    sorted by (instrument, date) in its own commit. Rows keep their data_version, so
    reads as of every version and the change feed after every version are exact, and
    the newest version's changes are its own file alone."""
    import pyarrow.dataset as ds

    from cluster.lake import tables
    days = pd.bdate_range("2020-01-01", periods=8)
    rows = [{"instrument": i, "date": d, "open": 1.0 + k, "high": 2.0 + k, "low": 0.5,
             "close": 1.5 + k, "volume": 1.0, "factor": 1.0, "vwap": 1.0}
            for k, d in enumerate(days) for i in "CAB"]
    bars = pd.DataFrame(rows)
    t = BarsTable(tmp_path)
    t.spec = dataclasses.replace(t.spec, tail_files=2)
    for d in days:
        t.commit(bars[bars["date"] == d], "day")
        assert len(tables.open_table(t.path).file_uris()) <= 2
    for v, d in enumerate(days):
        pd.testing.assert_frame_equal(norm(t.read(v)), norm(bars[bars["date"] <= d]),
                                      check_dtype=False)
        got = t.changes(after=v)
        pd.testing.assert_frame_equal(norm(got), norm(bars[bars["date"] > d]),
                                      check_dtype=False)
        assert (got["version"] == got["date"].map({x: k for k, x in enumerate(days)})).all()
    dt = tables.open_table(t.path)
    assert len(t._files(dt, after=len(days) - 2)) == 1
    merged = [f for f in dt.file_uris() if ds.dataset(f).count_rows() > 3]
    stored = ds.dataset(merged[0]).to_table(columns=["instrument", "date"]).to_pandas()
    assert stored.equals(stored.sort_values(["instrument", "date"], ignore_index=True))
    versions = t.versions()
    assert [v["rows"] for v in versions] == [3 * (k + 1) for k in range(len(days))]


def test_unknown_version_is_a_clear_error(tmp_path):
    from cluster.errors import LakeError
    t = BarsTable(tmp_path)
    with pytest.raises(LakeError, match="nothing ingested"):
        t.read()
    t.commit(pd.DataFrame({"instrument": ["A"], "date": pd.to_datetime(["2020-01-01"]),
                           "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0,
                           "factor": 1.0, "vwap": 1.0}), "s")
    with pytest.raises(LakeError, match="no data version 5"):
        t.read(5)


@st.composite
def instrument_files(draw):
    """Data files of (instrument, date, value) rows: sorted and declared so (binary
    search over row groups), or in any order and undeclared (each group tested);
    row groups of 1..7 rows, so instruments straddle groups and files."""
    names = [f"S{i:02d}" for i in range(draw(st.integers(1, 12)))]
    files = []
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.lists(st.tuples(st.sampled_from(names), st.integers(0, 40),
                                       st.floats(-1e3, 1e3)), min_size=0, max_size=40))
        frame = pd.DataFrame(rows, columns=["instrument", "day", "value"])
        sort = draw(st.booleans())
        if sort:
            frame = frame.sort_values(["instrument", "day"], kind="stable")
        files.append((frame.reset_index(drop=True), sort, draw(st.integers(1, 7))))
    wanted = draw(st.lists(st.sampled_from(names + ["ZZ", "A"]), min_size=1, max_size=4,
                           unique=True))
    lo = draw(st.one_of(st.none(), st.integers(0, 40)))
    return files, wanted, lo


@settings(max_examples=150, deadline=None)
@given(instrument_files())
def test_read_instruments_equals_a_filter_of_every_row(case):
    """The one-instrument reader (row groups chosen on their statistics, binary search
    in files declared sorted) returns exactly the rows a full scan would keep."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from cluster.lake import tables
    files, wanted, lo = case
    schema = pa.schema([("instrument", pa.string()), ("day", pa.int64()),
                        ("value", pa.float64())])
    with tempfile.TemporaryDirectory() as root:
        paths = []
        for k, (frame, sort, group) in enumerate(files):
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            tables.write_data_file(Path(root), table, f"f{k}.parquet", row_group_rows=group,
                                   stats_columns=("instrument",), compression="lz4",
                                   row_group_stats=["instrument", "day"],
                                   sorted_by=("instrument", "day") if sort else ())
            paths.append(f"{root}/f{k}.parquet")
        expr = None if lo is None else ds.field("day") >= lo
        got = tables.read_instruments(paths, schema, ["instrument", "day", "value"], wanted,
                                      expr).to_pandas()
    whole = pd.concat([f for f, _, _ in files], ignore_index=True)
    keep = whole["instrument"].isin(wanted) & (whole["day"] >= (lo if lo is not None else -1))
    order = ["instrument", "day", "value"]
    expect = whole[keep].sort_values(order).reset_index(drop=True)
    assert_frame = got.sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(assert_frame, expect, check_dtype=False)


def test_rebased_commit_reports_the_version_it_landed_at(tmp_path):
    """A commit prepared on an old snapshot lands after another writer's (Delta rebases
    a blind append); the version returned is its own, found from the log."""
    import pyarrow as pa

    from cluster.lake import tables
    path = tmp_path / "t"
    schema = pa.schema([("k", pa.int64())])

    def write(k: int) -> dict:
        return tables.write_data_file(path, pa.table({"k": [k]}, schema=schema),
                                      tables.data_file_name(), row_group_rows=8,
                                      stats_columns=("k",))
    assert tables.commit_files(path, None, [write(0)], schema, {"n": 0}) == 0
    stale = tables.open_table(path)                       # a writer reads version 0
    other = tables.open_table(path)
    assert tables.commit_files(path, other, [write(1)], schema, {"n": 1}) == 1
    assert tables.commit_files(path, other, [write(2)], schema, {"n": 2}) == 2
    landed = tables.commit_files(path, stale, [write(3)], schema, {"n": 3})
    assert landed == 3 and tables.commit_meta_at(path, landed) == {"n": 3}
    assert stale.version() == 0  # the caller's handle stays as it read the table
    got = sorted(tables.open_table(path).to_pyarrow_table().column("k").to_pylist())
    assert got == [0, 1, 2, 3]
