"""The loop end to end on a small synthetic market with a regime shift: train before
it, batch-score on Ray Data, monitor incrementally (IC decay, drift, alerts), what
served on a date, Ray's metrics endpoint, and the retrain action.

The market has a planted signal (``signal_ic``; the shift flips its sign) so that the
accuracy alert is a clear verdict: on the default market's weak weekly reversal a
model's test RankIC is ~0.01 and its realised drop only grazes the 0.05 threshold."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from datetime import date

import numpy as np
import pandas as pd
import pytest

from cluster.config import load_settings
from cluster.events import EventBus
from cluster.features.pipeline import FeaturePipeline
from cluster.lake import predictions as P
from cluster.lake.ingest import ingest
from cluster.monitoring import alerts as A
from cluster.monitoring.batch import score
from cluster.monitoring.monitor import Monitor
from cluster.monitoring.performance import rolling_mean
from cluster.monitoring.served import served_on
from cluster.monitoring.store import Table
from cluster.registry.store import ModelRegistry
from cluster.training.engine import TrainingEngine, TrainRequest

N_DAYS, SHIFT, SIGNAL_IC = 420, 0.7, 0.1


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    home = tmp_path_factory.mktemp("monitor_home")
    settings = load_settings(home=home)
    bus = EventBus(settings.lake_dir)
    summary = ingest("synthetic", stocks=40, days=N_DAYS, seed=5, regime_shift_at=SHIFT,
                     signal_ic=SIGNAL_IC, settings=settings, bus=bus)
    FeaturePipeline(settings, bus=bus).run(use_ray=False)
    from jobs.pipeline import monitor_segments
    segments = monitor_segments(settings)
    result = TrainingEngine(settings, bus).run(TrainRequest(
        "lightgbm", params={"num_leaves": 15, "num_boost_round": 60,
                            "early_stopping_rounds": 20}, segments=segments))
    assert result.state == "completed", result.error
    scored_from = (pd.Timestamp(segments["valid"][1]) + pd.Timedelta(days=1)).date()
    return settings, bus, result, scored_from, pd.Timestamp(summary["regime_shift_day"])


def ensure_scored(loop) -> None:
    """Batch predictions for every day after validation (when an earlier test did not
    write them already): the tests that read them run alone too."""
    settings, bus, result, start, _ = loop
    if P.read_predictions(settings.lake_dir, start=start, columns=["version"]).empty:
        score(result.registry_name, result.version, start=start, settings=settings,
              use_ray=False)


def test_batch_scoring_on_ray_data_matches_one_process(loop, ray_session):
    settings, bus, result, start, _ = loop
    name, version = result.registry_name, result.version
    on_ray = score(name, version, start=start, settings=settings, use_ray=True, write=False)
    local = score(name, version, start=start, settings=settings, use_ray=False, write=False)
    a, b = on_ray["output"], local["output"]
    assert len(a) == len(b) > 0 and on_ray["days"] == local["days"]
    np.testing.assert_allclose(a["output"], b["output"], rtol=1e-6)
    assert a["instrument"].astype(str).tolist() == b["instrument"].astype(str).tolist()
    assert (a["date"].to_numpy() == b["date"].to_numpy()).all()


def test_monitor_is_incremental_and_alerts_only_after_the_shift(loop):
    settings, bus, result, start, shift = loop
    name, version = result.registry_name, result.version
    mid = (pd.Timestamp(start) + pd.Timedelta(days=120)).date()
    first = score(name, version, start=start, end=mid, settings=settings, use_ray=False)
    mon = Monitor(settings, bus=bus, resources=False)
    one = mon.run()
    assert 0 < one["days_evaluated"] <= first["days"]
    assert Monitor(settings, bus=bus, resources=False).run()["days_evaluated"] == 0
    second = score(name, version, start=mid + pd.Timedelta(days=1), settings=settings,
                   use_ray=False)
    two = Monitor(settings, bus=bus, resources=False).run()
    # the last label_horizon days wait for their labels (and the first run's last ones
    # were evaluated by this run once the second batch brought their labels: none here,
    # the features table already had them)
    assert two["days_evaluated"] == second["days"] - settings.qlib.label_horizon
    rows = Table(settings.lake_dir, "monitoring").read()
    assert not rows.duplicated(["model_id", "kind", "date"]).any()
    model_id = f"{name}/{version}"
    entry = two["versions"][model_id]
    assert entry["test_rank_ic"] is not None and entry["rank_ic_60"] is not None
    assert two["ic_decay"][model_id]["decay_60"] == entry["ic_decay_60"]
    alerts = A.AlertsTable(settings.lake_dir).history()
    raised = alerts[alerts["state"] == "raised"]
    assert (pd.to_datetime(raised["day"]) >= shift).all(), raised[["rule", "day"]]
    assert "drift_score" in set(raised["rule"]), "the regime shift's drift is caught"
    assert "accuracy_drop" in set(raised["rule"]), "the flipped signal's decay is caught"
    # and not by a hair: the rule's reading (test RankIC minus the rolling realised
    # RankIC, once enough days) ends far beyond its threshold and stays well inside it
    # before the shift
    m = settings.monitoring
    live = rows[rows["kind"] == "live"].sort_values("date")
    reading = live["test_rank_ic"] - rolling_mean(live["rank_ic"], m.accuracy_window_days,
                                                  m.accuracy_min_days)
    drop = m.alert_thresholds.accuracy_drop
    assert (reading.iloc[-20:] > 2 * drop).all(), reading.iloc[-20:]
    assert (reading[live["date"] < shift].dropna() < drop / 2).all()
    events = [e for _, e in bus.read(-1, ["alert_raised"])]
    assert {e.rule for e in events} == set(raised["rule"])
    drift = Table(settings.lake_dir, "drift").read()
    assert drift.groupby("date")["feature"].nunique().min() == 158


def test_served_on_a_date_traces_each_prediction(loop):
    ensure_scored(loop)
    settings, bus, result, start, _ = loop
    day = pd.Timestamp(start) + pd.Timedelta(days=7)
    while day.weekday() >= 5:
        day += pd.Timedelta(days=1)
    out = served_on(settings.lake_dir, day, registry=ModelRegistry.for_settings(settings))
    assert out["predictions"] == 40 and out["versions"] == [f"{result.registry_name}/"
                                                             f"{result.version}"]
    row = out["rows"][0]
    assert row["source"] == "batch" and row["inputs"]["features_version"] is not None
    assert row["inputs"]["data_version"] == row["trained_on"]["data_version"] == 0
    assert row["trained_on"]["training_run"] == result.run_id
    one = served_on(settings.lake_dir, day, "S0003", ModelRegistry.for_settings(settings))
    assert [r["instrument"] for r in one["rows"]] == ["S0003"]
    with pytest.raises(ValueError, match="not a date"):
        served_on(settings.lake_dir, "yesterday-ish")


def test_platform_metrics_are_on_rays_metrics_endpoint(loop, ray_session):
    """ray.util.metrics from this driver, scraped from the session's metrics agent
    (its export port works with the dashboard off)."""
    from cluster.monitoring import raymetrics
    ensure_scored(loop)
    settings, *_ = loop
    summary = Monitor(settings, resources=False).run()
    assert summary["versions"], "the latest figures are reported also when nothing is new"
    raymetrics.export_run(summary, A.AlertsTable(settings.lake_dir))
    port = ray_session._private.worker._global_node.metrics_export_port
    deadline, body = time.monotonic() + 60, ""
    while time.monotonic() < deadline:       # the agent is sent metrics every few seconds
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read() \
            .decode()
        if "ray_mlops_drift_score" in body and "ray_mlops_realised_rank_ic" in body:
            break
        time.sleep(1)
    assert "ray_mlops_drift_score{" in body and 'window="60"' in body
    assert "ray_mlops_active_alerts{" in body


def test_retrain_action_submits_the_train_job(loop):
    from jobs.monitor import JobActions
    settings, bus, result, *_ = loop
    procs = []

    def submit(argv, log, env):       # the real submission, keeping the handle to wait on
        procs.append(subprocess.Popen(argv + ["--set", "num_boost_round=5"],
                                      env={**__import__("os").environ, **env},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return f"submitted {argv[1:]}"
    t = A.AlertBook().evaluate([A.Reading("drift_score", f"{result.registry_name}/"
                                          f"{result.version}", 0.6, 0.3, True,
                                          day=date(2016, 9, 1), model=result.registry_name,
                                          version=result.version)])[0]
    assert JobActions(settings, submit=submit).retrain(t).startswith("submitted")
    assert procs[0].wait(timeout=240) == 0
    versions = ModelRegistry.for_settings(settings).versions(result.registry_name)
    assert [v.version for v in versions][-1] == str(int(result.version) + 1)


def ensure_experiment(loop) -> None:
    """exp-1: two arms of one rollout serving the same model, each on half the keys,
    on every scored day (appended once; the tests that read it run alone too)."""
    ensure_scored(loop)
    settings, bus, result, start, _ = loop
    if "exp-1" in set(P.read_predictions(settings.lake_dir, columns=["rollout_id"])
                      ["rollout_id"].dropna()):
        return
    model_id = f"{result.registry_name}/{result.version}"
    batch = P.read_predictions(settings.lake_dir, start=start)
    batch = batch[batch["source"] == "batch"].drop_duplicates(["instrument", "date"])
    keys = sorted(batch["instrument"].unique())
    arm = {k: ("m-a/1" if i % 2 else "m-b/1") for i, k in enumerate(keys)}
    rows = [(t.time.timestamp(), "r", k, model_id, k, str(t.date.date()), t.data_version,
             t.output, 1.0, False, t.features_version, arm[k], "exp-1", 3, "served")
            for t in batch.itertuples() for k in [t.instrument]]
    P.append(settings.lake_dir, P.rows_table(rows))


def test_ab_experiment_from_served_predictions(loop):
    """Two arms of one rollout serving the same model: the analysis runs on the keys each
    arm served and finds no difference."""
    ensure_experiment(loop)
    settings, *_ = loop
    from cluster.monitoring.abtest import experiment_analysis, experiments
    assert [e["rollout_id"] for e in experiments(settings.lake_dir)] == ["exp-1"]
    out = experiment_analysis(settings.lake_dir, "exp-1", reps=200)
    assert out["arms"] == ["m-a/1", "m-b/1"] and out["days"] > 50
    assert out["verdict"] == "no difference yet" and out["winner"] is None
    assert out["bootstrap_ci"][0] < 0 < out["bootstrap_ci"][1]


def test_ab_figures_after_the_monitor_are_the_whole_tables_and_read_only_new_days(
        loop, monkeypatch):
    """After the monitor has kept ``ab_daily``, the A/B answers equal the whole-table
    computation on the same data, and a call reads no predictions dated on or before
    the last day the table holds (the cost of a call does not grow with the days)."""
    ensure_experiment(loop)
    settings, bus, *_ = loop
    lake = settings.lake_dir
    from cluster.monitoring import abdaily, abtest
    whole = abtest._served_with_labels(lake, "exp-1")
    reference = {"rollout_id": "exp-1",
                 **abtest.analyse(abtest.arm_daily_rank_ic(whole), reps=200)}
    served = P.read_predictions(lake, columns=["rollout_id", "arm", "date", "source"])
    served = served[(served["source"] == "served") & (served["rollout_id"] == "exp-1")]
    listing = [{"rollout_id": "exp-1", "arms": ["m-a/1", "m-b/1"], "rows": len(served),
                "first_day": str(served["date"].min().date()),
                "last_day": str(served["date"].max().date())}]
    Monitor(settings, bus=bus, resources=False).run()
    kept = abdaily.stored(lake, "exp-1")
    assert kept["rank_ic"].notna().sum() > 100 and not kept.duplicated(abdaily.KEY).any()
    assert Monitor(settings, bus=bus, resources=False).run()["days_evaluated"] == 0
    assert len(abdaily.stored(lake, "exp-1")) == len(kept), "nothing is evaluated twice"
    reads = []
    real = P.read_arrow

    def spy(*args, **kw):
        out = real(*args, **kw)
        dates = out.column("date").drop_null() if "date" in out.column_names else []
        reads.append((kw.get("start", args[1] if len(args) > 1 else None),
                      min(dates.to_pylist()) if len(dates) else None))
        return out
    monkeypatch.setattr(P, "read_arrow", spy)
    assert abtest.experiment_analysis(lake, "exp-1", reps=200) == reference
    assert abtest.experiments(lake) == listing
    last = kept.loc[kept["rank_ic"].notna(), "date"].max()
    assert len(reads) == 2, reads
    for start, oldest in reads:
        assert start is not None and pd.Timestamp(start) > last
        assert oldest is None or pd.Timestamp(oldest) > last


def test_follow_runs_again_on_data_synced(loop):
    import threading

    from cluster.events import DataSynced
    from jobs.monitor import follow, parse_args
    settings, bus, *_ = loop
    args = parse_args(["--follow", "--poll", "0.1", "--max-runs", "2"])
    mon = Monitor(settings, bus=bus, resources=False)
    runs = []
    real = mon.run
    mon.run = lambda *a, **k: runs.append(1) or real(*a, **k)
    timer = threading.Timer(0.5, lambda: bus.publish(DataSynced(
        data_version=1, instruments=[], start=None, end=None)))
    timer.start()
    follow(mon, args, bus)
    timer.join()
    assert len(runs) == 2
