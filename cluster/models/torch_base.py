"""The shared PyTorch training loop of the model zoo's neural models.

``TorchModel`` is a Qlib ``Model``: ``fit(dataset)`` trains on the ``train``
segment of a ``DatasetH`` and validates on ``valid`` every epoch, ``predict``
returns a ``pd.Series`` indexed (datetime, instrument) like Qlib's models. A
subclass only builds its network (``_build_network``) and says whether it reads
sequences (``SEQ_PARAM``, the name of its window-length parameter). Windows are
in :mod:`cluster.models.torch_windows`, permutation importance in
:mod:`cluster.models.torch_importance`.

Normalisation (kept inside the model, so ``predict`` on raw Alpha158 rows gives
the same answers in any process): a :class:`~cluster.models.normalize.RobustScaler`
fitted on the train segment's feature rows -- ``(x - median) / (1.4826 * MAD)``
(std where the MAD is 0), clipped to +-3, NaN and +-inf -> 0.

Windows of the valid/test segments reach back into earlier segments: they are
built from the handler's infer data (``DK_I``) of every date up to the segment's
last date.

Early stopping: the one :class:`~cluster.training.early_stop.EarlyStopper` on the
valid IC, RankIC or MSE (``early_stop_metric``) scored by the one
:class:`~cluster.training.metrics.DailyScorer`; the best epoch's weights are
restored. ``reporter`` gets one dict per epoch; ``stop_event.is_set()`` is checked
between batches and ends the run with ``TrainingStopped``.

Stored as a ``state_dict`` (read back with ``torch.load(weights_only=True)``), the
scaler as plain arrays and the parameters as JSON; never pickled. (Pickling, which
Ray uses to move a model between processes, holds CPU tensors only.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from qlib.data.dataset.handler import DataHandlerLP
from qlib.model.base import Model
from torch import nn

from cluster.errors import TrainingStopped
from cluster.models.normalize import RobustScaler
from cluster.models.torch_windows import Panel, fit_windows, levels, panel_layout
from cluster.training.early_stop import EarlyStopper
from cluster.training.metrics import DailyScorer

# Parameters every torch model accepts; a model's DEFAULT_PARAMS override them.
BASE_PARAMS = dict(lr=0.001, n_epochs=100, batch_size=256, early_stop=15, dropout=0.1, seed=0,
                   device="auto", early_stop_metric="ic", weight_decay=0.0)
EARLY_STOP_METRICS = DailyScorer.METRICS
FEATURE_CLIP = 3.0       # scaled features are clipped to +-3
GRAD_CLIP_VALUE = 3.0    # as Qlib's pytorch models: clip_grad_value_(params, 3.0)
_SCALE_CHUNK = 65536     # rows scaled at a time (bounds the float64 temporaries)
NET_FILE, SCALER_FILE = "net.pt", "scaler.npz"


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` -> the GPU when one is present, else the CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchModel(Model):
    """Base of the zoo's PyTorch models (see the module docstring)."""

    DEFAULT_PARAMS: dict = {}
    SEQ_PARAM: str | None = None  # e.g. "lookback" / "seq_len" for sequence models
    iteration_unit = "epoch"

    def __init__(self, **params):
        super().__init__()
        merged = dict(BASE_PARAMS)
        merged.update(self.DEFAULT_PARAMS)
        unknown = set(params) - set(merged)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for "
                             f"{type(self).__name__}; known: {sorted(merged)}")
        merged.update(params)
        if merged["early_stop_metric"] not in EARLY_STOP_METRICS:
            raise ValueError(f"early_stop_metric must be one of {EARLY_STOP_METRICS}, "
                             f"got {merged['early_stop_metric']!r}")
        resolve_device(merged["device"])  # fails early on a bad device string
        self.params = merged
        self.net: nn.Module | None = None
        self.scaler: RobustScaler | None = None
        self.feature_names: list[str] = []
        self.n_features = 0
        self.history: list[dict] = []
        self.best_epoch = 0
        self.fitted = False

    # -- what subclasses provide ------------------------------------------------
    def _build_network(self, n_features: int) -> nn.Module:
        """The network; it maps (B, F) -- or (B, seq_len, F) for sequence models --
        to (B,) predictions, or to ``(predictions, auxiliary_loss)``."""
        raise NotImplementedError

    @property
    def sequence(self) -> bool:
        return self.SEQ_PARAM is not None

    @property
    def seq_len(self) -> int:
        return int(self.params[self.SEQ_PARAM]) if self.SEQ_PARAM else 1

    @property
    def window_length(self) -> int:
        """Rows per instrument a prediction reads (serving builds windows this long)."""
        return self.seq_len

    @property
    def best_iteration(self) -> int:
        return self.best_epoch

    def __getattr__(self, name):
        # parameters read as attributes (model.lr, model.hidden_size, ...)
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- data -------------------------------------------------------------------
    def feature_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        if isinstance(features.columns, pd.MultiIndex) and "feature" in \
                features.columns.get_level_values(0):
            features = features["feature"]
        if not all(isinstance(c, str) for c in features.columns):
            features = features.rename(columns=str)
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise ValueError(f"features lack {len(missing)} column(s) the model was trained "
                             f"on, e.g. {missing[:3]}")
        return features[self.feature_names]

    def _scale(self, values: np.ndarray) -> np.ndarray:
        out = np.empty(values.shape, dtype=np.float32)
        for s in range(0, len(values), _SCALE_CHUNK):
            out[s:s + _SCALE_CHUNK] = self.scaler.transform(values[s:s + _SCALE_CHUNK])
        return out

    def build_panel(self, features: pd.DataFrame, device) -> tuple[Panel, np.ndarray]:
        """Scaled panel of ``features`` (already restricted to ``feature_names``) and
        each input row's position in it."""
        order, starts = panel_layout(features.index)
        values = features.to_numpy(dtype=np.float32)[order]
        data = np.zeros((len(order) + 1, values.shape[1]), dtype=np.float32)
        data[:-1] = self._scale(values)
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        panel = Panel(torch.from_numpy(data).to(device), starts, features.index[order])
        return panel, pos

    def _gather(self, panel: Panel, pos: np.ndarray) -> torch.Tensor:
        return panel.gather(pos, self.seq_len if self.sequence else None)

    @staticmethod
    def _split(out):
        if isinstance(out, (tuple, list)):
            return out[0].reshape(-1), out[1]
        return out.reshape(-1), None

    @staticmethod
    def _check_stop(stop_event, where: str) -> None:
        if stop_event is not None and stop_event.is_set():
            raise TrainingStopped(f"training stopped ({where})")

    def _forward_batches(self, net: nn.Module, batches, n: int, stop_event=None,
                         where: str = "predicting") -> np.ndarray:
        net.eval()
        out = np.empty(n, dtype=np.float32)
        with torch.no_grad():
            s = 0
            for x in batches:
                self._check_stop(stop_event, where)
                pred, _ = self._split(net(x))
                out[s:s + len(pred)] = pred.float().cpu().numpy()
                s += len(pred)
        return out

    def run_net(self, net: nn.Module, panel: Panel, pos: np.ndarray, stop_event=None,
                where: str = "predicting") -> np.ndarray:
        bs = max(int(self.params["batch_size"]), 1)
        batches = (self._gather(panel, pos[s:s + bs]) for s in range(0, len(pos), bs))
        return self._forward_batches(net, batches, len(pos), stop_event, where)

    def _seed(self) -> None:
        seed = int(self.params["seed"])
        np.random.seed(seed)
        torch.manual_seed(seed)  # CPU and every GPU

    # -- training -----------------------------------------------------------------
    def fit(self, dataset, reporter=None, stop_event=None, **_):
        p = self.params
        self._check_stop(stop_event, "before training")
        device = resolve_device(p["device"])
        self._seed()
        train = dataset.prepare("train", col_set=["feature", "label"],
                                data_key=DataHandlerLP.DK_L)
        valid = dataset.prepare("valid", col_set=["feature", "label"],
                                data_key=DataHandlerLP.DK_L)
        for name, df in (("train", train), ("valid", valid)):
            if df.empty:
                raise ValueError(f"segment {name!r} of the dataset is empty")
        train = train[np.isfinite(train["label"].to_numpy(dtype=np.float64)).ravel()]
        valid = valid[np.isfinite(valid["label"].to_numpy(dtype=np.float64)).ravel()]
        self.feature_names = [str(c) for c in train["feature"].columns]
        train.columns = pd.MultiIndex.from_tuples(
            [(a, str(b)) for a, b in train.columns])
        valid.columns = pd.MultiIndex.from_tuples(
            [(a, str(b)) for a, b in valid.columns])
        self.n_features = len(self.feature_names)
        self.scaler = RobustScaler(FEATURE_CLIP).fit(
            train["feature"].to_numpy(dtype=np.float32))
        y_tr = np.array(train["label"].to_numpy(dtype=np.float32).ravel(), copy=True)
        y_va = valid["label"].to_numpy(dtype=np.float64).ravel()

        if self.sequence:
            # one panel serves both segments: windows only look back
            last = max(levels(train.index)[0].max(), levels(valid.index)[0].max())
            hist = dataset.handler.fetch(slice(None, last), col_set="feature",
                                         data_key=DataHandlerLP.DK_I)
            hist.columns = [str(c) for c in hist.columns]
            panel_tr, _ = self.build_panel(self.feature_frame(hist), device)
            panel_va = panel_tr
            pos_tr, pos_va = panel_tr.locate(train.index), panel_tr.locate(valid.index)
            del hist
        else:
            panel_tr, pos_tr = self.build_panel(train["feature"][self.feature_names], device)
            panel_va, pos_va = self.build_panel(valid["feature"][self.feature_names], device)
        del train["feature"], valid["feature"]

        scorer = DailyScorer(levels(valid.index)[0], y_va)
        y_tr_t = torch.from_numpy(y_tr).to(device)
        net = self._build_network(self.n_features).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        rng = np.random.RandomState(int(p["seed"]))
        n_epochs, bs = int(p["n_epochs"]), max(int(p["batch_size"]), 1)
        stopper = EarlyStopper(int(p["early_stop"]))
        best_state = None
        self.history, self.best_epoch, self.fitted = [], 0, False

        for epoch in range(1, n_epochs + 1):
            net.train()
            perm = rng.permutation(len(pos_tr))
            batches = [perm[s:s + bs] for s in range(0, len(perm), bs)]
            if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm needs 2 rows
                batches[-2] = np.concatenate(batches[-2:])
                batches.pop()
            total = torch.zeros((), dtype=torch.float64, device=device)
            for batch in batches:
                self._check_stop(stop_event, f"epoch {epoch}")
                x = self._gather(panel_tr, pos_tr[batch])
                y = y_tr_t[torch.from_numpy(batch).to(device)]
                pred, aux = self._split(net(x))
                mse = torch.mean((pred - y) ** 2)
                loss = mse if aux is None else mse + aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_value_(net.parameters(), GRAD_CLIP_VALUE)
                opt.step()
                total += mse.detach().double() * len(batch)
            train_loss = float(total.item() / max(len(pos_tr), 1))

            pred_va = self.run_net(net, panel_va, pos_va, stop_event,
                                   f"validating epoch {epoch}")
            row = dict(epoch=epoch, n_epochs=n_epochs, train_loss=train_loss,
                       valid_loss=scorer.mse(pred_va), valid_ic=scorer.ic(pred_va),
                       valid_rank_ic=scorer.rank_ic(pred_va))
            score = {"ic": row["valid_ic"], "rank_ic": row["valid_rank_ic"],
                     "loss": -row["valid_loss"]}[p["early_stop_metric"]]
            improved, stop = stopper.update(epoch, score)
            if improved:
                self.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            self.history.append(row)
            if reporter is not None:
                reporter(dict(row, best_epoch=self.best_epoch))
            if stop:
                break

        net.load_state_dict(best_state)
        net.eval()
        self.net = net
        self.fitted = True
        return self

    # -- prediction ---------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.fitted or self.net is None:
            raise ValueError(f"{type(self).__name__} is not fitted yet")

    def ready_net(self) -> tuple[nn.Module, torch.device]:
        self._require_fitted()
        device = resolve_device(self.params["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")  # trained on a GPU, loaded by a CPU-only replica
        self.net.to(device)
        self.net.eval()
        return self.net, device

    def _predict_targets(self, features: pd.DataFrame, target: pd.Index) -> pd.Series:
        net, device = self.ready_net()
        panel, pos = self.build_panel(self.feature_frame(features), device)
        if target is not None:
            pos = panel.locate(target)
        else:
            target = features.index
        return pd.Series(self.run_net(net, panel, pos).astype(np.float64), index=target)

    def predict(self, dataset, segment="test", **_) -> pd.Series:
        self._require_fitted()
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        x.columns = [str(c) for c in x.columns]
        if x.empty:
            return pd.Series(dtype=np.float64, index=x.index)
        if not self.sequence:
            return self._predict_targets(x, None)
        last = levels(x.index)[0].max()
        hist = dataset.handler.fetch(slice(None, last), col_set="feature",
                                     data_key=DataHandlerLP.DK_I)
        hist.columns = [str(c) for c in hist.columns]
        return self._predict_targets(hist, x.index)

    def predict_frame(self, features: pd.DataFrame) -> pd.Series:
        """One prediction per raw feature row (index (datetime, instrument)). Sequence
        models read each row's window from the earlier rows of its instrument in
        ``features`` (padded where the frame holds too little history)."""
        self._require_fitted()
        if len(features) == 0:
            return pd.Series(dtype=np.float64, index=features.index)
        return self._predict_targets(features, None)

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        """Serving: one prediction per raw ``(n, L, F)`` window (oldest row first, the
        last row the one predicted, NaN where there is no row). A sequence model reads
        its last ``seq_len`` rows (NaN-padded at the front, as training pads); the others
        read the last row."""
        net, device = self.ready_net()
        w = fit_windows(windows, self.seq_len)
        n, length, f = w.shape
        scaled = torch.from_numpy(self._scale(w.reshape(-1, f)).reshape(n, length, f)).to(device)
        if not self.sequence:
            scaled = scaled[:, -1, :]
        bs = max(int(self.params["batch_size"]), 1)
        return self._forward_batches(net, (scaled[s:s + bs] for s in range(0, n, bs)),
                                     n).astype(np.float64)

    def permutation_importance(self, features: pd.DataFrame, label: pd.Series,
                               n_repeats: int = 1, seed: int = 0,
                               history: pd.DataFrame | None = None) -> pd.Series:
        """See :func:`cluster.models.torch_importance.permutation_importance`."""
        from cluster.models.torch_importance import permutation_importance
        return permutation_importance(self, features, label, n_repeats, seed, history)

    # -- storage ------------------------------------------------------------------
    def save_artefacts(self, directory: Path) -> dict:
        from cluster.registry.artefacts import json_safe, save_arrays, save_state_dict
        self._require_fitted()
        save_state_dict(Path(directory) / NET_FILE, self.net.state_dict())
        save_arrays(Path(directory) / SCALER_FILE, **self.scaler.to_arrays())
        return json_safe({"params": self.params, "feature_names": self.feature_names,
                          "n_features": self.n_features, "history": self.history,
                          "best_epoch": self.best_epoch})

    @classmethod
    def load_artefacts(cls, directory: Path, state: dict, **_):
        from cluster.registry.artefacts import load_arrays, load_state_dict
        model = cls(**state["params"])
        model.feature_names = [str(f) for f in state["feature_names"]]
        model.n_features = int(state["n_features"])
        model.history = list(state.get("history", []))
        model.best_epoch = int(state.get("best_epoch") or 0)
        model.scaler = RobustScaler.from_arrays(load_arrays(Path(directory) / SCALER_FILE))
        model._restore_net(load_state_dict(Path(directory) / NET_FILE))
        return model

    def _restore_net(self, net_state: dict) -> None:
        with torch.random.fork_rng(devices=[]):  # building must not move the RNG
            net = self._build_network(self.n_features)
        net.load_state_dict(net_state)
        net.eval()
        self.net = net
        self.fitted = True

    # -- pickling (Ray moves models between processes this way; storage never does) --
    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "net"}
        state["net_state"] = None if self.net is None else {
            k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = dict(state)
        net_state = state.pop("net_state", None)
        self.__dict__.update(state)
        self.net = None
        if net_state is not None:
            fitted = self.fitted
            self._restore_net(net_state)
            self.fitted = fitted
