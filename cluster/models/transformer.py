"""Transformer encoder over each instrument's last ``seq_len`` feature rows (Qlib's
``TransformerModel``, Vaswani et al. 2017): a linear feature embedding, sinusoidal
positions, ``num_layers`` post-norm encoder layers (``n_heads`` heads, feed-forward
``dim_feedforward``) and a linear head on the last step's output."""
from __future__ import annotations

import math

import torch
from torch import nn

from cluster.models.torch_base import TorchModel

DEFAULT_PARAMS = dict(lr=1e-4, n_epochs=100, batch_size=512, early_stop=15, d_model=64,
                      n_heads=8, num_layers=3, dim_feedforward=256, dropout=0.1, seq_len=20)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) sine/cosine position codes of "Attention is all you need"."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                    * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class _Transformer(nn.Module):
    def __init__(self, n_features, d_model, n_heads, num_layers, dim_feedforward, dropout,
                 seq_len):
        super().__init__()
        self.feature_layer = nn.Linear(n_features, d_model)
        self.register_buffer("pe", sinusoidal_positions(seq_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward, dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.decoder_layer = nn.Linear(d_model, 1)

    def forward(self, x):  # (B, T, F) -> (B,)
        h = self.dropout(self.feature_layer(x) + self.pe[: x.shape[1]])
        h = self.encoder(h)
        return self.decoder_layer(h[:, -1, :]).squeeze(-1)


class TransformerModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS
    SEQ_PARAM = "seq_len"

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _Transformer(n_features, int(p["d_model"]), int(p["n_heads"]),
                            int(p["num_layers"]), int(p["dim_feedforward"]),
                            float(p["dropout"]), int(p["seq_len"]))
