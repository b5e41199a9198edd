"""CLI contract of jobs.ingest / jobs.data (other issues and checks rely on it)."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT, shared_file

INGEST_KEYS = {"data_version", "rows_added", "rows_restated", "rows_total", "instruments",
               "start", "end"}


def run_job(home, *args, check=True):
    env = dict(os.environ, MLOPS_HOME=str(home), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ingest_versions_diff_contract(tmp_path):
    home = tmp_path / "home"
    first = last_json(run_job(home, "jobs.ingest", "--source", "synthetic", "--stocks", "5",
                              "--days", "30", "--seed", "2"))
    assert INGEST_KEYS <= set(first)
    assert (first["data_version"], first["rows_added"], first["rows_total"]) == (0, 150, 150)
    assert first["instruments"] == 5 and first["start"] == "2015-01-05"
    again = last_json(run_job(home, "jobs.ingest", "--source", "synthetic", "--stocks", "5",
                              "--days", "30", "--seed", "2"))
    assert (again["data_version"], again["rows_added"]) == (0, 0)
    more = last_json(run_job(home, "jobs.ingest", "--source", "synthetic", "--stocks", "6",
                             "--days", "31", "--seed", "2", "--format", "synthetic"))
    assert more["data_version"] == 1 and more["rows_added"] == 6 * 31 - 150
    versions = last_json(run_job(home, "jobs.data", "versions"))
    assert [v["version"] for v in versions] == [0, 1]
    assert {"version", "created_at", "source", "start", "end", "instruments", "rows",
            "status"} <= set(versions[0])
    diff = last_json(run_job(home, "jobs.data", "diff", "0", "1"))
    assert diff["instruments_added"] == ["S0005"] and diff["dates_added"] == ["2015-02-16"]
    shown = last_json(run_job(home, "jobs.data", "show", "--instrument", "S0001",
                              "--version", "0", "--limit", "3"))
    assert [r["instrument"] for r in shown] == ["S0001"] * 3
    assert shown[-1]["date"] == "2015-02-13"
    # an instrument the version does not hold is named, not an empty list
    unknown = run_job(home, "jobs.data", "show", "--instrument", "S0005", "--instrument",
                      "NOPE", "--version", "0", check=False)
    assert unknown.returncode == 1 and unknown.stdout.strip() == ""
    assert "--instrument: NOPE, S0005 not in the bars table as of data version 0" \
        in unknown.stderr


def test_refusal_exits_nonzero_with_error_on_stderr(tmp_path):
    bad = tmp_path / "X_data.csv"
    bad.write_text("Date,High,Low,Open,Close,Volume,Adj Close,Name\n"
                   "2020-01-02,10,9,9.5,9.7,100,9.7,X\n2020-01-03,10,9,abc,9.7,100,9.7,X\n")
    proc = run_job(tmp_path / "home", "jobs.ingest", "--source", str(bad), check=False)
    assert proc.returncode != 0
    assert "X_data.csv, line 3, column 'Open'" in proc.stderr
    assert proc.stdout.strip() == ""
    assert not (tmp_path / "home" / "lake" / "bars").exists()


def test_whole_shared_parquet_and_csv_sample(tmp_path):
    parquet = shared_file("sp500_5yr_dev.parquet")
    csvs = shared_file("sp500_csv_sample")
    home = tmp_path / "home"
    refused = run_job(home, "jobs.ingest", "--source", str(parquet), check=False)
    assert refused.returncode != 0 and "row 80976, column 'Open'" in refused.stderr
    s = last_json(run_job(home, "jobs.ingest", "--source", str(parquet),
                          "--on-error", "quarantine"))
    # DIS open above high, DXC close below low, STI's two differing 2019-12-06 rows
    assert s["rows_quarantined"] == 4 and s["rows_added"] == 295313 - 4
    assert s["instruments"] == 241 and (s["start"], s["end"]) == ("2015-01-12", "2020-01-10")
    assert any("152 row(s) with zero volume" in w for w in s["warnings"])
    c = last_json(run_job(home, "jobs.ingest", "--source", str(csvs)))
    assert c["data_version"] == s["data_version"] and c["rows_added"] == 0, \
        "the CSV sample holds the same bars as the parquet file"
    fresh = last_json(run_job(tmp_path / "home2", "jobs.ingest", "--source", str(csvs)))
    assert fresh["instruments"] == 12 and fresh["rows_total"] == 14034


def test_pipeline_job_runs_ingest_features_train_register(tmp_path):
    home = tmp_path / "home"
    s = last_json(run_job(home, "jobs.pipeline", "--stocks", "12", "--days", "220",
                          "--local", "--set", "num_boost_round=40"))
    assert s["data_version"] == 0
    assert s["features"]["rows"] == s["features"]["computed_rows"] == 12 * 220
    train = s["train"]
    assert train["state"] == "completed" and train["version"] == "1"
    assert set(train["metrics"]) == {"train", "valid", "test"}
    from cluster.registry.store import ModelRegistry
    registry = ModelRegistry(home=home)
    assert registry.state(train["registry_name"], "1") == "trained"
    lineage = registry.lineage(train["registry_name"], "1")
    assert str(lineage["data_version"]) == "0"
    assert lineage["feature_set"] == s["features"]["feature_set"]
    # a second run on the same data: no new data version, nothing recomputed
    again = last_json(run_job(home, "jobs.pipeline", "--stocks", "12", "--days", "220",
                              "--local", "--no-train"))
    assert again["data_version"] == 0 and again["features"]["computed_rows"] == 0


CHATTY_JOB = """
import sys, time
import ray
from jobs._cli import run
from cluster.ray_env import ensure_ray

def main(argv):
    ensure_ray(num_cpus=1, include_dashboard=False)

    @ray.remote
    def chatty():
        for i in range(8):
            print("worker line", i, flush=True)
            time.sleep(0.25)

    ray.get(ray.remote(lambda: print("worker ready", flush=True)).remote())
    chatty.remote()          # still printing when main returns
    time.sleep(0.5)
    return {"ok": True}

sys.exit(run(main, []))
"""


def test_worker_output_never_follows_the_summary():
    """A job that used Ray prints its JSON summary last on stdout, even while a Ray
    worker is still printing (Ray copies worker stdout to the driver's)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", CHATTY_JOB], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and json.loads(lines[-1]) == {"ok": True}, proc.stdout[-2000:]
