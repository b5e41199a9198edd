"""Lake maintenance (jobs.maintain): compaction, clustering, features hygiene,
checkpoints, vacuum that keeps every protected version, event offsets across it,
migration of an old-layout lake, and Properties 1 and 8 across all of that."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import load_settings
from cluster.events import AlertRaised, DataSynced, EventBus
from cluster.features.compute import compute_full
from cluster.features.pipeline import FeaturePipeline
from cluster.lake import tables
from cluster.lake.bars import BarsTable
from cluster.lake.features import FeaturesTable
from cluster.lake.maintain import maintain
from cluster.lake.migrate import migrate
from cluster.schema import BAR_COLUMNS, KEY
from cluster.sources.adjust import yahoo_to_canonical
from cluster.sources.synthetic import synthetic_market
from tests.lake_old_layout import old_commit, old_publish
from tests.test_lake import ingest_sequences, norm

REWRITE = ["compact", "zorder", "checkpoint"]


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory):
    """One MLflow registry for the module (creating its SQLite schema takes seconds)."""
    db = tmp_path_factory.mktemp("registry") / "mlflow.db"
    return f"sqlite:///{db}"


def lake_settings(home: Path, registry_uri: str, retain: int = 1000):
    return load_settings(home=home, tracking_uri=registry_uri,
                         lake={"retain_versions": retain})


def market(n: int, days: int, seed: int) -> pd.DataFrame:
    return yahoo_to_canonical(synthetic_market(n_stocks=n, n_days=days, seed=seed))


def name_data_version(registry_uri: str, model: str, data_version: int) -> None:
    """A registered model version whose lineage names ``data_version`` (made with the
    MLflow client itself: what vacuum reads is the registry's tag)."""
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    try:
        client.create_registered_model(model)
    except Exception:
        pass
    client.create_model_version(model, source="file:///nowhere",
                                tags={"lineage.data_version": str(data_version)})


# -- Property 1 across daily appends, restatements and maintenance -------------
@st.composite
def daily_operations(draw):
    """A history, then two daily appends, maybe restatements, and one or two
    maintenance runs (random steps) anywhere in between."""
    n, days = draw(st.integers(2, 3)), draw(st.integers(64, 68))
    truth = market(n, days, draw(st.integers(0, 10_000)))
    dates = sorted(truth["date"].unique())
    start = days - 2
    ops = []
    for i in range(start, days):
        ops.append(("day", i))
        if draw(st.integers(0, 2)) == 0:
            ops.append(("restate", draw(st.integers(0, i - 1)), draw(st.floats(0.95, 1.05))))
    for _ in range(draw(st.integers(1, 2))):
        ops.insert(draw(st.integers(0, len(ops))),
                   ("maintain", draw(st.sampled_from([["compact"], ["zorder"], REWRITE]))))
    return truth, dates, start, ops


@given(scenario=daily_operations())
def test_property1_incremental_equals_full_across_maintenance(scenario):
    """Feature: mlops-optimization, Property 1: under any sequence of daily appends,
    restatements and maintenance runs, the incremental features equal a full
    recompute of the final bars, and a maintenance run never invalidates the cache."""
    truth, dates, start, ops = scenario
    with tempfile.TemporaryDirectory() as d:
        settings = load_settings(home=Path(d))
        bars = BarsTable(settings.lake_dir)
        pipe = FeaturePipeline(settings, EventBus(None))
        state = truth[truth["date"] < dates[start]].copy()
        bars.commit(state, "history")
        pipe.run(incremental=True, use_ray=False)
        for op in ops:
            if op[0] == "day":
                day = truth[truth["date"] == dates[op[1]]]
                state = pd.concat([state, day], ignore_index=True)
                bars.commit(day, "day")
            elif op[0] == "restate":
                hit = state["date"] == dates[op[1]]
                state.loc[hit, ["open", "high", "low", "close", "vwap"]] *= op[2]
                bars.commit(state[hit], "restatement")
            else:
                before = FeaturesTable(settings.lake_dir).read()
                maintain(settings, ["bars", "features"], op[1])
                after = FeaturesTable(settings.lake_dir).read()
                pd.testing.assert_frame_equal(before, after)
                assert pipe.run(incremental=True, use_ray=False)["computed_rows"] == 0
                continue
            pipe.run(incremental=True, use_ray=False)
        got = FeaturesTable(settings.lake_dir).read()
        calendar = pd.DatetimeIndex(sorted(state["date"].unique()))
        want = tables.to_frame(compute_full(state, calendar, pipe.fs, 0).features)
        cmp = (lambda f: f.drop(columns=["data_version"]).sort_values(KEY)
               .reset_index(drop=True))
        pd.testing.assert_frame_equal(cmp(got), cmp(want), check_exact=False,
                                      rtol=1e-5, atol=1e-7)


# -- Property 8 across migration and maintenance --------------------------------
@given(batches=ingest_sequences())
def test_property8_versions_read_back_across_migration_and_maintenance(batches,
                                                                       registry_uri):
    """Feature: mlops-optimization, Property 8: reading as of version v returns exactly
    what was ingested up to v, for a lake written in the old layout, migrated, then
    appended to and maintained (compact, cluster, vacuum, checkpoint)."""
    with tempfile.TemporaryDirectory() as d:
        settings = lake_settings(Path(d), registry_uri)
        lake = settings.lake_dir
        expected, state = {}, pd.DataFrame(columns=BAR_COLUMNS)
        for batch in batches[:-1]:
            state = pd.concat([state[~state.set_index(KEY).index.isin(
                batch.set_index(KEY).index)], batch]) if len(state) else batch
            if old_commit(lake, batch):
                expected[tables.open_table(lake / "bars").version()] = norm(state)
        migrate(lake)
        table = BarsTable(lake)
        result = table.commit(batches[-1], "after migration")
        last = batches[-1]
        state = pd.concat([state[~state.set_index(KEY).index.isin(
            last.set_index(KEY).index)], last])
        if result.created:
            expected[result.data_version] = norm(state)
        maintain(settings)
        for version, frame in expected.items():
            pd.testing.assert_frame_equal(norm(table.read(version)), frame, check_dtype=False)
        assert [v["version"] for v in table.versions()] == sorted(expected)
        pd.testing.assert_frame_equal(norm(table.read()), expected[max(expected)],
                                      check_dtype=False)


# -- vacuum and retention --------------------------------------------------------
def test_vacuum_keeps_what_a_registered_model_and_a_deployment_name(tmp_path, registry_uri):
    settings = lake_settings(tmp_path, registry_uri, retain=1)
    bars = BarsTable(settings.lake_dir)
    data = market(3, 30, seed=4)
    days = sorted(data["date"].unique())
    snapshots = {}
    for k in range(6):  # 6 data versions; restatements make superseded files
        part = data[data["date"] <= days[20 + k]].copy()
        part.loc[part["date"] == days[k], "close"] *= 1.01 + k / 100
        part["high"] = part[["high", "close"]].max(axis=1)
        result = bars.commit(part, f"v{k}")
        snapshots[result.data_version] = norm(bars.read())
    name_data_version(registry_uri, "vacuum-model", 1)
    (settings.home / "serving").mkdir(parents=True)
    name_data_version(registry_uri, "deployed-model", 3)
    (settings.home / "serving" / "prod.json").write_text(json.dumps(
        {"deployment": "prod", "stable": "deployed-model/1", "versions": ["deployed-model/1"]}))
    summary = maintain(settings)
    vac = summary["tables"]["bars"]["steps"]["vacuum"]
    assert {1, 3} <= set(vac["versions_kept"]) and 2 not in vac["versions_kept"]
    assert vac["data_versions_kept"] == [1, 3, 5]  # 5 (the latest) at the rewrite's version
    assert vac["files_removed"] > 0 and vac["log_entries_removed"] >= 1
    assert "model:vacuum-model/1" in vac["protected_by"]["1"]
    assert "deployment:deployed-model/1" in vac["protected_by"]["3"]
    for version in (1, 3, 5):  # what a model, a deployment and the latest name
        pd.testing.assert_frame_equal(norm(bars.read(version)), snapshots[version])
    with pytest.raises(Exception):
        bars.read(2).pipe(len)  # unprotected: its restated file is gone (or its log)
    # maintenance again, after a new ingest: the protected versions stay readable
    bars.commit(data, "all")
    maintain(settings)
    pd.testing.assert_frame_equal(norm(bars.read(1)), snapshots[1])
    assert summary["errors"] == {}


def test_vacuum_refuses_bars_when_the_registry_cannot_be_read(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the registry's folder would be")
    settings = load_settings(home=tmp_path, tracking_uri=f"sqlite:///{blocker}/mlflow.db",
                             lake={"retain_versions": 1})
    bars = BarsTable(settings.lake_dir)
    bars.commit(market(2, 5, seed=1), "a")
    bars.commit(market(2, 6, seed=2), "b")  # restates everything: a superseded file
    files = sorted(bars.path.glob("*.parquet"))
    summary = maintain(settings, steps=["vacuum"])
    assert "registry" in summary["errors"]["bars"]
    assert sorted(bars.path.glob("*.parquet")) == files
    assert len(bars.read(0)) == len(market(2, 5, seed=1))


def test_failed_rewrite_leaves_the_previous_version_and_no_stray_file(tmp_path, registry_uri,
                                                                      monkeypatch):
    settings = lake_settings(tmp_path, registry_uri)
    bars = BarsTable(settings.lake_dir)
    data = market(3, 12, seed=2)
    for day in sorted(data["date"].unique()):
        bars.commit(data[data["date"] == day], "day")
    version, before = bars.version(), norm(bars.read())
    files = sorted(bars.path.glob("*.parquet"))

    def broken(*args, **kwargs):
        raise OSError("disk full while committing the rewrite")
    monkeypatch.setattr(tables, "commit_files", broken)
    summary = maintain(settings, ["bars"], ["zorder"])
    assert "disk full" in summary["errors"]["bars"]  # (the event could not be published)
    assert bars.version() == version
    pd.testing.assert_frame_equal(norm(bars.read()), before)
    assert sorted(bars.path.glob("*.parquet")) == files


# -- clustering, hygiene, idempotence, events ------------------------------------
def test_maintenance_clusters_dedupes_and_changes_no_data(tmp_path, registry_uri):
    settings = lake_settings(tmp_path, registry_uri, retain=1)
    bars = BarsTable(settings.lake_dir)
    pipe = FeaturePipeline(settings, EventBus(settings.lake_dir))
    data = market(4, 75, seed=3)
    days = sorted(data["date"].unique())
    bars.commit(data[data["date"] <= days[69]], "history")
    pipe.run(incremental=True, use_ray=False)
    for day in days[70:]:
        bars.commit(data[data["date"] == day], "day")
        pipe.run(incremental=True, use_ray=False)
    features = FeaturesTable(settings.lake_dir)
    raw = features.read_arrow(dedupe=False).to_pandas()
    assert raw.duplicated(["feature_set", *KEY]).any()  # superseded label rows
    before_bars, before_features = norm(bars.read()), features.read()
    bars_version, cache_info = bars.data_version(), pipe.cache.info(pipe.fs.id)
    summary = maintain(settings)
    t = summary["tables"]
    # (6 commits; the ingests merged their small files: 3 at most, bars' tail_files)
    assert t["bars"]["files_before"] == 2 and t["bars"]["files_after"] == 1
    assert t["features"]["files_after"] == 1 and t["events"]["files_after"] == 1
    assert t["features"]["steps"]["compact"]["rows_dropped"] > 0
    assert t["bars"]["disk_files_after"] < t["bars"]["disk_files_before"]
    for name in ("features", "events"):  # (bars: the module's registry names old versions)
        assert t[name]["log_files_after"] <= t[name]["log_files_before"]
    raw = features.read_arrow(dedupe=False).to_pandas()
    assert not raw.duplicated(["feature_set", *KEY]).any()
    pd.testing.assert_frame_equal(norm(bars.read()), before_bars)
    pd.testing.assert_frame_equal(features.read(), before_features)
    assert bars.data_version() == bars_version and bars.changes(after=bars_version).empty
    assert pipe.cache.info(pipe.fs.id) == cache_info
    again = pipe.run(incremental=True, use_ray=False)  # the cache is still valid
    assert again["computed_rows"] == 0 and again["mode"] == "incremental"
    # idempotent: a second run rewrites nothing (events got lake_maintained since)
    second = maintain(settings, steps=["compact", "zorder"])
    assert all("skipped" in second["tables"][n]["steps"]["zorder"] for n in ("bars", "features"))
    events = EventBus(settings.lake_dir).read(types=["lake_maintained"])
    assert len(events) == 2 and set(events[0][1].tables) == set(t)


def test_event_offsets_survive_compaction_and_vacuum(tmp_path, registry_uri):
    """The api's WebSocket resumes after an offset: every event after it, once, in
    order, before and after maintenance rewrote and vacuumed the events table."""
    settings = lake_settings(tmp_path, registry_uri, retain=1)
    bus = EventBus(settings.lake_dir)
    for i in range(12):
        bus.publish(AlertRaised(alert=f"a{i}") if i % 2 else
                    DataSynced(data_version=i, instruments=["X"], start=None, end=None))
    before = bus.read()
    suffixes = {o: bus.read(after=o) for o, _ in before}
    last = bus.last_offset()
    summary = maintain(settings, ["events"])
    assert summary["tables"]["events"]["files_after"] == 1
    assert summary["tables"]["events"]["steps"]["vacuum"]["files_removed"] == 12
    after = EventBus(settings.lake_dir)
    ours = ["data_synced", "alert_raised"]  # (maintenance published lake_maintained since)
    assert [(o, e.id) for o, e in after.read(types=ours)] == [(o, e.id) for o, e in before]
    for o, tail in suffixes.items():
        assert [(x, e.id) for x, e in after.read(after=o, types=ours)] == \
            [(x, e.id) for x, e in tail]
    maintained = after.read(after=last)
    assert [e.type for _, e in maintained] == ["lake_maintained"]
    last = after.last_offset()
    assert last == maintained[0][0]
    assert [e.alert for _, e in after.read(after=-1, types=["alert_raised"])][:2] == ["a1", "a3"]
    after.publish(AlertRaised(alert="later"))
    new = after.read(after=last)
    assert len(new) == 1 and new[0][0] > last and new[0][1].alert == "later"


# -- the CLI, dry runs, old layouts ----------------------------------------------
def run_job(module, argv) -> tuple[int, dict | None, str]:
    import contextlib
    import io

    from jobs._cli import run
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(module.main, argv, check_layout=module.__name__ != "jobs.maintain")
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None, err.getvalue()


def test_cli_dry_run_tables_and_old_layout(tmp_path, monkeypatch, registry_uri):
    from cluster.config import reset_settings
    from jobs import data as data_job
    from jobs import ingest as ingest_job
    from jobs import maintain as maintain_job
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_TRACKING_URI", registry_uri)
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    reset_settings()
    try:
        lake = tmp_path / "lake"
        data = market(2, 8, seed=5)
        days = sorted(data["date"].unique())
        for day in days[:-1]:
            old_commit(lake, data[data["date"] == day])
        old_publish(lake, AlertRaised(alert="old"))
        code, _, err = run_job(ingest_job, ["--source", "synthetic", "--stocks", "2",
                                            "--days", "8"])
        assert code == 1 and "python -m jobs.maintain --migrate" in err
        code, _, err = run_job(maintain_job, [])
        assert code == 1 and "--migrate" in err
        code, out, _ = run_job(maintain_job, ["--migrate", "--dry-run"])
        assert code == 0 and set(out["migrated"]) == {"bars", "events"}
        assert BarsTable(lake).path.joinpath(f"instrument={data['instrument'][0]}").exists()
        code, out, _ = run_job(maintain_job, ["--migrate"])
        assert code == 0 and out["migrated"]["bars"]["rows"] == len(data) - 2
        code, versions, _ = run_job(data_job, ["versions"])
        assert [v["version"] for v in versions] == list(range(len(days) - 1))
        assert [e.alert for _, e in EventBus(lake).read()] == ["old"]
        BarsTable(lake).commit(data[data["date"] == days[-1]], "last day")
        files = sorted((lake / "bars").rglob("*.parquet"))
        code, out, _ = run_job(maintain_job, ["--table", "bars", "--dry-run"])
        assert code == 0 and out["dry_run"] and list(out["tables"]) == ["bars"]
        assert sorted((lake / "bars").rglob("*.parquet")) == files
        before = tables.open_table(lake / "bars").version()
        code, out, _ = run_job(maintain_job, ["--table", "bars", "--zorder", "--checkpoint"])
        assert out["steps"] == ["zorder", "checkpoint"] and out["errors"] == {}
        # the migrated table keeps its change data feed: maintenance adds nothing to it
        feed = tables.open_table(lake / "bars").load_cdf(starting_version=before + 1)
        assert tables.open_table(lake / "bars").version() > before
        assert len(pa.table(feed)) == 0
        bars = out["tables"]["bars"]
        for key in ("files_before", "files_after", "bytes_before", "bytes_after",
                    "versions_kept", "seconds"):
            assert key in bars
        code, shown, _ = run_job(data_job, ["show", "--instrument", data["instrument"][0]])
        assert code == 0 and len(shown) == 8
        code, _, err = run_job(maintain_job, ["--table", "nope"])
        assert code == 1 and "nope" in err
    finally:
        reset_settings()


def test_features_maintenance_rewrites_only_the_eras_new_rows_touch(tmp_path, registry_uri):
    """The features table is kept by calendar year: after a first pass, a pass after
    daily appends rewrites only the newest year's files (the older year's file is the
    same file), keeps one row per key, and changes no data."""
    settings = lake_settings(tmp_path, registry_uri, retain=1)
    bars = BarsTable(settings.lake_dir)
    pipe = FeaturePipeline(settings, EventBus(settings.lake_dir))
    data = market(3, 300, seed=5)                  # 2015-01-05 .. 2016-02
    days = sorted(data["date"].unique())
    bars.commit(data[data["date"] <= days[279]], "history")
    pipe.run(incremental=True, use_ray=False)
    first = maintain(settings, names=["features"], steps=REWRITE)
    assert first["tables"]["features"]["steps"]["compact"]["eras"] == [2015, 2016]
    features = FeaturesTable(settings.lake_dir)

    def era_files():
        return sorted(tables.add_actions(features.open()).column("path").to_pylist())

    sealed = era_files()
    assert sealed and all(p.startswith(("era-2015-", "era-2016-")) for p in sealed)
    for day in days[280:286]:
        bars.commit(data[data["date"] == day], "day")
        pipe.run(incremental=True, use_ray=False)
    raw = features.read_arrow(dedupe=False).to_pandas()
    assert raw.duplicated(["feature_set", *KEY]).any()  # superseded label rows
    before = features.read()
    out = maintain(settings, names=["features"], steps=REWRITE)["tables"]["features"]
    step = out["steps"]["compact"]
    assert step["eras"] == [2016] and step["files_kept"] >= 1 and step["rows_dropped"] > 0
    after = era_files()
    old = [p for p in sealed if p.startswith("era-2015-")]
    assert old and set(old) <= set(after)          # the 2015 files were not rewritten
    assert not set(p for p in sealed if p.startswith("era-2016-")) & set(after)
    raw = features.read_arrow(dedupe=False).to_pandas()
    assert not raw.duplicated(["feature_set", *KEY]).any()
    pd.testing.assert_frame_equal(features.read(), before)
    assert pipe.run(incremental=True, use_ray=False)["computed_rows"] == 0
    again = maintain(settings, names=["features"], steps=REWRITE)["tables"]["features"]
    assert "skipped" in again["steps"]["compact"] and era_files() == after
