"""Delta on S3-compatible object storage: how delta-rs 1.6.6 commits safely there, shown
against a local S3 server (moto in server mode on loopback).

delta-rs 1.x dropped the DynamoDB log store: a commit is a put-if-absent of the next
``_delta_log/NNN.json`` (``If-None-Match: *``), so commits are safe exactly when the
server refuses the second such put of a key. This server does (checked first), and
concurrent appenders then lose no commit and no row. A server that ignores the
condition would let two writers both "win" the same version: there, only one writer
may commit at a time.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

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
