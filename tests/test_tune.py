"""Ray Tune: spaces, purged walk-forward folds, resources, a small run end to end,
and the resume path of ``python -m jobs.tune`` after its driver is killed."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cluster.features.qlib_bridge import default_segments, purge_segments
from cluster.models.zoo import MODEL_TYPES, spec
from tests.conftest import ROOT
from tuning.folds import (label_dates, rolling_folds, selection_folds, tuning_window,
                          walk_forward_folds)
from tuning.spaces import default_space, load_space_file, merged_space, to_tune
from tuning.trainable import trial_resources

FEATURES = [f"f{i}" for i in range(8)]
TINY_GBDT = {"num_boost_round": 40, "early_stopping_rounds": 15, "report_every": 5,
             "num_leaves": 8}


# --------------------------------------------------------------------------- folds
@st.composite
def calendars(draw):
    days = pd.bdate_range("2018-01-01", periods=400)
    keep = draw(st.lists(st.booleans(), min_size=400, max_size=400))
    n = draw(st.integers(10, 400))
    cal = days[:n][[k for k in keep[:n]]] if any(keep[:n]) else days[:1]
    return cal


@given(cal=calendars(), horizon=st.integers(0, 6), n_folds=st.integers(1, 6))
def test_no_training_label_reaches_into_validation(cal, horizon, n_folds):
    try:
        folds = walk_forward_folds(cal, n_folds, horizon)
    except ValueError:
        assume(False)
    assert len(folds) == n_folds
    prev_train_end = prev_valid_end = None
    for fold in folds:
        (ts, te), (vs, ve) = [tuple(map(pd.Timestamp, fold[k])) for k in ("train", "valid")]
        assert ts == cal[0] and ts <= te < vs <= ve  # expanding window from the first day
        train_days = cal[(cal >= ts) & (cal <= te)]
        for day in train_days[-(horizon + 1):]:  # the latest labels reach furthest
            assert all(d < vs for d in label_dates(cal, day, horizon)), (fold, day)
        # the purge is exactly the horizon: one more training day would leak
        gap = cal[(cal > te) & (cal < vs)]
        assert len(gap) == horizon
        if prev_valid_end is not None:
            assert te > prev_train_end and vs > prev_valid_end
            assert cal[cal.searchsorted(prev_valid_end) + 1] == vs  # windows tile
        prev_train_end, prev_valid_end = te, ve
        # the engine's own purge leaves the folds as they are
        assert {k: tuple(v) for k, v in purge_segments(fold, cal, horizon).items()} == \
            {k: tuple(map(pd.Timestamp, v)) for k, v in fold.items()}
    assert pd.Timestamp(folds[-1]["valid"][1]) == cal[-1]


@given(cal=calendars(), horizon=st.integers(0, 6), n_folds=st.integers(1, 4),
       rolling=st.booleans(), step=st.integers(5, 40))
def test_trials_are_scored_on_days_early_stopping_never_saw(cal, horizon, n_folds, rolling,
                                                            step):
    """Unbiased selection: in every trial fold, train < early-stopping window < scored
    days, each purged from the next by the horizon (no label reaches the next one)."""
    try:
        folds = rolling_folds(cal, horizon, step) if rolling else \
            selection_folds(cal, n_folds, horizon)
    except ValueError:
        assume(False)

    def pos(day) -> int:
        return int(cal.searchsorted(pd.Timestamp(day)))
    for fold in folds:
        purged = purge_segments(fold, cal, horizon)
        (ts, te), (es, ee), (ss, se) = [tuple(map(pos, purged[k]))
                                        for k in ("train", "valid", "test")]
        # a label of day d reads d+1 .. d+horizon: never a day of the next segment
        assert ts <= te and te + horizon < es <= ee and ee + horizon < ss <= se
    if rolling:  # the scored steps tile the scored span
        assert all(pos(b["test"][0]) == pos(a["test"][1]) + 1 for a, b in zip(folds, folds[1:]))
    else:
        assert [f["test"] for f in folds] == [tuple(f["valid"]) for f in
                                              walk_forward_folds(cal, n_folds, horizon)]


def test_tuning_window_keeps_test_period_prices_out():
    cal = pd.bdate_range("2019-01-01", periods=200)
    test_start = pd.Timestamp(default_segments(cal)["test"][0])
    window = tuning_window(cal, horizon=2)
    assert all(d < test_start for d in label_dates(cal, window[-1], 2))
    assert cal[cal.searchsorted(window[-1]) + 3] == test_start  # and not one day more
    with pytest.raises(ValueError, match="too few"):
        walk_forward_folds(cal[:10], 3, 2)


# --------------------------------------------------------------------------- spaces
@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_spaces_are_centred_on_the_seed_defaults(model_type):
    defaults = spec(model_type).defaults()
    space = default_space(model_type)
    assert space, model_type
    for key, rng in space.items():
        kind, args = next(iter(rng.items()))
        d = defaults.get(key)
        if d is None:  # a library default outside the zoo's (xgboost min_child_weight = 1)
            continue
        if kind == "choice":
            assert d in args and args.index(d) == len(args) // 2 or d == min(args), (key, args)
        elif kind.startswith("log"):
            centre = (args[0] * args[1]) ** 0.5
            assert abs(centre / d - 1) < 0.1, (key, args, d)
        else:
            assert abs((args[0] + args[1]) / 2 - d) < 1e-9 or args[0] == 0, (key, args, d)
    tune_space = to_tune(merged_space(model_type))  # every space builds Tune domains
    assert set(space) <= set(tune_space)


def test_yaml_overrides_and_refusals(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("lightgbm:\n  num_leaves: {lograndint: [4, 16]}\n  min_child_samples: null\n"
                 "  num_boost_round: 50\nxgboost:\n  max_depth: 3\n")
    over = load_space_file(f, "lightgbm")
    space = merged_space("lightgbm", over, {"seed": 3})
    assert space["num_leaves"] == {"lograndint": [4, 16]} and space["num_boost_round"] == 50
    assert "min_child_samples" not in space and space["seed"] == 3
    assert space["early_stop_metric"] == "rank_ic"  # trials are judged on RankIC
    assert load_space_file(f, "linear") == {}
    with pytest.raises(ValueError, match="unknown parameter"):
        merged_space("lightgbm", {"num_leafs": 3})
    with pytest.raises(ValueError, match="must be one of"):
        merged_space("lightgbm", {"num_leaves": {"normal": [1, 2]}})
    with pytest.raises(ValueError, match="low <= high"):
        merged_space("lightgbm", {"num_leaves": {"randint": [9, 2]}})


def test_asha_first_rung_falls_inside_a_first_fold():
    """ASHA's grace comes before early stopping could end a fold: under a third of the
    patience and at most budget/20; a YAML patience moves it."""
    from tuning.spaces import asha_grace, budget
    assert asha_grace("lightgbm", merged_space("lightgbm")) == 50 // 3
    assert asha_grace("lightgbm", merged_space("lightgbm", {"early_stopping_rounds": 300})) \
        == budget("lightgbm", merged_space("lightgbm")) // 20
    assert asha_grace("mlp", merged_space("mlp")) == 20 // 3
    assert asha_grace("linear", merged_space("linear")) == 1


def test_resources_follow_the_model_type():
    trees = trial_resources({"num_threads": 3}, model_type="lightgbm", n_folds=3)
    assert trees.bundles == [{"CPU": 3.0}]
    xgb = trial_resources({"nthread": 2}, model_type="xgboost", n_folds=3, gpus=0.5)
    assert xgb.bundles == [{"CPU": 2.0}]  # trees never take the GPU share
    torch_gpu = trial_resources({}, model_type="lstm", n_folds=2, gpus=0.25)
    assert torch_gpu.bundles == [{"CPU": 1.0, "GPU": 0.25}]
    par = trial_resources({"num_threads": 2}, model_type="lightgbm", n_folds=3,
                          parallel_folds=True)
    assert par.head_bundle_is_empty and par.bundles == [{"CPU": 2.0}] * 3
    assert par.required_resources == {"CPU": 6.0}


# --------------------------------------------------------------------------- a run
@pytest.fixture
def synthetic():
    from cluster.training.engine import FeatureData
    from tests.strategies import feature_frame
    return FeatureData(feature_frame(), data_version=3, feature_set="fs-test")


@pytest.mark.parametrize("model_type,params", [
    ("xgboost", {"n_estimators": 30, "max_depth": 3, "report_every": 5}),
    ("linear", {}),
    ("mlp", {"n_epochs": 3, "hidden_size": 16, "batch_size": 512, "device": "cpu"}),
    ("lstm", {"n_epochs": 2, "hidden_size": 8, "lookback": 5, "batch_size": 512,
              "device": "cpu"}),
])
def test_a_trial_scores_every_family_on_rank_ic(model_type, params, synthetic, tmp_path):
    """What the trainable does per fold, without Tune: the engine's progress rows
    become running RankIC reports; the folds' evaluations become the objective."""
    from cluster.config import load_settings
    from cluster.registry.artefacts import load_model, write_files
    from tuning.trainable import TrialSetup, _Trial, run_fold
    config = merged_space(model_type, fixed=params)
    config = {k: v for k, v in config.items() if not isinstance(v, dict)}  # fixed only
    folds = selection_folds(tuning_window(synthetic.frame["date"], 2), 2, 2)
    trial = _Trial(TrialSetup(model_type, folds, load_settings(home=tmp_path), FEATURES), config)
    reports = []
    for k in range(2):
        summary, blobs = run_fold(synthetic, trial.setup, config, k, f"t-fold{k + 1}",
                                  lambda row, k=k: reports.append(trial.on_row(k, row)))
        trial.finish(summary, blobs)
    final = trial.metrics()
    fold_ric = [trial.done[k]["rank_ic"] for k in range(2)]
    days = [trial.done[k]["days"] for k in range(2)]
    assert final["folds_done"] == 2 and final["fold_rank_ic"] == fold_ric
    # the score: the scored days' RankIC (day-weighted), not early stopping's own days
    assert final["selection_rank_ic"] == pytest.approx(
        (fold_ric[0] * days[0] + fold_ric[1] * days[1]) / sum(days))
    assert all(trial.done[k]["es_rank_ic"] != trial.done[k]["rank_ic"] for k in range(2))
    assert final["selection_rank_ic"] > 0.05, "the planted signal is found"
    running = [r for r in reports if r is not None]
    if model_type == "linear":  # one fit per fold, nothing about validation meanwhile
        assert running == [] and final["rounds"] == 2
    else:
        assert running and all("selection_rank_ic" in r for r in running)
        rounds = [r["rounds"] for r in running]
        assert rounds == sorted(rounds) and final["rounds"] >= rounds[-1]
    with tempfile.TemporaryDirectory() as tmp:  # the widest fold's model, as checkpointed
        write_files(Path(tmp), {k: v for k, v in blobs.items() if k.startswith("model/")})
        model = load_model(Path(tmp) / "model")
    assert type(model).__name__ == spec(model_type).class_name and model.best_iteration >= 1
    report = json.loads(blobs["report.json"])
    assert report["data"]["segments"]["valid"] == list(folds[1]["valid"])
    assert report["data"]["segments"]["test"] == list(folds[1]["test"])


def test_parallel_folds_stream_progress_from_ray_tasks(ray_session, synthetic, tmp_path,
                                                      monkeypatch):
    """A trial's folds as Ray generator tasks (what a multi-bundle trial runs in its
    placement group): progress rows stream back while both folds train."""
    from cluster.config import load_settings
    from tuning import trainable
    config = {k: v for k, v in merged_space("lightgbm", fixed=TINY_GBDT).items()
              if not isinstance(v, dict)}
    folds = selection_folds(tuning_window(synthetic.frame["date"], 2), 2, 2)
    setup = trainable.TrialSetup("lightgbm", folds, load_settings(home=tmp_path), FEATURES,
                                 parallel_folds=True)
    trial = trainable._Trial(setup, config)
    reports = []
    monkeypatch.setattr(trainable._Trial, "report",
                        lambda self, metrics, checkpoint=False: reports.append(
                            (dict(metrics), checkpoint)))
    trainable._parallel(trial, ray_session.put(synthetic), [0, 1], "par")
    ends = [m for m, ckpt in reports if ckpt]
    assert len(ends) == 2 and ends[-1]["folds_done"] == 2
    assert ends[-1]["fold_rank_ic"] == [trial.done[k]["rank_ic"] for k in (0, 1)]
    assert ends[-1]["selection_rank_ic"] > 0.1
    rows = [m for m, ckpt in reports if not ckpt]
    assert {m["fold"] for m in rows} == {1, 2} and len(rows) >= 4
    assert ends[-1]["rounds"] == sum(trial.done[k]["epochs"] for k in (0, 1))


def test_small_tuning_run_end_to_end(ray_session, mlops_home, synthetic):
    """Optuna + ASHA, best trial registered from its checkpoint. Random search + FIFO +
    retraining run in the resume test below."""
    from cluster.config import get_settings
    from cluster.errors import MlopsError
    from cluster.registry.store import ModelRegistry
    from tuning.runner import TuneRequest, run_tuning
    request = TuneRequest("lightgbm", samples=4, folds=2, name="e2e", search="optuna",
                          final="checkpoint", feature_columns=FEATURES, fixed=TINY_GBDT,
                          grace_period=10, registry_name="tuned")
    out = run_tuning(request, synthetic, get_settings())
    assert {"experiment", "trials", "best", "registry_name", "version", "seconds"} <= set(out)
    assert out["experiment"] == "e2e" and sum(out["trials"].values()) == 4
    assert set(out["trials"]) <= {"completed", "stopped_early"}
    assert out["trials"].get("completed", 0) >= 1
    best = out["best"]
    assert len(best["fold_rank_ic"]) == 2
    assert best["selection_rank_ic"] > 0.1, "the planted signal is found"
    # the held-out test score of what was registered, beside the selection score
    assert best["held_out_rank_ic"] is not None and best["held_out"]["days"] > 0
    assert 0.0125 <= best["config"]["learning_rate"] <= 0.2
    assert best["config"]["num_threads"] == 1 and best["config"]["num_leaves"] == 8
    assert out["folds"] == selection_folds(tuning_window(synthetic.frame["date"], 2), 2, 2)
    # every trial reported per batch of rounds, on ASHA's time axis
    rows = _trial_rows(mlops_home / "tune" / "e2e")
    assert len(rows) == 4 and all("rounds" in r for t in rows.values() for r in t)
    assert max(len(t) for t in rows.values()) > 4
    stopped = [t for t in rows.values() if t[-1]["folds_done"] < 2]
    assert all(t[-1]["rounds"] < 2 * TINY_GBDT["num_boost_round"] for t in stopped)

    reg = ModelRegistry(home=mlops_home)
    info = reg.get("tuned", out["version"])
    lineage = reg.lineage("tuned", out["version"])
    assert info.state == "trained" and info.feature_set == "fs-test"
    assert lineage["tune_experiment"] == "e2e" and lineage["tune_trial_id"] == best["trial_id"]
    assert lineage["data_version"] == 3
    assert lineage["segments"]["test"] == list(out["folds"][-1]["test"])  # the widest fold
    report = reg.artefact_json("tuned", out["version"], "report.json")
    assert report["tune"]["tune_trial_id"] == best["trial_id"]
    assert report["hyper_parameters"]["learning_rate"] == best["config"]["learning_rate"]
    with pytest.raises(MlopsError, match="resume"):
        run_tuning(request, synthetic, get_settings())


def test_asha_keeps_a_trial_that_spends_its_whole_budget(ray_session, mlops_home, synthetic):
    """A torch trial without early stopping runs every epoch of every fold: ASHA must
    not stop it at its budget before the fold-end report that carries its result."""
    from cluster.config import get_settings
    from tuning.runner import TuneRequest, run_tuning
    request = TuneRequest("mlp", samples=2, folds=2, name="full", feature_columns=FEATURES,
                          fixed={"n_epochs": 2, "early_stop": 5, "hidden_size": 16},
                          register=False)
    out = run_tuning(request, synthetic, get_settings())
    assert out["trials"].get("completed", 0) >= 1, out["trials"]
    assert out["best"] is not None and len(out["best"]["fold_rank_ic"]) == 2
    assert out["registry_name"] is None and out["best"]["held_out_rank_ic"] is not None


# --------------------------------------------------------------------------- resume
def _features_table(home: Path) -> None:
    from cluster.config import load_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.ingest import ingest
    settings = load_settings(home=home)
    ingest("synthetic", stocks=20, days=300, settings=settings)
    FeaturePipeline(settings).run(incremental=False, use_ray=False)


def _trial_rows(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for path in exp.glob("*/result.json"):
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def test_resume_after_the_driver_is_killed(ray_session, mlops_home, capsys):
    """``python -m jobs.tune`` in a subprocess (its own local Ray) is killed after one
    trial finished and another finished one of its folds; ``--resume`` finishes it
    (here in process, on the session's Ray: one ray.init less)."""
    from jobs._cli import run
    from jobs.tune import main
    _features_table(mlops_home)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLOPS_HOME=str(mlops_home), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "jobs.tune", "--model", "lightgbm", "--samples", "3",
           "--max-concurrent", "1", "--scheduler", "fifo", "--folds", "2", "--name", "rs",
           "--set", "num_boost_round=80", "--set", "early_stopping_rounds=80",
           "--set", "num_leaves=8"]
    exp = mlops_home / "tune" / "rs"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    finished, partial, deadline = {}, [], time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = _trial_rows(exp)
            finished = {t: r[-1] for t, r in rows.items() if r[-1].get("folds_done") == 2}
            partial = [t for t, r in rows.items() if r[-1].get("folds_done") == 1]
            if finished and partial:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its own local Ray
        proc.wait()
    output = proc.stdout.read().decode(errors="replace")
    assert finished and partial, "the run was not caught mid-way:\n" + output[-3000:]
    killed_at = time.time()

    assert run(main, ["--resume", "rs"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"experiment", "trials", "best", "registry_name", "version", "seconds"} <= set(out)
    assert out["experiment"] == "rs" and out["trials"] == {"completed": 3}
    rows = _trial_rows(exp)
    assert len(rows) == 3 and set(finished) <= set(rows)
    for trial_id, last in finished.items():  # nothing finished was lost or redone
        assert rows[trial_id][-1]["selection_rank_ic"] == \
            pytest.approx(last["selection_rank_ic"])
        assert rows[trial_id][-1]["fold_rank_ic"] == last["fold_rank_ic"]
    reports = mlops_home / "reports"
    for trial_id in partial:  # its first fold came from the checkpoint, not retrained
        fold1 = json.loads((reports / f"{trial_id}-fold1.json").read_text())
        assert pd.Timestamp(fold1["started_at"]).timestamp() < killed_at
        assert json.loads((reports / f"{trial_id}-fold2.json").read_text())["status"] == \
            "completed"
    from cluster.registry.store import ModelRegistry
    reg = ModelRegistry(home=mlops_home)
    lineage = reg.lineage(out["registry_name"], out["version"])
    assert lineage["tune_experiment"] == "rs"
    assert lineage["tune_trial_id"] == out["best"]["trial_id"]
    assert reg.get(out["registry_name"], out["version"]).state == "trained"
    report = reg.artefact_json(out["registry_name"], out["version"], "report.json")
    assert set(report["metrics"]) == {"train", "valid", "test"}  # retrained, test held out
