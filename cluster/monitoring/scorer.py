"""The Ray Data actor of batch scoring, kept apart from :mod:`cluster.monitoring.batch`
so that an actor imports only what predicting needs: numpy, pandas, the prediction
path and (when the model is unpickled) the module of its own model class -- not the
lake, the registry, MLflow or the rest of the zoo.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ROW = "_row"  # position of a row in the driver's frame: the only key an actor sends back


class Scorer:
    """One actor: the model the driver loaded and verified, taken from the object store
    once (``ray.get`` in the constructor), predicting every batch it is given.

    ``model_ref`` is a one-element list so that Ray hands the reference itself to the
    constructor (a bare ObjectRef argument would be resolved by Ray Data's wrapper on
    some versions and not on others)."""

    def __init__(self, model_ref: list, features: list[str]):
        import ray
        self.model = ray.get(model_ref[0])
        self.features = list(features)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from cluster.models.inputs import predict_frame_rows
        out = predict_frame_rows(self.model, batch, self.features)
        return pd.DataFrame({ROW: batch[ROW].to_numpy(dtype=np.int64),
                             "output": np.asarray(out, dtype=np.float64)})
