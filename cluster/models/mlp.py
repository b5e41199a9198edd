"""Multi-layer perceptron on one day's features (Qlib's ``DNNModelPytorch`` net):
``num_layers`` x [Linear -> BatchNorm -> LeakyReLU(0.1) -> Dropout], then Linear -> 1."""
from __future__ import annotations

from torch import nn

from cluster.models.torch_base import TorchModel

DEFAULT_PARAMS = dict(lr=0.001, n_epochs=200, batch_size=2000, early_stop=20, hidden_size=512,
                      num_layers=2, dropout=0.1)


class _MLP(nn.Module):
    def __init__(self, n_features: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        layers, width = [], n_features
        for _ in range(max(int(num_layers), 1)):
            layers += [nn.Linear(width, hidden_size), nn.BatchNorm1d(hidden_size),
                       nn.LeakyReLU(0.1), nn.Dropout(dropout)]
            width = hidden_size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):  # (B, F) -> (B,)
        return self.head(self.body(x)).squeeze(-1)


class MLPModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _MLP(n_features, int(p["hidden_size"]), int(p["num_layers"]), float(p["dropout"]))
