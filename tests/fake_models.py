"""A fake model type for the training engine's stage machinery: instant epochs, and it
fails or stops where a test says (construction, an epoch, prediction)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from qlib.data.dataset.handler import DataHandlerLP
from qlib.model.base import Model

from cluster.errors import TrainingStopped

DEFAULT_PARAMS = dict(n_epochs=3, fail_in="", fail_epoch=0)


class FastModel(Model):
    def __init__(self, n_epochs=3, fail_in="", fail_epoch=0, **_):
        if fail_in == "init":
            raise RuntimeError("injected failure while configuring")
        self.n_epochs, self.fail_in, self.fail_epoch = int(n_epochs), fail_in, int(fail_epoch)
        self.history, self.best_epoch = [], 0

    def fit(self, dataset, reporter=None, stop_event=None, **_):
        for epoch in range(1, self.n_epochs + 1):
            if stop_event is not None and stop_event.is_set():
                raise TrainingStopped(f"stopped at epoch {epoch}")
            if self.fail_in == "epoch" and epoch == self.fail_epoch:
                raise RuntimeError(f"injected failure at epoch {epoch}")
            row = {"epoch": epoch, "n_epochs": self.n_epochs, "train_loss": 1.0 / epoch}
            self.history.append(row)
            if reporter is not None:
                reporter(dict(row))
        self.best_epoch = self.n_epochs
        return self

    def predict(self, dataset, segment="test"):
        if self.fail_in == "predict":
            raise RuntimeError("injected failure while evaluating")
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(np.arange(len(x), dtype=np.float64) % 7, index=x.index)
