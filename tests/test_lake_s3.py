"""Delta on S3-compatible object storage: how delta-rs 1.6.6 commits safely there, shown
against a local S3 server (moto in server mode on loopback); then the lake itself on
``lake.uri = s3://bucket/prefix``: the same jobs give the same tables as on a folder,
and two processes committing at once lose nothing.

delta-rs 1.x dropped the DynamoDB log store: a commit is a put-if-absent of the next
``_delta_log/NNN.json`` (``If-None-Match: *``), so commits are safe exactly when the
server refuses the second such put of a key. This server does (checked first), and
concurrent appenders then lose no commit and no row. A server that ignores the
condition would let two writers both "win" the same version: there, only one writer
may commit at a time.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.conftest import ROOT
from tests.ray_cluster import free_port


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto", reason="moto (test extra) is not installed")
    pytest.importorskip("flask_cors", reason="moto's server mode needs flask-cors")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def _options(endpoint: str) -> dict:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true", "conditional_put": "etag"}


def test_concurrent_delta_commits_on_s3_lose_nothing(s3_server):
    import boto3
    from botocore.exceptions import ClientError
    from deltalake import DeltaTable, write_deltalake
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    # the property delta-rs's commit relies on: put-if-absent is refused the second time
    s3.put_object(Bucket="lake", Key="probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket="lake", Key="probe", Body=b"2", IfNoneMatch="*")

    uri, opts = "s3://lake/bars", _options(s3_server)
    write_deltalake(uri, pa.table({"writer": [-1], "k": [-1]}), storage_options=opts)
    writers, commits, errors = 4, 5, []

    def append(w: int) -> None:
        for k in range(commits):
            try:
                write_deltalake(uri, pa.table({"writer": [w], "k": [k]}), mode="append",
                                storage_options=opts)
            except Exception as exc:        # a lost race must surface, never vanish
                errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert errors == []
    dt = DeltaTable(uri, storage_options=opts)
    assert dt.version() == writers * commits              # one version per commit
    rows = dt.to_pyarrow_table().to_pylist()
    assert sorted((r["writer"], r["k"]) for r in rows if r["writer"] >= 0) == \
        [(w, k) for w in range(writers) for k in range(commits)]
    history = [h["version"] for h in dt.history()]
    assert sorted(history) == list(range(writers * commits + 1))
    # time travel still reads the first version exactly
    dt.load_as_version(0)
    assert dt.to_pyarrow_table().num_rows == 1


# -- the lake on lake.uri = s3://... ------------------------------------------------
def _aws_env(endpoint: str) -> dict:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_lake(s3_server, monkeypatch):
    """A fresh bucket on the server, the AWS variables set; yields a lake URI."""
    import uuid

    import boto3
    for k, v in _aws_env(s3_server).items():
        monkeypatch.setenv(k, v)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1").create_bucket(
                     Bucket=bucket)
    return f"s3://{bucket}/mlops/lake"


def _daily_run(home, lake_uri, registry_uri, monkeypatch) -> dict:
    """Ingest (two days), features, a batch of predictions, jobs.maintain, one more
    day and an incremental features run; what a reader then sees."""
    import jobs.maintain
    from cluster.config import load_settings, reset_settings
    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake import predictions as P
    from cluster.lake.bars import BarsTable
    from cluster.lake.features import FeaturesTable
    from cluster.errors import DataError
    from cluster.lake.ingest import ingest
    from cluster.lake.quarantine import QuarantineTable
    from cluster.monitoring.store import Table
    # the settings jobs.maintain reads (its own get_settings) and ours
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("MLOPS_TRACKING_URI", registry_uri)
    monkeypatch.setenv("MLOPS_LAKE__RETAIN_VERSIONS", "2")
    if lake_uri:
        monkeypatch.setenv("MLOPS_LAKE__URI", lake_uri)
    else:
        monkeypatch.delenv("MLOPS_LAKE__URI", raising=False)
    settings = load_settings()
    bus = EventBus(settings.lake_dir)
    for days in (70, 71):
        ingest("synthetic", stocks=3, days=days, seed=5, settings=settings, bus=bus)
    FeaturePipeline(settings, bus).run(incremental=True, use_ray=False)
    frame = FeaturesTable(settings.lake_dir).read(columns=["data_version"])
    P.append(settings.lake_dir, P.batch_rows(frame, "m/1", np.arange(len(frame)) / 7.0,
                                             "run-1", now=1_700_000_000.0))
    QuarantineTable(settings.lake_dir).append(
        "ingest-1", "test", pd.DataFrame(columns=["file", "row", "row_kind", "column",
                                                  "error_type", "reason", "raw"]),
        [DataError("unreadable", file="x.csv")])
    Table(settings.lake_dir, "drift").append(pd.DataFrame(
        {"model_id": ["m/1"], "date": [pd.Timestamp("2015-03-02")], "feature": ["RSI"],
         "psi": [0.1]}))
    reset_settings()
    try:
        summary = jobs.maintain.main([])
    finally:
        reset_settings()
    assert summary["errors"] == {} and "bars" in summary["tables"], summary
    ingest("synthetic", stocks=3, days=72, seed=5, settings=settings, bus=bus)
    feats = FeaturePipeline(settings, bus).run(incremental=True, use_ray=False)
    bars = BarsTable(settings.lake_dir)
    versions = [{k: v for k, v in row.items() if k != "created_at"} for row in bars.versions()]
    return {"bars": bars.read(instruments=["S0001"]), "all_bars": bars.read(),
            "bars_v1": bars.read(1), "versions": versions,
            "data_version": bars.data_version(), "computed_rows": feats["computed_rows"],
            "features": FeaturesTable(settings.lake_dir).read(),
            "predictions": P.read_predictions(settings.lake_dir),
            "quarantine": QuarantineTable(settings.lake_dir).read().drop(
                columns=["quarantined_at"]),
            "drift": Table(settings.lake_dir, "drift").read(),
            "events": [e.type for _, e in bus.read()],
            "tables": sorted(summary["tables"]),
            "vacuumed": summary["tables"]["bars"]["steps"]["vacuum"]["files_removed"]}


def test_lake_on_s3_equals_the_local_lake(s3_lake, tmp_path, monkeypatch):
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    on_s3 = _daily_run(tmp_path / "s3home", s3_lake, registry, monkeypatch)
    local = _daily_run(tmp_path / "home", None, registry, monkeypatch)
    assert not (tmp_path / "s3home" / "lake").exists()  # nothing of it went to the folder
    assert on_s3["tables"] == local["tables"] == ["bars", "drift", "events", "features",
                                                  "predictions", "quarantine"]
    assert on_s3["versions"] == local["versions"] and len(local["versions"]) == 3
    assert on_s3["data_version"] == local["data_version"] == local["versions"][-1]["version"]
    assert on_s3["computed_rows"] == local["computed_rows"] > 0
    assert on_s3["events"] == local["events"]
    assert on_s3["vacuumed"] == local["vacuumed"] > 0
    for key in ("bars", "all_bars", "bars_v1", "features", "predictions", "quarantine",
                "drift"):
        pd.testing.assert_frame_equal(on_s3[key], local[key], obj=key)
    assert len(local["bars"]) == 72 and set(local["bars"]["instrument"]) == {"S0001"}


APPEND = """
import sys, time
import pandas as pd
from cluster.events import EventBus, DataSynced
from cluster.lake.bars import BarsTable
lake, go = sys.argv[1], sys.argv[2]
data = pd.read_parquet(sys.argv[3])
bars, bus = BarsTable(lake), EventBus(lake)
while not __import__("os").path.exists(go):
    time.sleep(0.005)
for day in sorted(data["date"].unique()):
    r = bars.commit(data[data["date"] == day], "child")
    bus.publish(DataSynced(data_version=r.data_version, instruments=r.instruments_changed,
                           start=r.start.date(), end=r.end.date(), rows_added=r.rows_added,
                           rows_restated=0, source="child"))
"""


def test_two_processes_committing_to_an_s3_lake_lose_nothing(s3_lake, tmp_path):
    from cluster.events import EventBus
    from cluster.lake.bars import BarsTable
    from cluster.schema import KEY
    from cluster.sources.adjust import yahoo_to_canonical
    from cluster.sources.synthetic import synthetic_market
    data = yahoo_to_canonical(synthetic_market(n_stocks=4, n_days=24, seed=8))
    days = sorted(data["date"].unique())
    bars = BarsTable(s3_lake)
    bars.commit(data[data["date"] <= days[19]], "history")
    names = sorted(data["instrument"].unique())
    files = []
    for k, part in enumerate((names[:2], names[2:])):  # disjoint instruments, same days
        frame = data[data["instrument"].isin(part) & (data["date"] > days[19])]
        files.append(tmp_path / f"part{k}.parquet")
        frame.to_parquet(files[-1])
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", APPEND, s3_lake, str(go), str(f)],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    time.sleep(1.0)
    go.touch()
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    got = bars.read()
    pd.testing.assert_frame_equal(got.reset_index(drop=True),
                                  data.sort_values(KEY).reset_index(drop=True),
                                  check_dtype=False)
    assert [v["version"] for v in bars.versions()] == list(range(9))  # 1 + 2 x 4 commits
    offsets = [o for o, _ in EventBus(s3_lake).read()]
    assert offsets == list(range(8))  # every event kept, offsets dense


def test_lake_uri_setting(monkeypatch):
    from cluster.config import load_settings
    from cluster.errors import ConfigError
    from cluster.lake import storage
    local = load_settings(home="/srv/mlops")
    assert local.lake_dir == local.home / "lake" and storage.storage_options(local.lake_dir) \
        is None
    for var in ("AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLOPS_LAKE__URI", "s3://bucket/mlops/lake/")
    for k, v in _aws_env("http://127.0.0.1:9000").items():
        monkeypatch.setenv(k, v)
    lake = load_settings(home="/srv/mlops").lake_dir
    assert str(lake / "bars") == "s3://bucket/mlops/lake/bars"
    assert storage.storage_options(lake / "bars") == {
        **_aws_env("http://127.0.0.1:9000"), "AWS_ALLOW_HTTP": "true",
        "conditional_put": "etag"}
    for bad, word in (("gs://bucket/x", "lake.uri"), ("s3://", "bucket")):
        monkeypatch.setenv("MLOPS_LAKE__URI", bad)
        with pytest.raises(ConfigError, match=word):
            load_settings()
    monkeypatch.delenv("MLOPS_LAKE__URI")
    with pytest.raises(ConfigError, match="MLOPS_LAKE__URI"):
        load_settings(home="s3://bucket/mlops")
