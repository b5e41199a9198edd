"""The PyTorch models of the zoo on a small synthetic Qlib ``DatasetH``.

25 instruments x 150 business days x 12 raw features (one on a large scale, NaN and
+-inf sprinkled in, some instruments listed late or delisted early) and a label
with a planted signal (0.5 f0 - 0.3 f1 + noise). Every model is fitted once at tiny
sizes (module-scoped) and reused by the tests below.
"""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qlib.data.dataset import DatasetH
from qlib.data.dataset.handler import DataHandlerLP
from qlib.data.dataset.loader import StaticDataLoader

from cluster.errors import TrainingStopped
from cluster.models.informer import InformerModel
from cluster.models.lstm import LSTMModel
from cluster.models.mlp import MLPModel
from cluster.models.patchtst import PatchTSTModel
from cluster.models.tabnet import TabNetModel
from cluster.models.timesnet import TimesNetModel
from cluster.models.torch_windows import make_windows, panel_layout, window_indices
from cluster.models.transformer import TransformerModel
from cluster.training.metrics import daily_ic

N_INST, N_DAYS, N_FEAT = 25, 150, 12
DATES = pd.bdate_range("2021-01-04", periods=N_DAYS)
FEATURES = [f"f{i}" for i in range(N_FEAT)]
SEGMENTS = {"train": (DATES[0], DATES[89]), "valid": (DATES[92], DATES[119]),
            "test": (DATES[122], DATES[-1])}

# tiny sizes: 2-3 epochs, small widths, short windows
TINY = {
    "mlp": (MLPModel, dict(n_epochs=3, hidden_size=32, batch_size=512)),
    "lstm": (LSTMModel, dict(n_epochs=3, hidden_size=16, lookback=6, batch_size=512)),
    "transformer": (TransformerModel, dict(n_epochs=2, d_model=16, n_heads=2, num_layers=1,
                                           dim_feedforward=32, seq_len=6, batch_size=512)),
    "informer": (InformerModel, dict(n_epochs=2, d_model=16, n_heads=2, d_ff=32, seq_len=12,
                                     label_len=6, batch_size=512)),
    "timesnet": (TimesNetModel, dict(n_epochs=2, d_model=8, d_ff=8, num_kernels=2,
                                     e_layers=1, top_k=2, seq_len=8, batch_size=512)),
    "patchtst": (PatchTSTModel, dict(n_epochs=2, d_model=16, n_heads=2, e_layers=1, d_ff=32,
                                     seq_len=16, patch_len=8, stride=4, head_dim=2,
                                     batch_size=512)),
    "tabnet": (TabNetModel, dict(n_epochs=3, n_d=8, n_a=8, n_steps=2, batch_size=512,
                                 virtual_batch_size=128)),
}
SEQUENCE = ["lstm", "transformer", "informer", "timesnet", "patchtst"]
REPORT_KEYS = {"epoch", "n_epochs", "train_loss", "valid_loss", "valid_ic", "valid_rank_ic"}


def make_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    insts = [f"SH{600000 + i}" for i in range(N_INST)]
    idx = pd.MultiIndex.from_product([DATES, insts], names=["datetime", "instrument"])
    x = rng.normal(size=(len(idx), N_FEAT))
    y = 0.5 * x[:, 0] - 0.3 * x[:, 1] + rng.normal(size=len(idx))
    x[:, 2] = x[:, 2] * 1000.0 + 50.0  # a raw feature on another scale
    x[rng.random(x.shape) < 0.02] = np.nan
    x[rng.random(x.shape) < 0.003] = np.inf
    x[rng.random(x.shape) < 0.003] = -np.inf
    frame = pd.DataFrame(x.astype(np.float32), index=idx,
                         columns=pd.MultiIndex.from_tuples([("feature", c) for c in FEATURES]))
    frame[("label", "LABEL0")] = y
    frame.loc[rng.random(len(frame)) < 0.01, ("label", "LABEL0")] = np.nan
    # ragged panel: two late listings, one delisting
    inst = frame.index.get_level_values("instrument")
    dt = frame.index.get_level_values("datetime")
    late = inst.isin(insts[:2]) & (dt < DATES[40])
    gone = (inst == insts[2]) & (dt > DATES[100])
    return frame[~(late | gone)]


def make_dataset(frame: pd.DataFrame) -> DatasetH:
    handler = DataHandlerLP(
        data_loader=StaticDataLoader(config=frame),
        learn_processors=[{"class": "DropnaLabel"},
                          {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}],
        infer_processors=[])
    return DatasetH(handler, segments=SEGMENTS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame():
    return make_frame()


@pytest.fixture(scope="module")
def dataset(frame):
    return make_dataset(frame)


@pytest.fixture(scope="module")
def fitted(dataset):
    """name -> (model, reporter rows); fitted lazily, once per module."""
    cache: dict = {}

    def get(name):
        if name not in cache:
            cls, params = TINY[name]
            rows: list[dict] = []
            model = cls(device="cpu", **params)
            model.fit(dataset, reporter=rows.append)
            cache[name] = (model, rows)
        return cache[name]
    return get


def all_features(dataset) -> pd.DataFrame:
    return dataset.handler.fetch(slice(None, None), col_set="feature",
                                 data_key=DataHandlerLP.DK_I)


@pytest.mark.parametrize("name", list(TINY))
def test_fit_predict_store_and_frame(name, dataset, fitted, tmp_path):
    model, rows = fitted(name)
    params = TINY[name][1]
    # reporter: once per epoch, 1-based, with the documented keys
    assert len(rows) == len(model.history) >= 1
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert REPORT_KEYS <= set(row)
        assert row["n_epochs"] == params["n_epochs"]
        assert isinstance(row["epoch"], int) and isinstance(row["valid_ic"], float)
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["valid_loss"])
    assert [{k: r[k] for k in REPORT_KEYS} for r in rows] == \
        [{k: h[k] for k in REPORT_KEYS} for h in model.history]
    assert 1 <= model.best_epoch <= len(model.history) and model.fitted

    # predict: one finite value per test row, Qlib's index
    pred = model.predict(dataset, segment="test")
    expected = dataset.prepare("test", col_set="feature", data_key=DataHandlerLP.DK_I).index
    assert isinstance(pred, pd.Series) and pred.index.equals(expected)
    assert np.isfinite(pred.to_numpy()).all() and pred.std() > 0

    # stored in library formats (state_dict + arrays + JSON) and back: identical
    from cluster.registry.artefacts import load_model, save_model
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == \
        ["manifest.json", "net.pt", "scaler.npz"]
    again = load_model(tmp_path / "m")
    assert all(t.device.type == "cpu" for t in again.net.state_dict().values())
    np.testing.assert_array_equal(again.predict(dataset, segment="test").to_numpy(),
                                  pred.to_numpy())
    # pickling (how Ray moves a model between processes) keeps it too
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(
        dataset, segment="test").to_numpy(), pred.to_numpy())

    # predict_frame on raw rows (plain column names), any row order
    feats = all_features(dataset)
    assert not isinstance(feats.columns, pd.MultiIndex)
    shuffled = feats.sample(frac=1.0, random_state=1)
    by_frame = model.predict_frame(shuffled)
    assert by_frame.index.equals(shuffled.index)
    np.testing.assert_allclose(by_frame.reindex(expected).to_numpy(), pred.to_numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.predict_frame(shuffled).to_numpy(),
                               by_frame.to_numpy(), rtol=1e-5, atol=1e-5)
    # serving's form: raw windows as training builds them (longer ones are cut)
    windows = make_windows(feats.to_numpy(np.float32), feats.index, model.window_length + 3)
    served = pd.Series(model.predict_window(windows), index=feats.index).reindex(expected)
    np.testing.assert_allclose(served.to_numpy(), pred.to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SEQUENCE)
def test_windows_never_read_future_rows(name, frame, dataset, fitted):
    model, _ = fitted(name)
    cutoff = DATES[135]
    poisoned = frame.copy()
    future = poisoned.index.get_level_values("datetime") > cutoff
    rng = np.random.default_rng(7)
    noise = rng.normal(scale=1e4, size=(int(future.sum()), N_FEAT)).astype(np.float32)
    poisoned.loc[future, "feature"] = noise
    clean_pred = model.predict(dataset, segment="test")
    dirty_pred = model.predict(make_dataset(poisoned), segment="test")
    past = clean_pred.index.get_level_values("datetime") <= cutoff
    np.testing.assert_array_equal(dirty_pred[past].to_numpy(), clean_pred[past].to_numpy())
    assert not np.allclose(dirty_pred[~past].to_numpy(), clean_pred[~past].to_numpy())
    # the same through predict_frame on raw rows
    feats = poisoned["feature"]
    frame_pred = model.predict_frame(feats).reindex(clean_pred.index)
    np.testing.assert_allclose(frame_pred[past].to_numpy(), clean_pred[past].to_numpy(),
                               rtol=1e-5, atol=1e-5)


def test_mlp_learns_planted_signal(dataset, frame):
    model = MLPModel(n_epochs=12, hidden_size=32, batch_size=256, lr=0.005, early_stop=5,
                     device="cpu")
    model.fit(dataset)
    best = model.history[model.best_epoch - 1]
    assert best["valid_ic"] > 0.1
    assert best["valid_ic"] == max(h["valid_ic"] for h in model.history)
    # early stopping: either all epochs ran or exactly `early_stop` epochs after the best
    assert len(model.history) in (12, model.best_epoch + 5)
    # the best epoch's weights are the ones kept
    valid_label = dataset.prepare("valid", col_set="label",
                                  data_key=DataHandlerLP.DK_L).iloc[:, 0]
    kept = daily_ic(model.predict(dataset, "valid"), valid_label).mean()
    assert abs(kept - best["valid_ic"]) < 1e-5
    pred = model.predict(dataset, "test")
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_L).iloc[:, 0]
    assert daily_ic(pred, label).mean() > 0.1
    # permutation importance finds the planted features
    valid = dataset.prepare("valid", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
    imp = model.permutation_importance(valid["feature"], valid["label"].iloc[:, 0])
    assert list(imp.index[:2]) == ["f0", "f1"] or set(imp.index[:3]) >= {"f0", "f1"}
    assert imp.is_monotonic_decreasing and set(imp.index) == set(FEATURES)
    # normalisation statistics travel with the model: raw rows in a new process
    served = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(served.predict_frame(valid["feature"]).to_numpy(),
                               model.predict_frame(valid["feature"]).to_numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "informer"])  # informer: random key sampling
def test_deterministic_for_a_seed(name, dataset):
    cls, params = TINY[name]
    preds = []
    for seed in (3, 3, 4):
        model = cls(**dict(params, n_epochs=2, batch_size=256, seed=seed, device="cpu"))
        model.fit(dataset)
        preds.append(model.predict(dataset).to_numpy())
    np.testing.assert_array_equal(preds[0], preds[1])
    assert not np.array_equal(preds[0], preds[2])  # the seed is what fixes them


def test_stop_event_raises_training_stopped(dataset):
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingStopped):
        MLPModel(n_epochs=3, hidden_size=8, device="cpu").fit(dataset, stop_event=stop)

    stop = threading.Event()
    seen = []

    def reporter(row):  # ask to stop during epoch 1's report: epoch 2 must not finish
        seen.append(row["epoch"])
        stop.set()
    with pytest.raises(TrainingStopped):
        LSTMModel(n_epochs=5, hidden_size=8, lookback=4, batch_size=64,
                  device="cpu").fit(dataset, reporter=reporter, stop_event=stop)
    assert seen == [1]


def test_parameters_and_zoo():
    from cluster.models.zoo import create_model, model_config
    with pytest.raises(ValueError):
        MLPModel(hidden_sise=3)
    with pytest.raises(ValueError):
        MLPModel(early_stop_metric="mse")
    model = create_model("patchtst", {"seq_len": 32, "seed": 5})
    assert isinstance(model, PatchTSTModel) and model.params["seq_len"] == 32
    assert model.params["seed"] == 5 and model.seq_len == 32
    assert model_config("tabnet")["kwargs"]["n_steps"] == 3
    assert LSTMModel().params["lookback"] == 20 and MLPModel().params["batch_size"] == 2000
    from qlib.model.base import Model
    for name, (cls, _) in TINY.items():  # every torch type: a Qlib Model from its config
        built = create_model(name, {"seed": 1})
        assert type(built) is cls and isinstance(built, Model) and built.params["seed"] == 1
        assert model_config(name)["kwargs"]["dropout"] == built.params["dropout"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trained_on_gpu_predicts_on_cpu_after_storing(dataset, tmp_path):
    from cluster.registry.artefacts import load_model, save_model
    model = TransformerModel(n_epochs=2, d_model=16, n_heads=2, num_layers=1,
                             dim_feedforward=32, seq_len=6, device="auto")
    model.fit(dataset)
    assert next(model.net.parameters()).device.type == "cuda"
    gpu_pred = model.predict(dataset)
    save_model(model, tmp_path / "m")
    cpu_model = load_model(tmp_path / "m")
    cpu_model.params["device"] = "cpu"
    cpu_pred = cpu_model.predict(dataset)
    np.testing.assert_allclose(cpu_pred.to_numpy(), gpu_pred.to_numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cpu_model)).predict(dataset)
                                  .to_numpy(), cpu_pred.to_numpy())


# --------------------------------------------------------------------------- windows
@st.composite
def panels(draw):
    n_inst = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(1, 25), min_size=n_inst, max_size=n_inst))
    offsets = draw(st.lists(st.integers(0, 10), min_size=n_inst, max_size=n_inst))
    seq_len = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2 ** 16))
    return lengths, offsets, seq_len, seed


@settings(max_examples=150, deadline=None)
@given(panels())
def test_window_builder_property(case):
    lengths, offsets, seq_len, seed = case
    calendar = pd.bdate_range("2020-01-01", periods=40)
    rows = []
    for i, (n, off) in enumerate(zip(lengths, offsets)):
        for t in range(n):
            rows.append((calendar[off + t], f"I{i}", i, t))
    rng = np.random.default_rng(seed)
    rows = [rows[k] for k in rng.permutation(len(rows))]  # any row order
    index = pd.MultiIndex.from_tuples([(d, s) for d, s, _, _ in rows],
                                      names=["datetime", "instrument"])
    values = np.array([[i, t] for _, _, i, t in rows], dtype=np.float64)  # (who, when)
    windows = make_windows(values, index, seq_len)
    assert windows.shape == (len(rows), seq_len, 2)
    for k, (_, _, i, t) in enumerate(rows):
        w = windows[k]
        want = np.arange(t - seq_len + 1, t + 1)
        real = want >= 0
        assert np.isnan(w[~real]).all()  # padding only at the start
        assert (w[real, 0] == i).all()  # never another instrument's row
        np.testing.assert_array_equal(w[real, 1], want[real])  # rows t-seq_len+1 .. t
    # the integer form the models gather with agrees, padding = the extra row
    order, starts = panel_layout(index)
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    idx = window_indices(pos, starts, seq_len, len(order))
    assert idx.max() <= len(order) and (idx[:, -1] == pos).all()
    assert ((idx == len(order)) | (idx <= pos[:, None])).all()


# --------------------------------------------------------------------------- engine
# Every torch type through the one training engine: trained, evaluated, reported
# (per-epoch events, permutation importance) and registered, then loaded back.
ENGINE_FEATURES = [f"f{i}" for i in range(8)]
ENGINE_TINY = {  # feature_frame: 30 instruments x 160 days, signal in f0 and f1
    "mlp": dict(n_epochs=3, hidden_size=32, batch_size=256, lr=0.005),
    "lstm": dict(n_epochs=3, hidden_size=16, lookback=6, batch_size=256, lr=0.005),
    "transformer": dict(n_epochs=3, d_model=16, n_heads=2, num_layers=1, dim_feedforward=32,
                        seq_len=6, batch_size=256, lr=0.002),
    "informer": dict(n_epochs=3, d_model=16, n_heads=2, d_ff=32, seq_len=12, label_len=6,
                     batch_size=256, lr=0.002),
    "timesnet": dict(n_epochs=3, d_model=8, d_ff=8, num_kernels=2, e_layers=1, top_k=2,
                     seq_len=8, batch_size=256, lr=0.002),
    "patchtst": dict(n_epochs=3, d_model=16, n_heads=2, e_layers=1, d_ff=32, seq_len=16,
                     patch_len=8, stride=4, head_dim=2, batch_size=256, lr=0.002),
    "tabnet": dict(n_epochs=4, n_d=8, n_a=8, n_steps=2, batch_size=256, virtual_batch_size=128),
}


@pytest.fixture(scope="module")
def engine_setup(tmp_path_factory):
    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.training.engine import FeatureData
    from tests.strategies import feature_frame
    settings = load_settings(home=tmp_path_factory.mktemp("torch_home"))
    bus = EventBus(None)  # in memory
    events: list = []
    bus.subscribe("*", events.append)
    return settings, bus, events, FeatureData(feature_frame(), data_version=3,
                                              feature_set="fs-test")


@pytest.mark.parametrize("name", list(ENGINE_TINY))
def test_trains_reports_and_registers_through_engine(name, engine_setup):
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import TrainingEngine, TrainRequest
    settings, bus, events, data = engine_setup
    events.clear()
    params = dict(ENGINE_TINY[name], device="cpu")
    result = TrainingEngine(settings, bus).run(
        TrainRequest(name, params=params, feature_columns=ENGINE_FEATURES), data)
    assert result.state == "completed", result.report.get("error")
    rep = result.report
    n = params["n_epochs"]
    assert rep["total_epochs"] == len(rep["history"]) == n  # early_stop 15 > n_epochs
    ics = [h["valid_ic"] for h in rep["history"]]
    assert rep["best_epoch"] == int(np.argmax(ics)) + 1  # IC, not loss, picks the epoch
    epoch_events = [e for e in events if e.type == "training_progress" and e.epoch]
    assert [e.epoch for e in epoch_events] == list(range(1, n + 1))
    assert all(e.valid_ic is not None and e.train_loss is not None for e in epoch_events)
    assert max(ics) > 0.1 and result.metrics["test"]["ic"] > 0.05, "planted signal found"
    imp = rep["feature_importance"]
    assert set(imp) == set(ENGINE_FEATURES) and "f0" in list(imp)[:2]
    # registered; the loaded model predicts exactly what the trained one does
    loaded = ModelRegistry(home=settings.home).load(result.registry_name, result.version,
                                                    expected_feature_set="fs-test")
    rows = data.frame.rename(columns={"date": "datetime"}).set_index(
        ["datetime", "instrument"])[ENGINE_FEATURES]
    np.testing.assert_array_equal(loaded.predict_frame(rows).to_numpy(),
                                  result.model.predict_frame(rows).to_numpy())


# --------------------------------------------------------------------------- architectures
def test_probsparse_attention_is_sparse_and_exact_when_all_queries_are_active():
    from cluster.models.informer import ProbAttention
    torch.manual_seed(0)
    b, length, h, d = 2, 20, 2, 4
    q, k, v = (torch.randn(b, length, h, d) for _ in range(3))
    scores = torch.einsum("blhe,bshe->bhls", q, k) / d ** 0.5
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    full = torch.einsum("bhls,bshd->blhd", torch.softmax(scores, -1), v)
    masked = torch.einsum("bhls,bshd->blhd",
                          torch.softmax(scores.masked_fill(causal, float("-inf")), -1), v)
    # u = factor * ceil(ln L) >= L: every query is active -> full (causal) attention
    np.testing.assert_allclose(ProbAttention(False, 10).eval()(q, k, v), full, atol=1e-5)
    np.testing.assert_allclose(ProbAttention(True, 10).eval()(q, k, v), masked, atol=1e-5)
    # factor 1: only ceil(ln 20) = 3 queries per head attend; the lazy ones get mean(V)
    out = ProbAttention(False, 1).eval()(q, k, v)
    lazy = torch.isclose(out, v.mean(1, keepdim=True), atol=1e-6).all(-1)  # (B, L, H)
    active = torch.isclose(out, full, atol=1e-5).all(-1)
    assert (lazy.sum(1) == length - 3).all() and (active | lazy).all()


def test_informer_distilling_halves_the_encoder_length():
    from cluster.models.informer import ConvLayer, _Informer
    assert ConvLayer(8)(torch.randn(2, 12, 8)).shape == (2, 6, 8)
    net = _Informer(5, 16, 2, 3, 1, 32, 0.0, 24, 12, 3, True)
    assert len(net.conv_layers) == 2
    lengths = []
    for conv in net.conv_layers:
        conv.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    assert net.eval()(torch.randn(4, 24, 5)).shape == (4,)
    assert lengths == [12, 6]


def test_timesnet_finds_the_periods_by_fft():
    from cluster.models.timesnet import TimesBlock
    t = torch.arange(32, dtype=torch.float32)
    wave = torch.sin(2 * torch.pi * t / 4) + 0.5 * torch.sin(2 * torch.pi * t / 8)
    x = wave[None, :, None].repeat(3, 1, 4) + 0.01 * torch.randn(3, 32, 4)
    block = TimesBlock(32, 4, 4, top_k=2, num_kernels=2)
    periods, weights = block.train()._periods(x)
    assert periods == [4, 8] and weights.shape == (3, 2)
    assert block.eval()._periods(x)[0] == [4, 8]  # eval: the running spectrum
    assert block(x).shape == x.shape


def test_patchtst_channels_are_independent_until_the_head():
    from cluster.models.patchtst import DEFAULT_PARAMS, _PatchTST
    assert _PatchTST(3, DEFAULT_PARAMS["seq_len"], 16, 8, 8, 2, 1, 8, 0.0, 2, False, 0) \
        .patch_num == 12  # 96 / 16 / 8 with end padding, as in the paper
    torch.manual_seed(0)
    net = _PatchTST(5, 16, 8, 4, 8, 2, 2, 16, 0.1, 2, False, 0).eval()
    z = torch.randn(3, 5, 16)
    z2 = z.clone()
    z2[:, 2] += torch.randn(3, 16)
    with torch.no_grad():
        h, h2 = net._encode(z), net._encode(z2)
        others = [0, 1, 3, 4]
        np.testing.assert_allclose(h2[:, others], h[:, others], atol=1e-6)
        assert not torch.allclose(h2[:, 2], h[:, 2])
        x = torch.randn(3, 16, 5)
        chunked = _PatchTST(5, 16, 8, 4, 8, 2, 2, 16, 0.1, 2, False, 2)
        chunked.load_state_dict(net.state_dict())
        np.testing.assert_allclose(chunked.eval()(x), net(x), atol=1e-5)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=12), st.floats(0.1, 20))
def test_sparsemax_is_the_projection_onto_the_simplex(values, scale):
    from cluster.models.tabnet import sparsemax
    z = torch.tensor(values, dtype=torch.float64) * scale
    p = sparsemax(z[None, :])[0]
    assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-9
    # KKT: p = max(z - tau, 0) for one threshold tau
    support = p > 0
    tau = z[support] - p[support]
    assert float(tau.max() - tau.min()) < 1e-9
    assert (z[~support] <= tau[0] + 1e-9).all()


def test_tabnet_masks_are_sparse_distributions():
    from cluster.models.tabnet import _TabNet
    torch.manual_seed(0)
    net = _TabNet(12, 8, 8, 3, 1.3, 2, 2, 1e-3, 64, 0.02, 0.0)
    masks = []
    for att in net.attentions:
        att.register_forward_hook(lambda m, i, o: masks.append(o))
    pred, sparsity = net.train()(torch.randn(128, 12) * 3)
    assert pred.shape == (128,) and sparsity.item() > 0
    assert len(masks) == 3
    for m in masks:
        assert (m >= 0).all() and torch.allclose(m.sum(1), torch.ones(128))
    assert float((torch.stack(masks) == 0).float().mean()) > 0.1  # sparse, not softmax
