"""The shared PyTorch training loop of the model zoo's neural models.

``TorchModel`` is a Qlib ``Model``: ``fit(dataset)`` trains on the ``train``
segment of a ``DatasetH`` and validates on ``valid`` every epoch, ``predict``
returns a ``pd.Series`` indexed (datetime, instrument) like Qlib's models. A
subclass only builds its network (``_build_network``) and says whether it reads
sequences (``SEQ_PARAM``, the name of its window-length parameter).

Normalisation (kept inside the model, so ``predict`` on raw Alpha158 rows gives
the same answers in any process): a :class:`~cluster.models.normalize.RobustScaler`
fitted on the train segment's feature rows -- ``(x - median) / (1.4826 * MAD)``
(std where the MAD is 0), clipped to +-3, NaN and +-inf -> 0.

Sequence windows follow Qlib's ``TSDatasetH``: the sample of row (t, i) is the
last ``seq_len`` rows of instrument i up to and including t (never a later row),
in date order; rows before the instrument's first row are padding. Qlib pads
with NaN; here the padding row is the scaled value of NaN, i.e. 0 (the training
median). Windows count the instrument's own rows (a day on which the instrument
has no row is skipped rather than padded). Windows of the valid/test segments
reach back into earlier segments: they are built from the handler's infer data
(``DK_I``) of every date up to the segment's last date. They are gathered per
batch by integer indexing into one scaled, instrument-grouped array with a zero
row at its end (:func:`panel_layout`, :func:`window_indices`); no Python loop
runs per sample.

Early stopping watches the valid IC (mean over dates of the daily cross-sectional
Pearson correlation), RankIC (Spearman) or MSE (``early_stop_metric``), and the
best epoch's weights are restored. ``reporter`` gets one dict per epoch;
``stop_event.is_set()`` is checked between batches and ends the run with
``TrainingStopped``. Pickles hold CPU tensors only.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from qlib.data.dataset.handler import DataHandlerLP
from qlib.model.base import Model
from torch import nn

from cluster.errors import TrainingStopped
from cluster.models.normalize import RobustScaler
from cluster.training.metrics import DailyIC

# Parameters every torch model accepts; a model's DEFAULT_PARAMS override them.
BASE_PARAMS = dict(lr=0.001, n_epochs=100, batch_size=256, early_stop=15, dropout=0.1, seed=0,
                   device="auto", early_stop_metric="ic", weight_decay=0.0)
EARLY_STOP_METRICS = ("ic", "rank_ic", "loss")
FEATURE_CLIP = 3.0       # scaled features are clipped to +-3
GRAD_CLIP_VALUE = 3.0    # as Qlib's pytorch models: clip_grad_value_(params, 3.0)
_SCALE_CHUNK = 65536     # rows scaled at a time (bounds the float64 temporaries)


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` -> the GPU when one is present, else the CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------- windows
def _levels(index: pd.MultiIndex) -> tuple[pd.Index, pd.Index]:
    names = list(index.names)
    d = names.index("datetime") if "datetime" in names else 0
    i = names.index("instrument") if "instrument" in names else 1
    return index.get_level_values(d), index.get_level_values(i)


def panel_layout(index: pd.MultiIndex) -> tuple[np.ndarray, np.ndarray]:
    """Rows indexed (datetime, instrument) -> ``(order, starts)``.

    ``order`` puts the rows grouped by instrument, each group in date order;
    ``starts[k]`` is the position (in that order) of the first row of the group
    that ordered row ``k`` belongs to.
    """
    if index.has_duplicates:
        raise ValueError("feature rows must be unique per (datetime, instrument)")
    dates, insts = _levels(index)
    codes, _ = pd.factorize(insts)
    order = np.lexsort((np.asarray(dates.values), codes))
    c = codes[order]
    n = len(c)
    first = np.ones(n, dtype=bool)
    first[1:] = c[1:] != c[:-1]
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else \
        np.zeros(0, dtype=np.int64)
    return order.astype(np.int64), starts.astype(np.int64)


def window_indices(pos: np.ndarray, starts: np.ndarray, seq_len: int, pad: int) -> np.ndarray:
    """Row numbers of the windows ending at ordered rows ``pos``: shape
    ``(len(pos), seq_len)``, oldest first; ``pad`` where the instrument has no
    earlier row (windows never cross into another instrument's rows)."""
    pos = np.asarray(pos, dtype=np.int64)
    idx = pos[:, None] - np.arange(seq_len - 1, -1, -1, dtype=np.int64)[None, :]
    return np.where(idx >= starts[pos][:, None], idx, pad)


def make_windows(values: np.ndarray, index: pd.MultiIndex, seq_len: int,
                 fill: float = np.nan) -> np.ndarray:
    """NumPy reference of the window building: ``(n_rows, seq_len, n_cols)`` windows
    of every row of ``values`` (in the order of ``index``), padded with ``fill``."""
    order, starts = panel_layout(index)
    values = np.asarray(values)
    data = np.concatenate([values[order], np.full((1,) + values.shape[1:], fill,
                                                  dtype=np.result_type(values, type(fill)))])
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    return data[window_indices(pos, starts, seq_len, len(order))]


class _Panel:
    """Scaled feature rows grouped by instrument (date order) plus a zero pad row."""

    def __init__(self, data: torch.Tensor, starts: np.ndarray, index: pd.MultiIndex):
        self.data = data
        self.starts = starts
        self.index = index
        self.pad = len(starts)

    def locate(self, target: pd.Index) -> np.ndarray:
        pos = self.index.get_indexer(target)
        if (pos < 0).any():
            missing = target[pos < 0][:3].tolist()
            raise KeyError(f"rows {missing} are not in the feature history")
        return pos.astype(np.int64)


class _Scorer:
    """Daily IC and RankIC of predictions against a fixed label."""

    def __init__(self, index: pd.MultiIndex, y: np.ndarray):
        dates, _ = _levels(index)
        self.codes = pd.factorize(dates)[0]
        self.y = np.asarray(y, dtype=np.float64)
        self.ic = DailyIC(dates, self.y)
        self.ric = DailyIC(dates, self._rank(self.y))

    def _rank(self, v) -> np.ndarray:
        return pd.Series(np.asarray(v, dtype=np.float64)).groupby(self.codes).rank().to_numpy()

    def __call__(self, pred: np.ndarray) -> tuple[float, float, float]:
        pred = np.asarray(pred, dtype=np.float64)
        with np.errstate(all="ignore"):
            loss = float(np.mean((pred - self.y) ** 2))
        return loss, self.ic(pred), self.ric(self._rank(pred))


# --------------------------------------------------------------------------- model
class TorchModel(Model):
    """Base of the zoo's PyTorch models (see the module docstring)."""

    DEFAULT_PARAMS: dict = {}
    SEQ_PARAM: str | None = None  # e.g. "lookback" / "seq_len" for sequence models

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

    def __getattr__(self, name):
        # parameters read as attributes (model.lr, model.hidden_size, ...)
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- data -------------------------------------------------------------------
    def _feature_frame(self, features: pd.DataFrame) -> pd.DataFrame:
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

    def _build_panel(self, features: pd.DataFrame, device) -> tuple[_Panel, np.ndarray]:
        """Scaled panel of ``features`` (already restricted to ``feature_names``) and
        each input row's position in it."""
        order, starts = panel_layout(features.index)
        values = features.to_numpy(dtype=np.float32)[order]
        data = np.zeros((len(order) + 1, values.shape[1]), dtype=np.float32)
        data[:-1] = self._scale(values)
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        panel = _Panel(torch.from_numpy(data).to(device), starts, features.index[order])
        return panel, pos

    def _gather(self, panel: _Panel, pos: np.ndarray) -> torch.Tensor:
        if not self.sequence:
            return panel.data[torch.from_numpy(pos).to(panel.data.device)]
        idx = window_indices(pos, panel.starts, self.seq_len, panel.pad)
        return panel.data[torch.from_numpy(idx).to(panel.data.device)]

    @staticmethod
    def _split(out):
        if isinstance(out, (tuple, list)):
            return out[0].reshape(-1), out[1]
        return out.reshape(-1), None

    @staticmethod
    def _check_stop(stop_event, where: str) -> None:
        if stop_event is not None and stop_event.is_set():
            raise TrainingStopped(f"training stopped ({where})")

    def _run(self, net: nn.Module, panel: _Panel, pos: np.ndarray, stop_event=None,
             where: str = "predicting") -> np.ndarray:
        net.eval()
        out = np.empty(len(pos), dtype=np.float32)
        bs = max(int(self.params["batch_size"]), 1)
        with torch.no_grad():
            for s in range(0, len(pos), bs):
                self._check_stop(stop_event, where)
                pred, _ = self._split(net(self._gather(panel, pos[s:s + bs])))
                out[s:s + bs] = pred.float().cpu().numpy()
        return out

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
            last = max(_levels(train.index)[0].max(), _levels(valid.index)[0].max())
            hist = dataset.handler.fetch(slice(None, last), col_set="feature",
                                         data_key=DataHandlerLP.DK_I)
            hist.columns = [str(c) for c in hist.columns]
            panel_tr, _ = self._build_panel(self._feature_frame(hist), device)
            panel_va = panel_tr
            pos_tr, pos_va = panel_tr.locate(train.index), panel_tr.locate(valid.index)
            del hist
        else:
            panel_tr, pos_tr = self._build_panel(train["feature"][self.feature_names], device)
            panel_va, pos_va = self._build_panel(valid["feature"][self.feature_names], device)
        del train["feature"], valid["feature"]

        scorer = _Scorer(valid.index, y_va)
        y_tr_t = torch.from_numpy(y_tr).to(device)
        net = self._build_network(self.n_features).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        rng = np.random.RandomState(int(p["seed"]))
        n_epochs, bs, patience = int(p["n_epochs"]), max(int(p["batch_size"]), 1), \
            int(p["early_stop"])
        metric = p["early_stop_metric"]
        best_score, best_state = -math.inf, None
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

            pred_va = self._run(net, panel_va, pos_va, stop_event, f"validating epoch {epoch}")
            valid_loss, valid_ic, valid_ric = scorer(pred_va)
            score = {"ic": valid_ic, "rank_ic": valid_ric, "loss": -valid_loss}[metric]
            score = score if np.isfinite(score) else -math.inf
            if best_state is None or score > best_score:
                best_score, self.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            row = dict(epoch=epoch, n_epochs=n_epochs, train_loss=train_loss,
                       valid_loss=valid_loss, valid_ic=valid_ic, valid_rank_ic=valid_ric)
            self.history.append(row)
            if reporter is not None:
                reporter(dict(row, best_epoch=self.best_epoch))
            if epoch - self.best_epoch >= patience:
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

    def _ready_net(self) -> tuple[nn.Module, torch.device]:
        self._require_fitted()
        device = resolve_device(self.params["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")  # trained on a GPU, loaded by a CPU-only replica
        self.net.to(device)
        self.net.eval()
        return self.net, device

    def _predict_targets(self, features: pd.DataFrame, target: pd.Index) -> pd.Series:
        net, device = self._ready_net()
        panel, pos = self._build_panel(self._feature_frame(features), device)
        if target is not None:
            pos = panel.locate(target)
        else:
            target = features.index
        return pd.Series(self._run(net, panel, pos).astype(np.float64), index=target)

    def predict(self, dataset, segment="test", **_) -> pd.Series:
        self._require_fitted()
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        x.columns = [str(c) for c in x.columns]
        if x.empty:
            return pd.Series(dtype=np.float64, index=x.index)
        if not self.sequence:
            return self._predict_targets(x, None)
        last = _levels(x.index)[0].max()
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

    def permutation_importance(self, features: pd.DataFrame, label: pd.Series,
                               n_repeats: int = 1, seed: int = 0,
                               history: pd.DataFrame | None = None) -> pd.Series:
        """Drop in the mean daily IC on the rows of ``features`` when one feature column
        is shuffled, averaged over ``n_repeats`` shuffles; sorted descending.

        Sequence models read each row's window from ``history`` when given (raw feature
        rows up to the last date of ``features``, e.g. the handler's infer data), else
        from ``features`` alone (windows padded at its start). The column is shuffled
        across every row any window reads, so inside the windows too."""
        net, device = self._ready_net()
        features = self._feature_frame(features)
        if self.sequence and history is not None:
            panel, _ = self._build_panel(self._feature_frame(history), device)
            pos = panel.locate(features.index)
            used = np.unique(window_indices(pos, panel.starts, self.seq_len, panel.pad))
            used = used[used != panel.pad]
        else:
            panel, pos = self._build_panel(features, device)
            used = np.arange(panel.pad)
        y = pd.Series(label).reindex(features.index).to_numpy(dtype=np.float64)
        dates, _ = _levels(features.index)
        ic = DailyIC(dates, y)
        base = ic(self._run(net, panel, pos))
        rng = np.random.RandomState(seed)
        rows = torch.from_numpy(used).to(panel.data.device)
        out = {}
        for j, name in enumerate(self.feature_names):
            column = panel.data[rows, j].clone()
            drops = []
            for _ in range(max(int(n_repeats), 1)):
                perm = torch.from_numpy(rng.permutation(len(used))).to(panel.data.device)
                panel.data[rows, j] = column[perm]  # scaling is per column: shuffle scaled
                drops.append(base - ic(self._run(net, panel, pos)))
            panel.data[rows, j] = column
            out[name] = float(np.mean(drops))
        return pd.Series(out, dtype=np.float64).sort_values(ascending=False)

    # -- pickling -------------------------------------------------------------------
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
            with torch.random.fork_rng(devices=[]):  # building must not move the RNG
                net = self._build_network(self.n_features)
            net.load_state_dict(net_state)
            net.eval()
            self.net = net
