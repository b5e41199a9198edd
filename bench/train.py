"""Training benchmarks on a fixed synthetic features table (planted signal, NaN/inf).

    python bench/train.py [--quick] [--part all|lgb|torch] [--device cpu|cuda|auto]
                          [--threads N] [--models mlp,lstm,...] [--repeat N]

(a) Engine overhead for LightGBM: ``TrainingEngine.run`` (register off) versus
    ``lightgbm.train`` called directly on the same train matrix with the same params
    and the number of rounds the engine ran. Two ratios, labelled: the engine's fit
    stage (the boosting plus its per-round valid IC / reporting / stop checks) and the
    whole run (dataset build + fit + evaluation of 3 segments + importance + report).
    Target: fit <= 1.2x.
(b) Epoch time of each torch model at the seed default architecture sizes, through
    the model's own ``fit``: ``first_epoch_s`` is fit start -> first epoch report
    (data setup included), ``epoch_s`` the second epoch (report -> report: one pass
    over the train rows plus one inference pass over the valid rows).

Sizes differ by device (the CPU ones keep PatchTST/TimesNet at their default widths
within minutes) and are printed with the figures. Table on stderr, JSON last on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from _common import report, timed

TORCH_MODELS = ["mlp", "lstm", "transformer", "informer", "timesnet", "patchtst", "tabnet"]


def synthetic_features(n_inst: int, n_days: int, n_feat: int, seed: int = 0) -> pd.DataFrame:
    """Features-table rows (instrument, date, f0.., LABEL0): label = 0.4 f0 - 0.2 f1 +
    noise, with NaN and inf sprinkled in as raw Alpha158 has them."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-01", periods=n_days)
    idx = pd.MultiIndex.from_product([[f"S{i:04d}" for i in range(n_inst)], dates],
                                     names=["instrument", "date"])
    x = rng.standard_normal((len(idx), n_feat)).astype(np.float32)
    x[rng.random(x.shape) < 0.002] = np.nan
    x[rng.random(x.shape) < 0.0005] = np.inf
    label = 0.4 * np.nan_to_num(x[:, 0], posinf=0) - 0.2 * np.nan_to_num(x[:, 1], posinf=0)
    label = label + rng.standard_normal(len(idx))
    frame = pd.DataFrame(x, index=idx, columns=[f"f{i}" for i in range(n_feat)]).reset_index()
    frame["LABEL0"] = (label * 0.01).astype(np.float32)
    frame["feature_set"], frame["data_version"] = "fs-bench", 1
    return frame


def _engine(home):
    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.training.engine import TrainingEngine
    return TrainingEngine(load_settings(home=home), EventBus(None), persist_events=False)


def _stage_seconds(rep: dict, start: str, end: str) -> float:
    at = {s["stage"]: pd.Timestamp(s["time"]) for s in rep["stages"]}
    return (at[end] - at[start]).total_seconds()


def bench_lightgbm(args, home) -> list[dict]:
    import lightgbm as lgb

    from cluster.features.qlib_bridge import build_dataset, default_segments
    from cluster.models.gbdt import _segment
    from cluster.training.engine import FeatureData, TrainRequest

    n_inst, n_days, n_feat, rounds = (60, 200, 40, 60) if args.quick else (200, 300, 158, 200)
    frame = synthetic_features(n_inst, n_days, n_feat)
    data = FeatureData(frame, data_version=1, feature_set="fs-bench")
    cols = [f"f{i}" for i in range(n_feat)]
    request = TrainRequest("lightgbm", params={"num_boost_round": rounds}, feature_columns=cols,
                           register=False)
    engine = _engine(home)
    results = []

    def ours():
        res = engine.run(request, data, raise_on_error=True)
        results.append(res)
        return res

    t_total, res = timed(ours, args.repeat)
    fit_s = sorted(_stage_seconds(r.report, "training", "evaluating") for r in results)
    t_fit = fit_s[len(fit_s) // 2]
    model = res.model
    n_rounds = len(model.history)

    # the same train matrix the engine's fit built, the same params and rounds
    dataset = build_dataset(frame, default_segments(frame["date"]), feature_columns=cols)
    x_tr, y_tr, _, _ = _segment(dataset, "train")
    params = dict(model.params, metric="None", verbosity=-1)

    def baseline():
        return lgb.train(params, lgb.Dataset(x_tr, label=y_tr), num_boost_round=n_rounds)

    t_base, _ = timed(baseline, args.repeat)
    shape = f"{n_inst}x{n_days}x{n_feat}"
    return [
        {"what": "lightgbm.train direct (train matrix)", "data": shape, "train_rows": len(y_tr),
         "rounds": n_rounds, "seconds": round(t_base, 3)},
        {"what": "engine fit stage (LightGBMModel.fit: valid IC each round)", "rounds": n_rounds,
         "best_round": model.best_iteration, "seconds": round(t_fit, 3),
         "ratio_vs_direct": round(t_fit / t_base, 3), "target": "<= 1.2"},
        {"what": "engine total run (dataset + fit + evaluate 3 segments + importance + report)",
         "seconds": round(t_total, 3), "ratio_vs_direct": round(t_total / t_base, 3)},
    ]


def _torch_sizes(args, device: str) -> tuple[int, int, int]:
    if args.quick:
        return 8, 110, 40
    return (241, 320, 158) if device == "cuda" else (12, 130, 158)


def bench_torch(args, home) -> list[dict]:
    import torch
    from qlib.data.dataset.handler import DataHandlerLP

    from cluster.features.qlib_bridge import build_dataset, default_segments
    from cluster.models.torch_base import resolve_device
    from cluster.models.zoo import create_model

    device = resolve_device(args.device).type
    if args.threads:
        torch.set_num_threads(args.threads)
    n_inst, n_days, n_feat = _torch_sizes(args, device)
    frame = synthetic_features(n_inst, n_days, n_feat)
    cols = [f"f{i}" for i in range(n_feat)]
    dataset = build_dataset(frame, default_segments(frame["date"]), feature_columns=cols)
    n_epochs = 1 if args.quick else 2
    # the first Adam imports torch._dynamo (seconds): not charged to the first model
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows = []
    for name in args.models:
        model = create_model(name, {"n_epochs": n_epochs, "early_stop": n_epochs + 1,
                                    "device": device})
        stamps: list[float] = []
        t0 = time.perf_counter()
        model.fit(dataset, reporter=lambda row: stamps.append(time.perf_counter()))
        n_train = len(dataset.prepare("train", col_set="label", data_key=DataHandlerLP.DK_L))
        row = {"model": name, "device": device, "threads": torch.get_num_threads(),
               "data": f"{n_inst}x{n_days}x{n_feat}", "train_rows": n_train,
               "batch_size": model.params["batch_size"],
               "first_epoch_s": round(stamps[0] - t0, 3)}
        if len(stamps) > 1:
            row["epoch_s"] = round(stamps[1] - stamps[0], 3)
        per_epoch = row.get("epoch_s", row["first_epoch_s"])
        row["train_rows_per_s"] = round(n_train / per_epoch, 1)
        rows.append(row)
        print(f"  {name}: {row}", file=sys.stderr, flush=True)
    if device == "cuda":
        rows.append({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sets, 1 epoch, 1 repeat")
    p.add_argument("--part", choices=["all", "lgb", "torch"], default="all")
    p.add_argument("--device", default="auto", help="torch models: cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--models", default=",".join(TORCH_MODELS))
    p.add_argument("--repeat", type=int, default=None, help="LightGBM timing repeats")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.repeat = args.repeat or (1 if args.quick else 3)
    home = tempfile.mkdtemp(prefix="bench_train_")
    out = {"command": " ".join(sys.argv), "quick": args.quick}
    if args.part in ("all", "lgb"):
        out["lightgbm_engine_overhead"] = bench_lightgbm(args, home)
        report("LightGBM: engine vs lightgbm.train", out["lightgbm_engine_overhead"])
    if args.part in ("all", "torch"):
        out["torch_epoch_time"] = bench_torch(args, home)
        report("torch models: epoch time at the seed default sizes", out["torch_epoch_time"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
