"""Batch scoring: a registered version over the features table on Ray Data.

The driver loads the version from the registry once (integrity and feature set
checked) and puts it in Ray's object store; the rows (pruned by date and instrument)
are cut into blocks of whole instruments and mapped with ``map_batches`` over an
actor pool (:class:`cluster.monitoring.scorer.Scorer`, one actor per block at most):
each actor takes the model from the object store once and predicts every batch it
is given. No actor opens the registry or MLflow (the object store is an in-memory
hand-over inside one Ray job; the stored artefact stays in the library's format).

Per call the fixed cost is the pool's start: a worker process per actor, which
imports its model's module (for Qlib's boosters all of ``qlib.contrib.model``, torch
included: seconds) -- Ray Data starts a new pool per dataset, so no call warms the
next. Blocks of ``block_rows`` rows keep the per-batch cost small.

The predictions go to the ``predictions`` table as serving writes them, with
``source='batch'``, in one commit sorted by (instrument, date).
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
from cluster.lake import predictions as P
from cluster.lake.features import FeaturesTable


def model_features(registry, name: str, version: str, model=None) -> list[str]:
    model = model if model is not None else registry.load(name, version)
    feats = [str(f) for f in (getattr(model, "feature_names", None) or [])]
    if not feats:
        report = registry.artefact_json(name, version, "report.json")
        feats = [str(f) for f in report.get("data", {}).get("features", [])]
    if not feats:
        raise MlopsError(f"{name}/{version} records no feature names")
    return feats


def predict_frame(model, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The model's predictions for feature rows (columns instrument, date, features):
    the one prediction path of every model kind (``cluster.models.inputs``); a rolling
    model picks each date's step, a sequence model reads each row's window from the
    earlier rows of its instrument in ``frame`` (padded where ``frame`` starts)."""
    from cluster.models.inputs import predict_frame_rows
    return predict_frame_rows(model, frame, features)


def resolve_version(registry, name: str, version: str | None, stage: str | None) -> str:
    if version:
        return str(version)
    stage = stage or "production"
    found = registry.by_state(name, stage)
    if not found:
        raise MlopsError(f"{name} has no version in state {stage!r}; pass --version")
    return found[-1].version


def score(name: str, version: str | None = None, stage: str | None = None, start=None,
          end=None, instruments: list[str] | None = None, settings: Settings | None = None,
          use_ray: bool = True, concurrency: int = 2, block_rows: int = 50_000,
          write: bool = True) -> dict:
    """Score the features rows in range and append them to the predictions table."""
    from cluster.registry.store import ModelRegistry
    settings = settings or get_settings()
    started = time.perf_counter()
    registry = ModelRegistry.for_settings(settings)
    version = resolve_version(registry, name, version, stage)
    info = registry.get(name, version)
    table = FeaturesTable(settings.lake_dir)
    if not table.exists():
        raise MlopsError("no features yet: run `python -m jobs.features` first")
    features_version = table.version()
    model = registry.load(name, version, expected_feature_set=info.feature_set)
    feats = model_features(registry, name, version, model)
    rows = table.read(features_version, instruments, start, end, columns=[*feats,
                                                                         "data_version"])
    if rows.empty:
        raise MlopsError(f"no feature rows for {instruments or 'any instrument'} between "
                         f"{start or 'the start'} and {end or 'the end'}")
    out = rows[["instrument", "date", "data_version"]].copy()
    if use_ray:
        out["output"] = _score_on_ray(rows, model, feats, concurrency, block_rows)
    else:
        out["output"] = predict_frame(model, rows, feats)
    out = out.sort_values(["instrument", "date"], kind="stable").reset_index(drop=True)
    out["features_version"] = features_version
    model_id = f"{name}/{version}"
    run_id = f"batch-{uuid.uuid4().hex[:12]}"
    if write:
        P.append(settings.lake_dir, P.batch_rows(out, model_id, out["output"].to_numpy(),
                                                 run_id, time.time()))
        from cluster.monitoring.raymetrics import count_predictions
        count_predictions(model_id, "batch", len(out))
    return {"model": name, "version": version, "rows": int(len(out)),
            "days": int(out["date"].nunique()), "features_version": features_version,
            "run_id": run_id, "seconds": round(time.perf_counter() - started, 3),
            "output": out if not write else None}


def instrument_blocks(instruments: pd.Series, block_rows: int, min_blocks: int
                      ) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of ``instruments`` (grouped: each instrument's rows
    contiguous) cutting only between instruments -- a sequence model reads each row's
    window from its instrument's earlier rows in the same batch -- of about
    ``block_rows`` rows, and at least ``min_blocks`` when there are that many
    instruments (one block per actor)."""
    n = len(instruments)
    codes = pd.factorize(instruments)[0]
    bounds = np.flatnonzero(np.diff(codes)) + 1          # first row of each new instrument
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    n_blocks = max(1, min(len(starts), max(min_blocks, -(-n // max(1, block_rows)))))
    # cut at the instrument start nearest each equal share of the rows
    targets = np.arange(1, n_blocks) * n / n_blocks
    cuts = np.unique(starts[np.clip(np.searchsorted(starts, targets), 0, len(starts) - 1)])
    edges = [0, *[int(c) for c in cuts if 0 < c < n], n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _score_on_ray(rows: pd.DataFrame, model, features: list[str], concurrency: int,
                  block_rows: int) -> np.ndarray:
    """Predictions for ``rows`` (in its order) from an actor pool of at most
    ``concurrency`` actors, one per block at most."""
    import ray
    from cluster.monitoring.scorer import ROW, Scorer
    from cluster.ray_env import ensure_ray
    ensure_ray()
    order = np.argsort(rows["instrument"].astype(str).to_numpy(), kind="stable")
    grouped = rows.iloc[order]
    table = pa.Table.from_pandas(grouped[["instrument", "date", *features]],
                                 preserve_index=False).append_column(
        ROW, pa.array(order.astype(np.int64)))
    spans = instrument_blocks(grouped["instrument"], block_rows, max(1, concurrency))
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in spans])
    model_ref = ray.put(model)
    scored = ds.map_batches(
        Scorer, batch_format="pandas", batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(concurrency, len(spans)))),
        fn_constructor_kwargs={"model_ref": [model_ref], "features": features},
        num_cpus=1).to_pandas()
    if len(scored) != len(rows) or scored[ROW].nunique() != len(rows):
        raise MlopsError(f"batch scoring returned {len(scored)} predictions for "
                         f"{len(rows)} rows")
    pred = np.empty(len(rows), dtype=np.float64)
    pred[scored[ROW].to_numpy()] = scored["output"].to_numpy()
    return pred
