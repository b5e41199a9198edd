"""A/B statistics: identical arms give "no difference" in >= 95% of seeded runs even
when the result is looked at every day; a planted difference finds the right winner."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.monitoring.abtest import analyse, arm_daily_rank_ic, decide

DAYS, KEYS = 100, 80


def experiment(seed: int, edge_b: float = 0.0) -> pd.DataFrame:
    """Two arms splitting the keys by a sticky hash (here: alternate keys); the market
    has a persistent daily factor (autocorrelated IC); arm B's model may see more of it."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=DAYS)
    keys = np.array([f"K{i:03d}" for i in range(KEYS)])
    arm = np.where(np.arange(KEYS) % 2 == 0, "m/1", "m/2")
    strength = 0.3 + np.zeros(DAYS)
    for t in range(1, DAYS):                 # AR(1) signal strength: IC is autocorrelated
        strength[t] = 0.3 + 0.6 * (strength[t - 1] - 0.3) + 0.1 * rng.standard_normal()
    signal = rng.standard_normal((DAYS, KEYS))
    label = strength[:, None] * signal + rng.standard_normal((DAYS, KEYS))
    noise = 3 * rng.standard_normal((DAYS, KEYS))
    out = signal + np.where(arm == "m/2", 1.0 - edge_b, 1.0) * noise
    return pd.DataFrame({"arm": np.tile(arm, DAYS), "instrument": np.tile(keys, DAYS),
                         "date": np.repeat(dates, KEYS), "output": out.ravel(),
                         "label": label.ravel()})


def peeked_verdict(daily: pd.DataFrame) -> str:
    """Look every day and stop at the first call: what an operator watching would see."""
    d = (daily["m/2"] - daily["m/1"]).dropna().to_numpy()
    for t in range(1, len(d) + 1):
        call, _, _ = decide(d[:t])
        if call != "none":
            return call
    return "none"


def test_identical_arms_give_no_difference_in_95_percent_of_runs():
    calls = [peeked_verdict(arm_daily_rank_ic(experiment(seed))) for seed in range(60)]
    assert calls.count("none") >= 0.95 * len(calls), calls


def test_planted_difference_finds_the_right_winner():
    wins = []
    for seed in range(8):
        daily = arm_daily_rank_ic(experiment(1000 + seed, edge_b=0.6))
        wins.append(peeked_verdict(daily))
    assert wins.count("b") >= 7 and "a" not in wins, wins
    out = analyse(daily, reps=300)
    assert out["winner"] == "m/2" and out["verdict"] == "m/2 wins"
    lo, hi = out["bootstrap_ci"]
    assert 0 < lo < out["difference"] < hi
    assert out["newey_west_t"] > 2 and out["days"] == DAYS


def test_ab_daily_keeps_the_latest_row_and_its_watermark_through_maintenance(tmp_path):
    """A re-evaluated day supersedes the older row (readers and maintenance's dedupe), and
    the update's watermark is still read after maintenance commits on top of it."""
    from datetime import datetime, timedelta, timezone

    from cluster.config import load_settings
    from cluster.lake.maintain import maintain
    from cluster.monitoring import abdaily
    settings = load_settings(home=tmp_path)
    table, now = abdaily.table(settings.lake_dir), datetime.now(timezone.utc)
    row = dict(rollout_id="r", arm="a/1", date=pd.Timestamp("2020-01-02"), rows=10, keys=8,
               rank_ic=0.1, evaluated_at=now)
    table.append(pd.DataFrame([row]), {"pending_from": None, "predictions_version": 3})
    table.append(pd.DataFrame([row | {"rows": 12, "rank_ic": 0.2,
                                      "evaluated_at": now + timedelta(seconds=1)}]),
                 {"pending_from": "2020-01-03", "predictions_version": 4})
    want = [{"arm": "a/1", "rows": 12, "rank_ic": 0.2}]
    assert abdaily.stored(settings.lake_dir)[["arm", "rows", "rank_ic"]].to_dict("records") \
        == want
    assert not maintain(settings, ["ab_daily"])["errors"]
    assert len(table.read()) == 1
    assert abdaily.stored(settings.lake_dir)[["arm", "rows", "rank_ic"]].to_dict("records") \
        == want
    assert table.last_meta() == {"pending_from": "2020-01-03", "predictions_version": 4}
