"""The feature pipeline: full runs, the factor cache, and Property 1 (an incremental
run after any data sync equals a full recompute, and touches only what changed)."""
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import load_settings
from cluster.events import EventBus
from cluster.features import alpha158
from cluster.features.compute import compute_full
from cluster.features.featureset import current_feature_set
from cluster.features.pipeline import FeaturePipeline
from cluster.lake import tables
from cluster.lake.bars import BarsTable
from cluster.lake.features import FeaturesTable
from cluster.sources.adjust import yahoo_to_canonical
from cluster.sources.synthetic import synthetic_market

KEY = ["instrument", "date"]
PRICES = ["open", "high", "low", "close", "vwap"]


def market(n_stocks: int, n_days: int, seed: int) -> pd.DataFrame:
    return yahoo_to_canonical(synthetic_market(n_stocks=n_stocks, n_days=n_days, seed=seed))


def lake(path: Path):
    settings = load_settings(home=path)
    bus = EventBus(None)
    return settings, BarsTable(settings.lake_dir), FeaturePipeline(settings, bus), bus


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["data_version"]).sort_values(KEY).reset_index(drop=True)


# -- Property 1 ------------------------------------------------------------------
@st.composite
def sync_scenarios(draw):
    """A lake state before a sync, and the bars the sync brings: new days for some
    instruments, a restated bar, an instrument that appears, holes in histories."""
    n, days = draw(st.integers(2, 4)), draw(st.integers(70, 100))
    truth = market(n, days, draw(st.integers(0, 10_000)))
    names = sorted(truth["instrument"].unique())
    dates = sorted(truth["date"].unique())
    holes = draw(st.lists(st.tuples(st.sampled_from(names), st.integers(1, days - 2)),
                          max_size=3))
    for inst, i in holes:
        truth = truth[~((truth["instrument"] == inst) & (truth["date"] == dates[i]))]
    before_parts, after_parts = [], []
    newcomer = draw(st.sampled_from(names)) if draw(st.booleans()) else None
    for inst in names:
        rows = truth[truth["instrument"] == inst]
        start = dates[draw(st.integers(0, 5))]
        i_before = draw(st.integers(days - 12, days - 2))
        end_before = dates[i_before]
        end_after = dates[draw(st.integers(i_before, days - 1))]
        if inst != newcomer:
            before_parts.append(rows[(rows["date"] >= start) & (rows["date"] <= end_before)])
        after_parts.append(rows[(rows["date"] >= start) & (rows["date"] <= end_after)])
    before = pd.concat(before_parts, ignore_index=True)
    after = pd.concat(after_parts, ignore_index=True)
    if draw(st.booleans()):  # a restated bar inside the cached range
        i = draw(st.integers(0, len(before) - 1))
        key = before.iloc[i][KEY]
        factor = draw(st.floats(0.9, 1.1).filter(lambda f: abs(f - 1) > 1e-3))
        hit = (after["instrument"] == key["instrument"]) & (after["date"] == key["date"])
        after.loc[hit, PRICES] = after.loc[hit, PRICES] * factor
    return before, after


@given(scenario=sync_scenarios())
def test_property1_incremental_equals_full_recompute(scenario):
    """Feature: mlops-optimization, Property 1: for any data-sync event the pipeline
    computes the right indicators for exactly the synced range (the incremental result
    equals a full recompute; only synced instruments are rewritten)."""
    before, after = scenario
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        _, bars_a, pipe_a, _ = lake(Path(a))
        bars_a.commit(before, "before")
        pipe_a.run(incremental=False, use_ray=False)
        v_before = FeaturesTable(pipe_a.lake).version()
        old = FeaturesTable(pipe_a.lake).read()
        bars_a.commit(after, "sync")
        summary = pipe_a.run(incremental=True, use_ray=False)
        incremental = FeaturesTable(pipe_a.lake).read()

        _, bars_b, pipe_b, _ = lake(Path(b))
        bars_b.commit(before, "before")
        bars_b.commit(after, "sync")
        pipe_b.run(incremental=False, use_ray=False)
        full = FeaturesTable(pipe_b.lake).read()

        pd.testing.assert_frame_equal(comparable(incremental), comparable(full),
                                      check_exact=False, rtol=1e-5, atol=1e-7)
        # exactly the synced range: rows written by the sync belong to instruments
        # whose bars changed, and every row whose values changed was rewritten
        changed_bars = after.merge(before, on=KEY, how="left", indicator=True,
                                   suffixes=("", "_old"))
        moved = changed_bars["_merge"].eq("left_only") | np.isclose(
            changed_bars["close"], changed_bars["close_old"]).__invert__()
        synced = set(changed_bars.loc[moved, "instrument"])
        # features live on the lake's calendar (Qlib's semantics): a day new to the lake
        # inside an instrument's history adds a NaN-bar row to it, so it is synced too
        new_days = set(after["date"]) - set(before["date"])
        span = before.groupby("instrument")["date"].agg(["min", "max"])
        synced |= {inst for inst, (lo, hi) in span.iterrows()
                   if any(lo < d < hi for d in new_days)}
        written = FeaturesTable(pipe_a.lake).read_arrow(dedupe=False).to_pandas()
        written = written[written["data_version"] > 0]
        assert set(written["instrument"]) <= synced
        if not synced:
            assert summary["computed_rows"] == 0
            assert FeaturesTable(pipe_a.lake).version() == v_before
        diff = comparable(full).merge(comparable(old), on=KEY + ["feature_set"],
                                      how="left", suffixes=("", "_old"), indicator=True)
        assert set(diff.loc[diff["_merge"] == "left_only", "instrument"]) <= synced


def test_one_new_day_recomputes_only_that_day_and_the_label_rows(tmp_path):
    bars = market(5, 120, seed=7)
    last = bars["date"].max()
    _, table, pipe, bus = lake(tmp_path)
    seen = []
    bus.subscribe("features_updated", seen.append)
    table.commit(bars[bars["date"] < last], "history")
    first = pipe.run(incremental=False, use_ray=False)
    assert first["computed_rows"] == first["rows"] == 5 * 119
    table.commit(bars, "one more day")
    second = pipe.run(incremental=True, use_ray=False)
    # the new row and the LOOKAHEAD rows whose label the new close completes
    assert second["computed_rows"] == 5 * (1 + alpha158.LOOKAHEAD)
    assert second["cached_rows"] == second["rows"] - second["computed_rows"]
    assert seen and seen[-1].instruments == sorted(bars["instrument"].unique())
    assert seen[-1].data_version == second["data_version"]


def test_repeated_run_without_new_data_costs_nothing(tmp_path):
    _, table, pipe, bus = lake(tmp_path)
    table.commit(market(3, 90, seed=1), "bars")
    pipe.run(incremental=False, use_ray=False)
    version = FeaturesTable(pipe.lake).version()
    again = pipe.run(incremental=True, use_ray=False)
    assert again["computed_rows"] == 0 and again["cached_rows"] == again["rows"] > 0
    assert FeaturesTable(pipe.lake).version() == version


def test_full_run_matches_direct_computation_and_records_lineage(tmp_path):
    bars = market(4, 90, seed=3)
    _, table, pipe, _ = lake(tmp_path)
    table.commit(bars, "bars")
    summary = pipe.run(incremental=False, use_ray=False)
    fs = current_feature_set()
    assert summary["feature_set"] == fs.id and summary["data_version"] == 0
    got = FeaturesTable(pipe.lake).read()
    assert set(got["feature_set"]) == {fs.id} and set(got["data_version"]) == {0}
    calendar = pd.DatetimeIndex(sorted(bars["date"].unique()))
    want = tables.to_frame(compute_full(bars, calendar, fs, 0).features)
    pd.testing.assert_frame_equal(comparable(got), comparable(want), check_exact=False,
                                  rtol=1e-6)
    # the label is two days ahead: close(t+2)/close(t+1) - 1
    one = bars[bars["instrument"] == bars["instrument"].iloc[0]].reset_index(drop=True)
    row = got[got["instrument"] == one["instrument"].iloc[0]].reset_index(drop=True)
    expect = one["close"].shift(-2) / one["close"].shift(-1) - 1
    np.testing.assert_allclose(row["LABEL0"].to_numpy()[:-2], expect.to_numpy()[:-2],
                               rtol=1e-4, atol=1e-6)
    assert row["LABEL0"].iloc[-2:].isna().all()


def test_changed_feature_parameters_make_a_new_feature_set(tmp_path):
    base = load_settings(home=tmp_path)
    other = load_settings(home=tmp_path, feature_pipeline={"indicators": {"rsi_window": 9}})
    assert current_feature_set(base.feature_pipeline.indicators).id != \
        current_feature_set(other.feature_pipeline.indicators).id


def test_ray_data_path_equals_local_path(tmp_path, ray_session):
    bars = market(6, 80, seed=11)
    _, table, pipe, _ = lake(tmp_path / "ray")
    table.commit(bars, "bars")
    pipe.settings.feature_pipeline.instruments_per_block = 2  # several blocks
    pipe.run(incremental=False, use_ray=True)
    via_ray = FeaturesTable(pipe.lake).read()
    _, table2, pipe2, _ = lake(tmp_path / "local")
    table2.commit(bars, "bars")
    pipe2.run(incremental=False, use_ray=False)
    pd.testing.assert_frame_equal(comparable(via_ray), comparable(FeaturesTable(
        pipe2.lake).read()))


def test_failed_full_run_keeps_the_previous_version_and_no_stray_files(tmp_path, monkeypatch):
    import cluster.features.pipeline as pipeline_module
    bars = market(6, 80, seed=5)
    _, table, pipe, _ = lake(tmp_path)
    table.commit(bars, "bars")
    pipe.settings.feature_pipeline.instruments_per_block = 2  # three blocks, three files
    pipe.run(incremental=False, use_ray=False)
    features = FeaturesTable(pipe.lake)
    version, before = features.version(), features.read()
    files_before = sorted(p.name for p in features.path.glob("*.parquet"))
    real, calls = pipeline_module.compute_full, []

    def fails_on_the_third_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full while computing block 3")
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline_module, "compute_full", fails_on_the_third_block)
    with pytest.raises(RuntimeError, match="block 3"):
        pipe.run(incremental=False, use_ray=False)
    assert features.version() == version
    pd.testing.assert_frame_equal(features.read(), before)
    # the two blocks written before the failure were removed, the committed ones kept
    assert sorted(p.name for p in features.path.glob("*.parquet")) == files_before


def test_full_run_replaces_only_its_feature_set_in_a_mixed_file(tmp_path):
    """A data file holding two feature sets: replacing one keeps the other's rows
    (its file rewritten); a file of the replaced set alone is dropped."""
    features = FeaturesTable(tmp_path / "lake")
    fs = current_feature_set()
    rows = tables.to_frame(compute_full(market(2, 70, seed=4), pd.DatetimeIndex(
        sorted(market(2, 70, seed=4)["date"].unique())), fs, 0).features)
    mixed = pd.concat([rows, rows.assign(feature_set="fs-other")], ignore_index=True)
    meta = {"kind": "features", "feature_set": fs.id, "data_version": 0, "mode": "full"}
    features.commit_files([features.write_file(tables.to_arrow(mixed, fs.schema), "mixed.parquet"),
                           features.write_file(tables.to_arrow(rows, fs.schema), "one.parquet")],
                          fs.schema, meta)
    again = rows.assign(data_version=1)
    features.commit_files([features.write_file(tables.to_arrow(again, fs.schema), "new.parquet")],
                          fs.schema, dict(meta, data_version=1), replace=True)
    assert set(features.read(feature_set=fs.id)["data_version"]) == {1}
    assert len(features.read(feature_set="fs-other")) == len(rows)
    paths = tables.add_actions(features.open()).column("path").to_pylist()
    assert "new.parquet" in paths and not {"mixed.parquet", "one.parquet"} & set(paths)


def test_full_run_files_carry_the_stats_readers_prune_on(tmp_path):
    bars = market(6, 80, seed=9)
    _, table, pipe, _ = lake(tmp_path)
    table.commit(bars, "bars")
    pipe.settings.feature_pipeline.instruments_per_block = 2
    pipe.run(incremental=False, use_ray=False)
    features = FeaturesTable(pipe.lake)
    actions = tables.add_actions(tables.open_table(features.path))
    assert actions.num_rows == 3
    assert sum(actions.column("num_records").to_pylist()) == len(features.read())
    names = sorted(bars["instrument"].unique())
    one = features._files(tables.open_table(features.path), [names[-1]], None, None)
    assert len(one) == 1  # min/max of instrument in the log: the other two files pruned
    assert set(features.read(instruments=[names[-1]])["instrument"]) == {names[-1]}
    # the log keeps min/max of the pruning columns alone, feature_set (column 183) among
    # them: a full run learns what it replaces from the log, not from the files
    assert set(actions["min.feature_set"].to_pylist()) == {pipe.fs.id}
    assert not [c for c in actions.column_names if c.startswith("min.") and c not in (
        "min.feature_set", "min.instrument", "min.date", "min.data_version")]
    # a table made before that setting: jobs.maintain sets it (no data change)
    dt = tables.open_table(features.path)
    dt.alter.set_table_properties({"delta.dataSkippingStatsColumns": "instrument,date"})
    logged = lambda: tables.add_actions(tables.open_table(features.path)).column_names  # noqa: E731
    assert "min.feature_set" not in logged()
    from cluster.lake.maintain import maintain
    out = maintain(pipe.settings, ["features"], steps=["checkpoint"])
    assert not out["errors"], out["errors"]
    assert "min.feature_set" in logged()
    before = features.read()
    pipe.run(incremental=False, use_ray=False)  # replaces its own files, by the log's stats
    pd.testing.assert_frame_equal(features.read(), before)


def test_unknown_instrument_is_refused(tmp_path):
    _, table, pipe, _ = lake(tmp_path)
    table.commit(market(2, 70, seed=2), "bars")
    with pytest.raises(Exception, match="NOPE"):
        pipe.run(incremental=False, instruments=["NOPE"], use_ray=False)


def test_cli_prints_summary_and_writes_output(tmp_path, mlops_home, capsys):
    from cluster.config import get_settings
    from jobs import features as job
    BarsTable(get_settings().lake_dir).commit(market(3, 80, seed=5), "bars")
    names = sorted(BarsTable(get_settings().lake_dir).instruments())
    out = tmp_path / "f.parquet"
    code = job_main(job, ["--local", "--instruments", ",".join(names[:2]),
                          "--output", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("feature_set", "data_version", "features_version", "instruments", "rows",
              "computed_rows", "cached_rows", "seconds"):
        assert k in summary
    assert summary["instruments"] == 2
    frame = pd.read_parquet(out)
    fs = current_feature_set()
    assert list(frame.columns[:2]) == ["datetime", "instrument"]
    assert set(alpha158.ALPHA158_NAMES) | {"LABEL0"} | set(fs.indicator_columns) <= \
        set(frame.columns)
    assert sorted(frame["instrument"].unique()) == names[:2]
    qdir = tmp_path / "qlib"
    assert job_main(job, ["--export-qlib", str(qdir)]) == 0
    assert (qdir / "calendars" / "day.txt").exists()
    assert (qdir / "features" / names[0].lower() / "close.day.bin").exists()


def job_main(module, argv) -> int:
    from jobs._cli import run
    return run(module.main, argv)


def test_service_functions_behind_the_features_api(tmp_path):
    import time

    from cluster.errors import MlopsError
    from cluster.features.service import (feature_job, read_instrument_features,
                                          start_feature_job)
    settings, table, _, _ = lake(tmp_path)
    table.commit(market(2, 70, seed=4), "bars")
    with pytest.raises(MlopsError, match="no features yet"):
        read_instrument_features("X", settings=settings)
    job = start_feature_job(incremental=True, settings=settings)
    deadline = time.time() + 60
    while feature_job(job.job_id).state in ("queued", "running") and time.time() < deadline:
        time.sleep(0.05)
    done = feature_job(job.job_id).to_dict()
    assert done["state"] == "completed", done
    assert done["summary"]["rows"] == 2 * 70
    name = table.instruments()[0]
    one = read_instrument_features(name, settings=settings, columns=["KMID", "LABEL0"])
    assert len(one) == 70 and set(one["instrument"]) == {name}
    assert list(one.columns) == ["instrument", "date", "KMID", "LABEL0"]
    with pytest.raises(MlopsError, match="NOPE"):
        read_instrument_features("NOPE", settings=settings)
    with pytest.raises(MlopsError, match="no feature job"):
        feature_job("missing")


def test_data_synced_events_drive_incremental_runs(tmp_path):
    """In process (subscription) and from another process's point of view (the
    persisted events table read from an offset)."""
    from cluster.events import get_bus
    from cluster.features.service import follow_data_synced, on_data_synced
    from cluster.lake.ingest import ingest
    settings = load_settings(home=tmp_path)
    bus = get_bus(settings.lake_dir)
    seen = []
    unsubscribe = on_data_synced(bus, settings, seen.append)
    ingest("synthetic", stocks=3, days=70, seed=1, settings=settings, bus=bus)
    unsubscribe()
    assert len(seen) == 1 and seen[0]["computed_rows"] == 3 * 70
    offset = bus.last_offset()
    ingest("synthetic", stocks=3, days=72, seed=1, settings=settings, bus=bus)
    done = []
    last = follow_data_synced(bus, offset, settings, on_summary=done.append)
    assert last > offset and len(done) == 1
    assert done[0]["computed_rows"] == 3 * (2 + alpha158.LOOKAHEAD)
    assert follow_data_synced(bus, last, settings, on_summary=done.append) == last
    assert len(done) == 1  # nothing new: nothing computed


def test_label_horizon_is_one_setting(tmp_path):
    """qlib.label_horizon drives the label (its expression, values and the look-ahead
    rows an update re-emits) and names a different feature set; the purge gaps of
    training and tuning read the same setting."""
    settings = load_settings(home=tmp_path, qlib={"label_horizon": 3})
    bus = EventBus(None)
    table, pipe = BarsTable(settings.lake_dir), FeaturePipeline(settings, bus)
    assert pipe.fs.id != current_feature_set().id and pipe.fs.label_horizon == 3
    assert pipe.fs.definitions["alpha158"]["LABEL0"] == settings.qlib.label == \
        "Ref($close, -3)/Ref($close, -1) - 1"
    bars = market(3, 80, seed=2)
    last = bars["date"].max()
    table.commit(bars[bars["date"] < last], "history")
    pipe.run(incremental=False, use_ray=False)
    table.commit(bars, "one more day")
    assert pipe.run(incremental=True, use_ray=False)["computed_rows"] == 3 * (1 + 3)
    got = FeaturesTable(settings.lake_dir).read(feature_set=pipe.fs.id)
    one = bars[bars["instrument"] == bars["instrument"].iloc[0]].reset_index(drop=True)
    row = got[got["instrument"] == one["instrument"].iloc[0]].reset_index(drop=True)
    expect = one["close"].shift(-3) / one["close"].shift(-1) - 1
    np.testing.assert_allclose(row["LABEL0"].to_numpy()[:-3], expect.to_numpy()[:-3],
                               rtol=1e-4, atol=1e-6)
    assert row["LABEL0"].iloc[-3:].isna().all()
