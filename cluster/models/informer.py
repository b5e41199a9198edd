"""Informer (Zhou et al., AAAI 2021) at small scale, after the authors' code
(zhouhaoyi/Informer2020), reading each instrument's last ``seq_len`` feature rows.

- Embedding: a circular ``Conv1d`` token embedding (kernel 3) plus sinusoidal
  positions (there are no calendar marks here, so no temporal embedding).
- Encoder: ``e_layers`` layers of ProbSparse self-attention (the ``u = factor * ln L``
  most "active" queries, scored on ``factor * ln L`` sampled keys, attend; the
  others take the mean of the values) + a kernel-1 conv feed-forward, with a
  distilling layer (circular Conv1d -> BatchNorm -> ELU -> MaxPool stride 2, halving
  the length) between attention layers, and a final LayerNorm.
- Decoder: ``d_layers`` layers of masked ProbSparse self-attention (``mix``) and full
  cross-attention to the encoder output. Its input is the generative-style start
  token -- the last ``label_len`` encoder rows -- followed by one zero placeholder
  (the prediction slot, ``pred_len = 1``); the projection of that slot's output is
  the prediction.

Deviation for reproducible predictions: the keys ProbSparse samples are drawn from
the seeded global RNG while training, but from a fixed generator (seed 0) in eval
mode, so a row's prediction depends neither on the batch it is in nor on earlier
calls (pickle round trips, ``predict`` vs ``predict_frame``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cluster.models.torch_base import TorchModel
from cluster.models.transformer import sinusoidal_positions

DEFAULT_PARAMS = dict(lr=1e-4, n_epochs=100, batch_size=256, early_stop=15, d_model=64,
                      n_heads=8, e_layers=2, d_layers=1, d_ff=256, dropout=0.1, seq_len=60,
                      label_len=30, factor=3, distil=True)
_EVAL_SAMPLE_SEED = 0


class ProbAttention(nn.Module):
    """ProbSparse self-attention; inputs/outputs (B, L, H, D)."""

    def __init__(self, mask_flag: bool, factor: int):
        super().__init__()
        self.mask_flag = mask_flag
        self.factor = factor

    def _sample(self, l_k: int, l_q: int, sample_k: int, device) -> torch.Tensor:
        if self.training:
            idx = torch.randint(l_k, (l_q, sample_k))
        else:
            gen = torch.Generator().manual_seed(_EVAL_SAMPLE_SEED)
            idx = torch.randint(l_k, (l_q, sample_k), generator=gen)
        return idx.to(device)

    def _prob_qk(self, q, k, sample_k: int, n_top: int):
        b, h, l_k, e = k.shape
        l_q = q.shape[2]
        index_sample = self._sample(l_k, l_q, sample_k, q.device)
        k_sample = k[:, :, index_sample, :]  # (B, H, L_Q, sample_k, E)
        qk_sample = torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)
        # query sparsity measurement: max - mean over the sampled keys
        m = qk_sample.max(-1)[0] - qk_sample.sum(-1) / l_k
        m_top = m.topk(n_top, sorted=False)[1]  # (B, H, n_top)
        q_reduce = torch.gather(q, 2, m_top.unsqueeze(-1).expand(-1, -1, -1, e))
        return torch.matmul(q_reduce, k.transpose(-2, -1)), m_top

    def forward(self, queries, keys, values):
        b, l_q, h, d = queries.shape
        l_k = keys.shape[1]
        q, k, v = queries.transpose(2, 1), keys.transpose(2, 1), values.transpose(2, 1)
        u_part = min(self.factor * int(np.ceil(np.log(l_k))), l_k)
        u = min(self.factor * int(np.ceil(np.log(l_q))), l_q)
        scores_top, index = self._prob_qk(q, k, u_part, u)
        scores_top = scores_top / math.sqrt(d)
        # initial context: lazy queries get mean(V) (or cumsum(V) when masked)
        if self.mask_flag:
            context = v.cumsum(dim=-2)
            causal = torch.ones(l_q, l_k, dtype=torch.bool, device=v.device).triu(1)
            mask = causal[index]  # (B, H, u, L_K)
            scores_top = scores_top.masked_fill(mask, float("-inf"))
        else:
            context = v.mean(dim=-2, keepdim=True).expand(b, h, l_q, d).clone()
        attn = torch.softmax(scores_top, dim=-1)  # no dropout here, as the authors' code
        update = torch.matmul(attn, v).type_as(context)
        context = context.scatter(2, index.unsqueeze(-1).expand(-1, -1, -1, d), update)
        return context.transpose(2, 1).contiguous()  # (B, L, H, D)


class FullAttention(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, values):
        d = queries.shape[-1]
        scores = torch.einsum("blhe,bshe->bhls", queries, keys) / math.sqrt(d)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        return torch.einsum("bhls,bshd->blhd", attn, values).contiguous()


class AttentionLayer(nn.Module):
    def __init__(self, attention: nn.Module, d_model: int, n_heads: int, mix: bool = False):
        super().__init__()
        d_keys = d_model // n_heads
        self.inner = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_keys * n_heads)
        self.out_projection = nn.Linear(d_keys * n_heads, d_model)
        self.n_heads = n_heads
        self.mix = mix

    def forward(self, queries, keys, values):
        b, l, _ = queries.shape
        s, h = keys.shape[1], self.n_heads
        out = self.inner(self.query_projection(queries).view(b, l, h, -1),
                         self.key_projection(keys).view(b, s, h, -1),
                         self.value_projection(values).view(b, s, h, -1))
        if self.mix:
            out = out.transpose(2, 1).contiguous()
        return self.out_projection(out.view(b, l, -1))


class ConvLayer(nn.Module):
    """Self-attention distilling: halves the sequence length."""

    def __init__(self, c_in: int):
        super().__init__()
        self.down_conv = nn.Conv1d(c_in, c_in, kernel_size=3, padding=1,
                                   padding_mode="circular")
        self.norm = nn.BatchNorm1d(c_in)
        self.activation = nn.ELU()
        self.max_pool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        x = self.down_conv(x.permute(0, 2, 1))
        return self.max_pool(self.activation(self.norm(x))).transpose(1, 2)


class EncoderLayer(nn.Module):
    def __init__(self, attention, d_model, d_ff, dropout):
        super().__init__()
        self.attention = attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.GELU()

    def forward(self, x):
        x = self.norm1(x + self.dropout(self.attention(x, x, x)))
        y = self.dropout(self.activation(self.conv1(x.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm2(x + y)


class DecoderLayer(nn.Module):
    def __init__(self, self_attention, cross_attention, d_model, d_ff, dropout):
        super().__init__()
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.GELU()

    def forward(self, x, cross):
        x = self.norm1(x + self.dropout(self.self_attention(x, x, x)))
        x = self.norm2(x + self.dropout(self.cross_attention(x, cross, cross)))
        y = self.dropout(self.activation(self.conv1(x.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm3(x + y)


class DataEmbedding(nn.Module):
    def __init__(self, c_in: int, d_model: int, max_len: int, dropout: float):
        super().__init__()
        self.token = nn.Conv1d(c_in, d_model, kernel_size=3, padding=1, padding_mode="circular",
                               bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # (B, L, C) -> (B, L, d_model)
        return self.dropout(self.token(x.permute(0, 2, 1)).transpose(1, 2) + self.pe[: x.shape[1]])


class _Informer(nn.Module):
    def __init__(self, n_features, d_model, n_heads, e_layers, d_layers, d_ff, dropout,
                 seq_len, label_len, factor, distil):
        super().__init__()
        self.label_len = min(int(label_len), int(seq_len))
        self.enc_embedding = DataEmbedding(n_features, d_model, seq_len, dropout)
        self.dec_embedding = DataEmbedding(n_features, d_model, self.label_len + 1, dropout)
        self.encoder_layers = nn.ModuleList([
            EncoderLayer(AttentionLayer(ProbAttention(False, factor), d_model, n_heads),
                         d_model, d_ff, dropout) for _ in range(e_layers)])
        self.conv_layers = nn.ModuleList(
            [ConvLayer(d_model) for _ in range(e_layers - 1)] if distil else [])
        self.encoder_norm = nn.LayerNorm(d_model)
        self.decoder_layers = nn.ModuleList([
            DecoderLayer(AttentionLayer(ProbAttention(True, factor), d_model, n_heads,
                                        mix=True),
                         AttentionLayer(FullAttention(dropout), d_model, n_heads),
                         d_model, d_ff, dropout) for _ in range(d_layers)])
        self.decoder_norm = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, 1)

    def forward(self, x):  # (B, T, F) -> (B,)
        enc = self.enc_embedding(x)
        for i, layer in enumerate(self.encoder_layers):
            enc = layer(enc)
            if i < len(self.conv_layers):
                enc = self.conv_layers[i](enc)
        enc = self.encoder_norm(enc)
        start = x[:, x.shape[1] - self.label_len:, :]
        dec_in = torch.cat([start, torch.zeros_like(x[:, :1, :])], dim=1)
        dec = self.dec_embedding(dec_in)
        for layer in self.decoder_layers:
            dec = layer(dec, enc)
        dec = self.decoder_norm(dec)
        return self.projection(dec[:, -1, :]).squeeze(-1)


class InformerModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS
    SEQ_PARAM = "seq_len"

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _Informer(n_features, int(p["d_model"]), int(p["n_heads"]), int(p["e_layers"]),
                         int(p["d_layers"]), int(p["d_ff"]), float(p["dropout"]),
                         int(p["seq_len"]), int(p["label_len"]), int(p["factor"]),
                         bool(p["distil"]))
