"""Every registered version is also an MLflow ``pyfunc`` model.

The version's ``model`` artefact is an MLflow model directory: ``MLmodel`` (with
the signature), the environment files, and under ``data/`` our own artefact
directory (:mod:`cluster.registry.artefacts`: library formats, no pickle). The
pyfunc flavour names this module as its ``loader_module``, so

    mlflow.pyfunc.load_model("models:/stock-lightgbm/3").predict(frame)

rebuilds the model without unpickling anything (the files are checked against
their manifest hashes on the way) and predicts what serving predicts for the same
rows: ``frame`` holds the feature columns, optionally ``datetime`` and
``instrument`` (sequence models then read each row's window from the earlier rows
of its instrument in the frame; rolling models pick the step covering each date;
ensembles combine per date). Our own load path (``ModelRegistry.load``) verifies
the registered hash of the whole directory as well.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cluster.models.inputs import DATE_COLUMNS, INSTRUMENT_COLUMN, predict_frame_rows
from cluster.registry.artefacts import load_model, save_model

DATA_DIR = "model"          # our artefact directory, under the MLflow model's data/
OUTPUT = "prediction"


def signature(features: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema
    inputs = [ColSpec("double", f) for f in features]
    inputs += [ColSpec("datetime", DATE_COLUMNS[0], required=False),
               ColSpec("string", INSTRUMENT_COLUMN, required=False)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", OUTPUT)]))


def requirements() -> list[str]:
    """The libraries a loaded model needs, pinned to the versions it was saved with."""
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for dist in ("mlflow", "numpy", "pandas", "lightgbm", "xgboost", "torch", "pyqlib"):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return out


def write_model_dir(model, features: list[str], path: Path, staging: Path) -> None:
    """An MLflow model directory at ``path`` holding ``model`` in library formats."""
    import mlflow.pyfunc
    staged = Path(staging) / DATA_DIR
    save_model(model, staged)
    # explicit requirements: MLflow would otherwise load the model in a subprocess to
    # infer them, seconds per registration
    mlflow.pyfunc.save_model(str(path), loader_module=__name__, data_path=str(staged),
                             signature=signature(features), pip_requirements=requirements())


def model_data_dir(path: Path) -> Path:
    """Our artefact directory inside a downloaded MLflow model directory."""
    return Path(path) / "data" / DATA_DIR


class PyfuncModel:
    """What ``mlflow.pyfunc`` wraps: predictions for a frame of feature rows."""

    def __init__(self, model):
        self.model = model
        self.features = [str(f) for f in model.feature_names]

    def predict(self, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else \
            pd.DataFrame(model_input)
        preds = predict_frame_rows(self.model, frame, self.features)
        return pd.DataFrame({OUTPUT: preds.astype(np.float64)}, index=frame.index)


def _load_pyfunc(data_path: str, model_config=None):
    from cluster.config import get_settings
    return PyfuncModel(load_model(Path(data_path), get_settings().registry.model_modules))
