"""Concurrent writers in separate processes: two ingests of overlapping keys never
leave a duplicate (instrument, date); two feature runs of one feature set never both
append the same rows. delta-rs 1.6.6 lets concurrent blind appends (and a merge
against an append) commit without a conflict, so the tables commit at an exact
version (bars) or with a per-feature-set application transaction (features), and
the loser re-reads and tries again."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from cluster.config import load_settings
from cluster.events import EventBus
from cluster.features.compute import compute_full
from cluster.features.pipeline import FeaturePipeline
from cluster.lake import tables
from cluster.lake.bars import BarsTable
from cluster.lake.features import FeaturesTable
from cluster.schema import KEY
from cluster.sources.adjust import yahoo_to_canonical
from cluster.sources.synthetic import synthetic_market
from tests.conftest import ROOT

# A child process: wait for the start signal (so both run at once), then do its work.
PRELUDE = """
import sys, time
from pathlib import Path
import pandas as pd
home, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
"""
INGEST = PRELUDE + """
from cluster.lake.bars import BarsTable
bars = BarsTable(home / "lake")
for name in sys.argv[3:]:
    bars.commit(pd.read_parquet(name), "child")
"""
FEATURES = PRELUDE + """
from cluster.config import load_settings
from cluster.events import EventBus
from cluster.features.pipeline import FeaturePipeline
from cluster.lake import tables
print(FeaturePipeline(load_settings(home=home), EventBus(None)).run(
    incremental=True, use_ray=False)["computed_rows"])
"""


def market(n: int, days: int, seed: int) -> pd.DataFrame:
    return yahoo_to_canonical(synthetic_market(n_stocks=n, n_days=days, seed=seed))


def run_together(code: str, home: Path, args: list[list[str]]) -> list[str]:
    go = home / "go"
    go.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), str(go), *a], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in args]
    time.sleep(1.0)  # let both import and reach the barrier
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    return [o for o, _ in outs]


def test_two_ingests_of_overlapping_keys_leave_no_duplicate(tmp_path):
    data = market(4, 30, seed=9)
    days = sorted(data["date"].unique())
    bars = BarsTable(tmp_path / "lake")
    bars.commit(data[data["date"] <= days[9]], "history")
    batches = []
    for k in range(10, 30, 2):  # overlapping: each file holds two days, the next one's too
        frame = data[data["date"].isin(days[k:k + 3])]
        path = tmp_path / f"batch{k}.parquet"
        frame.to_parquet(path)
        batches.append(str(path))
    run_together(INGEST, tmp_path, [batches[0::2], batches[1::2]])
    got = bars.read()
    assert not got.duplicated(KEY).any()
    raw = bars.read_arrow(columns=["instrument", "date"]).to_pandas()
    assert not raw.duplicated().any()
    pd.testing.assert_frame_equal(got.sort_values(KEY).reset_index(drop=True),
                                  data.sort_values(KEY).reset_index(drop=True),
                                  check_dtype=False)
    # every data version holds unique keys too
    for v in bars.versions():
        assert not bars.read(v["version"]).duplicated(KEY).any()


def test_two_feature_runs_never_append_the_same_rows(tmp_path):
    settings = load_settings(home=tmp_path)
    data = market(3, 70, seed=4)  # two rounds of two runs at once
    days = sorted(data["date"].unique())
    bars = BarsTable(settings.lake_dir)
    bars.commit(data[data["date"] <= days[67]], "history")
    FeaturePipeline(settings, EventBus(None)).run(incremental=False, use_ray=False)
    features = FeaturesTable(settings.lake_dir)
    for day in days[68:]:
        bars.commit(data[data["date"] == day], "day")
        computed = [int(o.strip().splitlines()[-1])
                    for o in run_together(FEATURES, tmp_path, [[], []])]
        assert sum(computed) == 3 * 3  # one run computed the day (and the label rows)
    raw = features.read_arrow(dedupe=False).to_pandas()
    assert not raw.duplicated(["feature_set", *KEY, "data_version"]).any()
    calendar = pd.DatetimeIndex(days)
    pipe = FeaturePipeline(settings, EventBus(None))
    want = tables.to_frame(compute_full(data, calendar, pipe.fs, 0).features)
    cmp = (lambda f: f.drop(columns=["data_version"]).sort_values(KEY).reset_index(drop=True))
    pd.testing.assert_frame_equal(cmp(features.read()), cmp(want), check_exact=False,
                                  rtol=1e-5, atol=1e-7)
