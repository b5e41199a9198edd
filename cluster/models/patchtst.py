"""PatchTST (Nie et al., ICLR 2023) at small scale, after the authors' supervised
PatchTST backbone, reading each instrument's last ``seq_len`` feature rows.

Channel independence: each of the F feature columns is its own univariate series
of length ``seq_len``. Each series is padded at the end by replicating its last
value ``stride`` times (the paper's ``padding_patch="end"``), cut into patches of
``patch_len`` every ``stride`` steps (96/16/8 -> 12 patches), each patch linearly
embedded to ``d_model`` plus a learned positional embedding, and all B x F series go
through ONE shared Transformer encoder (``e_layers`` post-norm layers, ``n_heads``
heads, BatchNorm as the paper's default norm, GELU feed-forward ``d_ff``, residual
attention scores carried from layer to layer as in the authors' code).
Optional RevIN (``revin``) normalises each series by its own mean/std first.

Head: the paper's flatten head maps each channel's (patch_num x d_model) output to
the forecast horizon on that channel; a stock score needs one number from all
channels, so here a shared flatten-linear maps each channel to ``head_dim`` values
and a linear channel-mixing layer (dropout first) maps the F x head_dim values to
the prediction.

CPU compromises (documented choices; the paper uses 3 layers, 16 heads, d_ff 256):
``n_heads`` 4, ``e_layers`` 2, ``d_ff`` 128, ``head_dim`` 8, ``revin`` off (the
features are already robustly scaled, and their level is informative for a
cross-sectional score), and ``channel_chunk``: when > 0 the encoder runs on at
most that many channels of each sample at a time, with activation checkpointing
while training -- memory of a batch then scales with ``channel_chunk`` instead of
F (one extra forward per chunk). At 158 channels x 96 steps a sample is 1,896
encoder tokens; one epoch is dominated by the encoder and is GPU work (device
"auto" picks the GPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cluster.models.torch_base import TorchModel

DEFAULT_PARAMS = dict(lr=0.001, n_epochs=100, batch_size=256, early_stop=15, d_model=64,
                      n_heads=4, e_layers=2, d_ff=128, patch_len=16, stride=8, dropout=0.1,
                      seq_len=96, head_dim=8, revin=False, channel_chunk=0)


class _BatchNormTokens(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(d_model)

    def forward(self, x):  # (N, P, D)
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class _EncoderLayer(nn.Module):
    """Post-norm encoder layer with residual attention (scores of the previous
    layer are added to this layer's before the softmax)."""

    def __init__(self, d_model, n_heads, d_ff, dropout):
        super().__init__()
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.w_q = nn.Linear(d_model, self.d_k * n_heads)
        self.w_k = nn.Linear(d_model, self.d_k * n_heads)
        self.w_v = nn.Linear(d_model, self.d_k * n_heads)
        self.to_out = nn.Sequential(nn.Linear(self.d_k * n_heads, d_model), nn.Dropout(dropout))
        self.dropout_attn = nn.Dropout(dropout)
        self.norm_attn = _BatchNormTokens(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(d_ff, d_model))
        self.dropout_ffn = nn.Dropout(dropout)
        self.norm_ffn = _BatchNormTokens(d_model)

    def forward(self, x, prev):
        n, p, _ = x.shape
        q = self.w_q(x).view(n, p, self.n_heads, self.d_k).transpose(1, 2)
        k = self.w_k(x).view(n, p, self.n_heads, self.d_k).permute(0, 2, 3, 1)
        v = self.w_v(x).view(n, p, self.n_heads, self.d_k).transpose(1, 2)
        scores = torch.matmul(q, k) / math.sqrt(self.d_k)
        if prev is not None:
            scores = scores + prev
        attn = F.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(n, p, -1)
        x = self.norm_attn(x + self.dropout_attn(self.to_out(out)))
        x = self.norm_ffn(x + self.dropout_ffn(self.ff(x)))
        return x, scores


class _PatchTST(nn.Module):
    def __init__(self, n_features, seq_len, patch_len, stride, d_model, n_heads, e_layers,
                 d_ff, dropout, head_dim, revin, channel_chunk):
        super().__init__()
        self.n_features = n_features
        self.patch_len = min(int(patch_len), int(seq_len))
        self.stride = max(int(stride), 1)
        self.patch_num = (seq_len - self.patch_len) // self.stride + 1 + 1  # + end padding
        self.revin = bool(revin)
        self.channel_chunk = int(channel_chunk)
        if self.revin:
            self.revin_weight = nn.Parameter(torch.ones(n_features))
            self.revin_bias = nn.Parameter(torch.zeros(n_features))
        self.w_p = nn.Linear(self.patch_len, d_model)
        self.w_pos = nn.Parameter(torch.empty(self.patch_num, d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([_EncoderLayer(d_model, n_heads, d_ff, dropout)
                                     for _ in range(e_layers)])
        self.channel_head = nn.Linear(self.patch_num * d_model, head_dim)
        self.head_dropout = nn.Dropout(dropout)
        self.mix = nn.Linear(n_features * head_dim, 1)

    def _encode(self, z):
        """(B, C, seq_len) series -> (B, C, head_dim) per-channel summaries."""
        b, c, _ = z.shape
        z = F.pad(z, (0, self.stride), mode="replicate")
        z = z.unfold(-1, self.patch_len, self.stride)  # (B, C, P, patch_len)
        u = self.dropout(self.w_p(z).reshape(b * c, self.patch_num, -1) + self.w_pos)
        prev = None
        for layer in self.layers:
            u, prev = layer(u, prev)
        return self.channel_head(u.reshape(b, c, -1))

    def forward(self, x):  # (B, T, F) -> (B,)
        if self.revin:
            mean = x.mean(1, keepdim=True)
            std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
            x = (x - mean) / std * self.revin_weight + self.revin_bias
        z = x.transpose(1, 2).contiguous()  # (B, C, T): one univariate series per channel
        chunk = self.channel_chunk
        if chunk <= 0 or chunk >= z.shape[1]:
            h = self._encode(z)
        else:
            parts = []
            for s in range(0, z.shape[1], chunk):
                part = z[:, s:s + chunk]
                if self.training and torch.is_grad_enabled():
                    parts.append(checkpoint(self._encode, part, use_reentrant=False))
                else:
                    parts.append(self._encode(part))
            h = torch.cat(parts, dim=1)
        return self.mix(self.head_dropout(h.reshape(h.shape[0], -1))).squeeze(-1)


class PatchTSTModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS
    SEQ_PARAM = "seq_len"

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _PatchTST(n_features, int(p["seq_len"]), int(p["patch_len"]), int(p["stride"]),
                         int(p["d_model"]), int(p["n_heads"]), int(p["e_layers"]),
                         int(p["d_ff"]), float(p["dropout"]), int(p["head_dim"]),
                         bool(p["revin"]), int(p["channel_chunk"]))
