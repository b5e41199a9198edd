"""LSTM over each instrument's last ``lookback`` feature rows (Qlib's ``LSTMModel``
on ``TSDatasetH``): a stacked ``nn.LSTM`` and a linear head on the last step."""
from __future__ import annotations

from torch import nn

from cluster.models.torch_base import TorchModel

DEFAULT_PARAMS = dict(lr=0.001, n_epochs=200, batch_size=800, early_stop=20, hidden_size=64,
                      num_layers=2, dropout=0.1, lookback=20)


class _LSTM(nn.Module):
    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.LSTM(n_features, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.fc_out = nn.Linear(hidden_size, 1)

    def forward(self, x):  # (B, T, F) -> (B,)
        out, _ = self.rnn(x)
        return self.fc_out(out[:, -1, :]).squeeze(-1)


class LSTMModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS
    SEQ_PARAM = "lookback"

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _LSTM(n_features, int(p["hidden_size"]), int(p["num_layers"]), float(p["dropout"]))
