"""Predictions per hour (the console dashboard's chart): the rows made in each hour,
per version and source, equal a plain group-by of the same rows; the Delta read
keeps only the rows from ``since`` on, across several commits."""
from __future__ import annotations

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from cluster.lake import predictions as P

T0 = pd.Timestamp("2026-03-02 00:00", tz="UTC")


def _rows(items) -> list[tuple]:
    return [(float((T0 + pd.Timedelta(minutes=m)).timestamp()), f"r{i}", None, v, "S1",
             "2026-03-02", 1, 0.5, 1.0, src == "shadow", 1, v, None, None, src)
            for i, (m, v, src) in enumerate(items)]


def _group_by(items, since=T0) -> pd.DataFrame:
    frame = pd.DataFrame(items, columns=["m", "version", "source"])
    frame["time"] = T0 + pd.to_timedelta(frame["m"], unit="min")
    frame = frame[frame["time"] >= since]
    return (frame.assign(hour=frame["time"].dt.floor("h"))
            .groupby(["hour", "version", "source"]).size().rename("count").reset_index())


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(map(tuple, got[["version", "source", "count"]].to_numpy())) == \
        list(map(tuple, want[["version", "source", "count"]].to_numpy()))
    assert [h.isoformat() for h in got["hour"]] == [h.isoformat() for h in want["hour"]]


row = st.tuples(st.integers(0, 6 * 60 - 1), st.sampled_from(["m/1", "m/2"]),
                st.sampled_from(["served", "shadow", "batch"]))


@given(st.lists(row, min_size=1, max_size=40))
def test_counts_per_hour_equal_a_group_by_of_the_rows(items):
    _same(P.count_per_hour(P.rows_table(_rows(items))), _group_by(items))


def test_the_read_keeps_the_window_across_commits(tmp_path):
    commits = [[(5, "m/1", "served"), (70, "m/1", "batch")],
               [(130, "m/2", "served"), (131, "m/2", "shadow"), (135, "m/1", "served")],
               [(200, "m/2", "served")]]
    dt = None
    for items in commits:
        dt = P.append(tmp_path, P.rows_table(_rows(items)), dt)
    flat = [r for items in commits for r in items]
    since = T0 + pd.Timedelta(hours=1)
    _same(P.per_hour(tmp_path, since), _group_by(flat, since))
    until = P.per_hour(tmp_path, since, until=T0 + pd.Timedelta(hours=3))
    assert until["count"].sum() == 4


def test_an_absent_table_has_no_rows(tmp_path):
    got = P.per_hour(tmp_path, T0)
    assert got.empty and list(got.columns) == ["hour", "version", "source", "count"]
