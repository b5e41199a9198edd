"""Model quality that holds out of sample (issue 15): the backtest after costs, the one
scorer and early stopper, the planted-signal market and a pipeline that finds it,
rolling retraining and ensembles as registered versions, every model type served
(sequence windows from the features table or posted), and MLflow pyfunc models that
predict what serving predicts."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cluster.training.early_stop import EarlyStopper
from cluster.training.metrics import DailyScorer, daily_ic, long_short_backtest

FEATURES = [f"f{i}" for i in range(8)]
from tests.test_serving_support import TOKENS, api_home  # noqa: E402 (the in-process app's tokens)


# --------------------------------------------------------------------------- backtest
def _panel(values: dict[str, list[tuple[float, float]]]):
    """{date: [(pred, ret) per instrument A, B, C, D]} -> (pred, ret) series."""
    rows = [(pd.Timestamp(d), "ABCD"[i], p, r) for d, day in values.items()
            for i, (p, r) in enumerate(day)]
    idx = pd.MultiIndex.from_tuples([(d, i) for d, i, _, _ in rows],
                                    names=["datetime", "instrument"])
    return pd.Series([p for *_, p, _ in rows], index=idx), pd.Series([r for *_, r in rows],
                                                                     index=idx)


def test_backtest_after_costs_matches_a_hand_computed_case():
    pred, ret = _panel({
        # long D, short A: gross .02 - (-.01) = .03; both books bought: traded 2
        "2021-01-04": [(1, -0.01), (2, 0.00), (3, 0.01), (4, 0.02)],
        # long A, short D: gross .01 - (-.02) = .03; both books replaced: traded 4
        "2021-01-05": [(4, 0.01), (2, 0.00), (3, 0.00), (1, -0.02)],
        # all tied: by instrument id, short A, long D: gross .01 - .02 = -.01; traded 4
        "2021-01-06": [(0, 0.02), (0, 0.00), (0, 0.00), (0, 0.01)],
    })
    bt = long_short_backtest(pred, ret, topk=1, cost_bps=10.0)
    net = np.array([0.03 - 0.001 * 2, 0.03 - 0.001 * 4, -0.01 - 0.001 * 4])
    assert bt["days"] == 3 and bt["topk"] == 1 and bt["cost_bps"] == 10.0
    assert bt["annual_return"] == pytest.approx(net.mean() * 252)
    assert bt["gross_annual_return"] == pytest.approx(np.mean([0.03, 0.03, -0.01]) * 252)
    assert bt["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(252))
    assert bt["turnover"] == pytest.approx(1.0)
    wealth = np.cumprod(1 + net)
    assert bt["max_drawdown"] == pytest.approx((wealth / np.maximum.accumulate(wealth) - 1).min())
    free = long_short_backtest(pred, ret, topk=1, cost_bps=0.0)
    assert free["annual_return"] == pytest.approx(free["gross_annual_return"])


@given(seed=st.integers(0, 10**6), ties=st.booleans(), topk=st.integers(1, 3))
def test_backtest_ignores_row_order_and_breaks_ties_stably(seed, ties, topk):
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=5),
                                      [f"I{i}" for i in range(8)]],
                                     names=["datetime", "instrument"])
    values = rng.integers(0, 3, len(idx)).astype(float) if ties else rng.normal(size=len(idx))
    pred = pd.Series(values, index=idx)
    ret = pd.Series(rng.normal(0, 0.01, len(idx)), index=idx)
    perm = rng.permutation(len(idx))
    a = long_short_backtest(pred, ret, topk, 10.0)
    b = long_short_backtest(pred.iloc[perm], ret.iloc[perm], topk, 10.0)
    assert a == pytest.approx(b, nan_ok=True)


# --------------------------------------------------------------------------- scorer
def test_one_scorer_and_one_early_stopper():
    rng = np.random.default_rng(0)
    idx = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=6),
                                      [f"I{i}" for i in range(9)]],
                                     names=["datetime", "instrument"])
    label = rng.normal(size=len(idx))
    pred = label + rng.normal(size=len(idx))
    scorer = DailyScorer(idx.get_level_values("datetime"), label)
    p, y = pd.Series(pred, index=idx), pd.Series(label, index=idx)
    assert scorer.ic(pred) == pytest.approx(daily_ic(p, y).mean())
    assert scorer.rank_ic(pred) == pytest.approx(daily_ic(p, y, "spearman").mean())
    assert scorer.score(pred, "loss") == pytest.approx(-np.mean((pred - label) ** 2))
    stopper = EarlyStopper(patience=2)
    seen = [stopper.update(step, s) for step, s in enumerate([0.1, float("nan"), 0.3, 0.2,
                                                              0.25], start=1)]
    assert seen == [(True, False), (False, False), (True, False), (False, False),
                    (False, True)]
    assert (stopper.best_step, stopper.best_score) == (3, 0.3)


# --------------------------------------------------------------------------- planted signal
def test_planted_rank_ic_derivation():
    from cluster.sources.synthetic import planted_rank_ic, planted_rho
    for x, n in ((0.05, 500), (0.2, 60), (0.5, 10)):
        rho = planted_rho(x, n)
        assert planted_rank_ic(rho, n) == pytest.approx(x, abs=1e-9)
        assert rho > x  # Spearman of a normal pair is below its Pearson correlation
    assert planted_rank_ic(1.0, 40) == pytest.approx(1.0)
    big = planted_rank_ic(0.3, 10**7)  # large n: the population value (6/pi) asin(rho/2)
    assert big == pytest.approx(6 / math.pi * math.asin(0.15), rel=1e-5)


def test_planted_signal_pipeline_finds_what_was_planted_and_no_more(mlops_home, capsys):
    """LightGBM on the planted market: test RankIC in [0.7 X, X + 3 sigma]. Too little
    means the model misses the signal; more than planted would be look-ahead."""
    from cluster.sources.synthetic import planted_rank_ic_sigma
    from jobs._cli import run
    from jobs.pipeline import main
    x, stocks, days = 0.2, 60, 500
    argv = ["--stocks", str(stocks), "--days", str(days), "--signal-ic", str(x), "--local",
            "--set", "num_leaves=7", "--set", "min_child_samples=200"]
    assert run(main, argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ingest"]["planted_rank_ic"] == x
    test = out["train"]["metrics"]["test"]
    test_days = days - int(days * 0.8)
    sigma = planted_rank_ic_sigma(stocks, test_days)
    assert 0.7 * x <= test["rank_ic"] <= x + 3 * sigma, (test["rank_ic"], x, sigma)


# --------------------------------------------------------------------------- rolling steps
@given(n_days=st.integers(40, 300), step=st.integers(1, 40),
       sliding=st.booleans(), train_days=st.one_of(st.none(), st.integers(5, 60)))
def test_rolling_steps_tile_the_test_span_and_only_see_the_past(n_days, step, sliding,
                                                                train_days):
    from cluster.features.qlib_bridge import default_segments, purge_segments
    from cluster.training.rolling import rolling_segments
    horizon = 2
    cal = pd.bdate_range("2019-01-01", periods=n_days)
    first = default_segments(cal)
    try:
        steps = rolling_segments(cal, first, step, "sliding" if sliding else "expanding",
                                 train_days)
    except ValueError:
        assume(False)

    def pos(day) -> int:
        return int(cal.searchsorted(pd.Timestamp(day)))
    t0, t1 = pos(first["test"][0]), pos(first["test"][1])
    covered = [d for s in steps for d in range(pos(s["test"][0]), pos(s["test"][1]) + 1)]
    assert covered == list(range(t0, t1 + 1))      # every test day once, in order
    assert all(pos(s["test"][1]) - pos(s["test"][0]) + 1 == step for s in steps[:-1])
    lengths = set()
    for seg in steps:
        purged = purge_segments(seg, cal, horizon)
        (ts, te), (vs, ve), (ss, se) = [tuple(map(pos, purged[s]))
                                        for s in ("train", "valid", "test")]
        # a label of day d reads the closes of d+1 .. d+horizon: none reaches the next
        # segment (Qlib's trunc_days = horizon + 1)
        assert ts <= te and te + horizon < vs <= ve and ve + horizon < ss <= se
        lengths.add(pos(seg["train"][1]) - pos(seg["train"][0]))
        if not sliding:
            assert seg["train"][0] == steps[0]["train"][0]
    if sliding:
        assert len(lengths) == 1


# --------------------------------------------------------------------------- served
TINY = {
    "lightgbm": dict(num_boost_round=30, num_leaves=8, learning_rate=0.1, report_every=30),
    "xgboost": dict(n_estimators=20, max_depth=3, report_every=20),
    "linear": {},
    "mlp": dict(n_epochs=1, hidden_size=8, batch_size=512),
    "lstm": dict(n_epochs=1, hidden_size=8, lookback=5, batch_size=512),
    "transformer": dict(n_epochs=1, d_model=8, n_heads=2, num_layers=1, dim_feedforward=16,
                        seq_len=5, batch_size=512),
    "informer": dict(n_epochs=1, d_model=8, n_heads=2, d_ff=16, seq_len=8, label_len=4,
                     batch_size=512),
    "timesnet": dict(n_epochs=1, d_model=4, d_ff=4, num_kernels=1, e_layers=1, top_k=1,
                     seq_len=6, batch_size=512),
    "patchtst": dict(n_epochs=1, d_model=8, n_heads=2, e_layers=1, d_ff=16, seq_len=8,
                     patch_len=4, stride=4, head_dim=2, batch_size=512),
    "tabnet": dict(n_epochs=1, n_d=4, n_a=4, n_steps=1, batch_size=512, virtual_batch_size=256),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """MLOPS_HOME with a features table (planted signal in f0/f1) and API tokens."""
    from cluster.config import get_settings, reset_settings
    from cluster.lake.features import FeaturesTable
    from tests.strategies import feature_frame
    path = tmp_path_factory.mktemp("quality_home")
    with pytest.MonkeyPatch.context() as mp:
        api_home(mp, path)
        reset_settings()
        settings = get_settings()
        from cluster.features.featureset import feature_set_for
        fs = feature_set_for(settings).id       # what the jobs read: the configured set
        frame = feature_frame()
        frame["feature_set"] = fs
        FeaturesTable(settings.lake_dir).append(
            pa.Table.from_pandas(frame, preserve_index=False), {"feature_set": fs})
        yield settings
    reset_settings()


def _viewer() -> dict:
    return {"Authorization": f"Bearer {TOKENS['viewer']}"}


def _table(settings) -> pd.DataFrame:
    from cluster.lake.features import FeaturesTable
    return FeaturesTable(settings.lake_dir).read()


def _serve(client, plane, runtime, model_id: str) -> None:
    from tests.test_serving_support import deploy, wait_state
    before = plane.revision
    deploy(plane, model_id, "blue_green", window_s=0.0)
    wait_state(plane, ("promoted",))
    deadline = time.monotonic() + 20
    while runtime.snapshot.stable is None or runtime.snapshot.stable.model_id != model_id:
        assert time.monotonic() < deadline, (plane.status(), runtime._load_errors)
        client.get("/healthz")
    assert plane.revision > before


def _pyfunc(settings, model_id: str):
    """``mlflow.pyfunc.load_model("models:/NAME/V")`` against this home's registry (the
    URIs from the environment, so no global MLflow state outlives the call)."""
    import mlflow
    name, version = model_id.split("/")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", settings.registry_uri)
        mp.setenv("MLFLOW_REGISTRY_URI", settings.registry_uri)
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")


def _history_rows(table: pd.DataFrame, instruments: list[str], date) -> pd.DataFrame:
    rows = table[table["instrument"].isin(instruments) & (table["date"] <= pd.Timestamp(date))]
    return rows.rename(columns={"date": "datetime"})[["datetime", "instrument", *FEATURES]]


def _finite_instruments(settings, date: str, k: int) -> list[str]:
    """``k`` instruments (in a scrambled order) with no +-inf feature up to ``date``: JSON
    cannot post inf, and a torch model's scaler reads inf (clipped to +-3) unlike null."""
    table = _table(settings)
    rows = table[table["date"] <= pd.Timestamp(date)]
    bad = set(rows.loc[np.isinf(rows[FEATURES].to_numpy()).any(axis=1), "instrument"])
    good = [i for i in sorted(rows["instrument"].unique()) if i not in bad]
    chosen = good[-k:]
    return chosen[1:] + chosen[:1]              # not in the table's order


def _explains(settings, model_id: str, row: dict) -> None:
    """Rolling and ensemble versions explain like any other (additive local values, the
    training reference sample as background)."""
    from cluster.explain.explainers import explainer_for
    from cluster.monitoring.reference import load_reference
    from cluster.registry.store import ModelRegistry
    registry = ModelRegistry.for_settings(settings)
    name, version = model_id.split("/")
    model = registry.load(name, version)
    background = load_reference(registry, name, version)[FEATURES].to_numpy(np.float32)
    x = np.array([[row[f] for f in FEATURES]], dtype=np.float32)
    out = explainer_for(model, FEATURES, background).explain(x)
    assert out.values.shape == (1, len(FEATURES)) and np.isfinite(out.values).all()
    assert out.base[0] + out.values[0].sum() == pytest.approx(out.predictions[0], abs=1e-5)


def _check_answers(settings, client, model, model_id: str, date: str, instruments: list[str]):
    """The instrument path, posted rows/windows and the pyfunc model agree with the model
    on the features table's rows (windows as training builds them)."""
    from cluster.models.inputs import predict_frame_rows
    table = _table(settings)
    res = client.post("/predict", json={"instruments": instruments, "date": date},
                      headers=_viewer())
    assert res.status_code == 200, res.text
    assert res.json()["version"] == model_id
    served = np.array(res.json()["predictions"])
    hist = _history_rows(table, instruments, date).reset_index(drop=True)
    expected = pd.Series(predict_frame_rows(model, hist, FEATURES),
                         index=pd.MultiIndex.from_frame(hist[["datetime", "instrument"]]))
    on_day = [expected[(pd.Timestamp(date), i)] for i in instruments]
    np.testing.assert_allclose(served, on_day, rtol=1e-5, atol=1e-6)
    # posted windows: each instrument's rows up to the date, oldest first
    windows = [[{f: float(v) if np.isfinite(v) else None for f, v in row.items()}
                for row in hist[hist["instrument"] == i][FEATURES].to_dict("records")]
               for i in instruments]
    res = client.post("/predict", json={"windows": windows, "date": date}, headers=_viewer())
    assert res.status_code == 200, res.text
    np.testing.assert_allclose(res.json()["predictions"], served, rtol=1e-5, atol=1e-6,
                               err_msg=f"{model_id}: posted windows")
    # MLflow's pyfunc model on the same rows predicts what serving predicts
    out = _pyfunc(settings, model_id).predict(hist)
    got = pd.Series(out["prediction"].to_numpy(), index=expected.index)
    np.testing.assert_allclose([got[(pd.Timestamp(date), i)] for i in instruments], served,
                               rtol=1e-5, atol=1e-6)
    return served


def test_all_ten_types_deploy_and_answer(home):
    """Every model type, sequence models included, is served: their windows come from
    the features table on the instrument path, or are posted; and each explains the
    prediction it served over the API (additive)."""
    import torch

    from cluster.events import EventBus
    from cluster.models.zoo import MODEL_TYPES
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import TrainingEngine, TrainRequest, load_features
    from tests.test_serving_support import in_process
    torch.set_num_threads(1)
    settings = home
    data = load_features(settings)
    engine = TrainingEngine(settings, EventBus(None), persist_events=False)
    registry = ModelRegistry.for_settings(settings)
    assert set(TINY) == set(MODEL_TYPES)
    date = "2019-06-20"
    instruments = _finite_instruments(settings, date, 3)
    with in_process(settings, "ten") as (client, plane, runtime):
        for model_type, params in TINY.items():
            extra = {"device": "cpu"} if model_type not in ("lightgbm", "xgboost",
                                                            "linear") else {}
            result = engine.run(TrainRequest(model_type, params={**params, **extra},
                                             feature_columns=FEATURES, importance=False,
                                             registry_name=f"ten-{model_type}"), data)
            assert result.state == "completed", (model_type, result.error)
            model_id = f"{result.registry_name}/{result.version}"
            _serve(client, plane, runtime, model_id)
            served = _check_answers(settings, client, registry.load(
                result.registry_name, result.version), model_id, date, instruments)
            assert np.isfinite(served).all() and len(set(served.round(9))) > 1, model_type
            # and explains the prediction it served (sequence models: its window)
            res = client.post(f"/api/explain/{model_id}/local",
                              json={"instrument": instruments[0], "date": date},
                              headers=_viewer())
            assert res.status_code == 200, (model_type, res.text)
            body = res.json()
            assert body["prediction"] == pytest.approx(served[0], abs=1e-6), model_type
            assert body["base_value"] + sum(body["values"].values()) == pytest.approx(
                body["prediction"], abs=1e-6), model_type


def test_rolling_version_trains_in_parallel_registers_once_and_serves_by_date(
        home, ray_session, capsys):
    from cluster.registry.store import ModelRegistry
    from jobs.train import main
    from tests.test_serving_support import in_process
    settings = home
    argv = ["--model", "lightgbm", "--rolling", "10", "--set", "num_boost_round=30",
            "--set", "num_leaves=8", "--set", "report_every=30", "--name", "roll",
            "--features", ",".join(FEATURES)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "rolling" and out["version"] == "1" and out["steps"] == 4
    assert out["metrics"]["test"]["days"] == 32 and out["metrics"]["test"]["rank_ic"] > 0.1
    registry = ModelRegistry.for_settings(settings)
    model = registry.load("roll", "1")
    steps = model.steps
    assert [s["start"] for s in steps] == sorted(s["start"] for s in steps)
    for k, s in enumerate(steps):  # each step trained on data up to it only
        assert s["parent_step"] == (k - 1 if k else None) and s["run_id"]
        assert pd.Timestamp(s["valid"][1]) < pd.Timestamp(s["start"])
        assert pd.Timestamp(s["train"][1]) < pd.Timestamp(s["valid"][0])
    info = registry.get("roll", "1")
    assert info.tags["kind"] == "rolling" and info.tags["rolling_steps"] == "4"
    assert info.tags["lineage.features_version"] == "0"
    report = registry.artefact_json("roll", "1", "report.json")
    assert [s["start"] for s in report["rolling"]["steps"]] == [s["start"] for s in steps]
    # serving: a date is answered by the step that covers it, a new date by the latest
    second = steps[1]
    day = second["start"]
    with in_process(settings, "rolling") as (client, plane, runtime):
        _serve(client, plane, runtime, "roll/1")
        pair = _finite_instruments(settings, day, 2)
        served = _check_answers(settings, client, model, "roll/1", day, pair)
        table = _table(settings)
        rows = table[(table["date"] == pd.Timestamp(day)) & table["instrument"].isin(
            pair)].set_index("instrument").loc[pair]
        np.testing.assert_allclose(served, second["model"].predict_array(
            rows[FEATURES].to_numpy(np.float32)), rtol=1e-6)
        posted = [{f: float(v) for f, v in r.items()} for r in
                  rows[FEATURES].to_dict("records")]
        latest = client.post("/predict", json={"rows": posted}, headers=_viewer()).json()
        dated = client.post("/predict", json={"rows": posted, "date": day},
                            headers=_viewer()).json()
        np.testing.assert_allclose(dated["predictions"], served, rtol=1e-6)
        np.testing.assert_allclose(latest["predictions"], steps[-1]["model"].predict_array(
            rows[FEATURES].to_numpy(np.float32)), rtol=1e-6)
    _explains(settings, "roll/1", posted[0])


def test_ensemble_of_registered_versions_serves_and_opens_in_mlflow(home, capsys):
    from cluster.events import EventBus
    from cluster.models.composite import cross_sectional
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import TrainingEngine, TrainRequest, load_features
    from jobs.train import main
    from tests.test_serving_support import in_process
    settings = home
    engine = TrainingEngine(settings, EventBus(None), persist_events=False)
    data = load_features(settings)
    ids = []
    for model_type, params in (("lightgbm", TINY["lightgbm"]), ("linear", {})):
        r = engine.run(TrainRequest(model_type, params=params, feature_columns=FEATURES,
                                    registry_name=f"member-{model_type}"), data)
        ids.append(f"{r.registry_name}:{r.version}")
    assert main(["--ensemble", ",".join(ids), "--name", "ens"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == "1" and out["method"] == "rank"
    assert out["metrics"]["test"]["rank_ic"] > 0.1
    registry = ModelRegistry.for_settings(settings)
    assert registry.lineage("ens", "1")["members"] == ",".join(i.replace(":", "/") for i in ids)
    model = registry.load("ens", "1")
    instruments = _finite_instruments(settings, "2019-07-01", 4)
    with in_process(settings, "ensemble") as (client, plane, runtime):
        _serve(client, plane, runtime, "ens/1")
        served = _check_answers(settings, client, model, "ens/1", "2019-07-01", instruments)
    # the mean of the members' centred ranks over the request's cross-section
    table = _table(settings)
    rows = table[(table["date"] == pd.Timestamp("2019-07-01"))].set_index("instrument").loc[
        instruments][FEATURES].to_numpy(np.float32)
    ranks = [cross_sectional(m.predict_array(rows), None, "rank") for m in model.members]
    np.testing.assert_allclose(served, np.mean(ranks, axis=0), atol=1e-12)
    assert sorted(served) == sorted(np.mean(ranks, axis=0))
    _explains(settings, "ens/1", {f: 0.5 for f in FEATURES})
    assert main(["--ensemble", ids[0]]) == 2          # one member is no ensemble
    assert "at least two" in capsys.readouterr().err


def test_tune_rolling_selects_on_unseen_days_and_registers_a_rolling_ensemble(
        home, ray_session):
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import load_features
    from tuning.runner import TuneRequest, run_tuning
    settings = home
    data = load_features(settings)
    request = TuneRequest("lightgbm", samples=2, name="roll-tune", scheduler="fifo",
                          feature_columns=FEATURES, rolling=16, ensemble_top=2,
                          fixed={"num_boost_round": 30, "early_stopping_rounds": 10,
                                 "num_leaves": 8, "report_every": 10},
                          registry_name="tuned-roll")
    out = run_tuning(request, data, settings)
    assert out["trials"] == {"completed": 2} and out["rolling"] == 16
    assert all(f["test"][1] < data.frame["date"].max().strftime("%Y-%m-%d")
               for f in out["folds"])  # the tuning never scores the test span
    best = out["best"]
    assert best["selection_rank_ic"] > 0.1 and best["held_out_rank_ic"] > 0.1
    registry = ModelRegistry.for_settings(settings)
    rolled = registry.load(out["registry_name"], out["version"])
    assert type(rolled).__name__ == "RollingModel" and len(rolled.steps) == 2
    ensemble = out["ensemble"]
    assert len(ensemble["members"]) == 2 and ensemble["held_out"]["rank_ic"] > 0.1
    ens = registry.load(ensemble["registry_name"], ensemble["version"])
    assert [type(m).__name__ for m in ens.members] == ["RollingModel"] * 2
    assert registry.lineage(ensemble["registry_name"], ensemble["version"])[
        "tune_experiment"] == "roll-tune"
