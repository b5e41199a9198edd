"""Batch scoring: a registered version over the features table on Ray Data.

The rows (pruned by date and instrument) are cut into blocks of whole instruments
and mapped with ``map_batches`` over an actor pool: each actor loads the model from
the registry once (integrity and feature set checked) and predicts every batch it
is given. The predictions go to the ``predictions`` table as serving writes them,
with ``source='batch'``, in one commit sorted by (instrument, date).
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


class Scorer:
    """One Ray Data actor: the model, loaded once, predicting every batch it gets."""

    def __init__(self, home: str, tracking_uri: str | None, name: str, version: str,
                 feature_set: str | None):
        from cluster.registry.store import ModelRegistry
        registry = ModelRegistry(home=home, tracking_uri=tracking_uri)
        self.model = registry.load(name, version, expected_feature_set=feature_set)
        self.features = model_features(registry, name, version, self.model)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch[["instrument", "date", "data_version"]].copy()
        out["output"] = predict_frame(self.model, batch, self.features)
        return out


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
          use_ray: bool = True, concurrency: int = 2, block_instruments: int = 16,
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
    if use_ray:
        out = _score_on_ray(rows, settings, name, version, info.feature_set, concurrency,
                            block_instruments)
    else:
        out = rows[["instrument", "date", "data_version"]].copy()
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


def _score_on_ray(rows: pd.DataFrame, settings: Settings, name: str, version: str,
                  feature_set: str | None, concurrency: int, block_instruments: int):
    import ray
    from cluster.ray_env import ensure_ray
    ensure_ray()
    insts = rows["instrument"].unique()
    blocks = [pa.Table.from_pandas(rows[rows["instrument"].isin(insts[i:i + block_instruments])],
                                   preserve_index=False)
              for i in range(0, len(insts), block_instruments)]
    ds = ray.data.from_arrow(blocks)
    scored = ds.map_batches(
        Scorer, batch_format="pandas", batch_size=None, concurrency=max(1, concurrency),
        fn_constructor_kwargs={"home": str(settings.home.resolve()),
                               "tracking_uri": settings.tracking_uri, "name": name,
                               "version": version, "feature_set": feature_set},
        num_cpus=1)
    out = scored.to_pandas()
    # Ray Data hands dates back as datetime64[us]; the rest of the code uses [ns]
    out["date"] = pd.to_datetime(out["date"]).astype("datetime64[ns]")
    return out
