"""TimesNet (Wu et al., ICLR 2023) at small scale, after the Time-Series-Library code,
reading each instrument's last ``seq_len`` feature rows.

- Embedding: circular ``Conv1d`` token embedding + sinusoidal positions (no calendar
  marks here), dropout.
- ``e_layers`` TimesBlocks, each followed by a LayerNorm: the FFT of the sequence
  finds the ``top_k`` dominant frequencies f; for each, the sequence (zero-padded to
  a multiple of the period p = T // f) is folded into a 2-D (T/p, p) grid, passed
  through Inception block -> GELU -> Inception block (each ``num_kernels`` parallel
  2-D convs with kernels 1, 3, 5, ..., averaged), unfolded, and the k results are
  aggregated with softmax weights from the amplitudes of their frequencies
  (adaptive aggregation); residual connection.
- Head (the library's classification head, one output): GELU -> dropout -> flatten
  (T * d_model) -> Linear -> 1.

Deviation for reproducible predictions: the library picks the periods from the
amplitude spectrum averaged over the *batch*, so a row's prediction would depend on
the other rows of its batch. Here training does that, and also keeps a running
average of the batch spectra (momentum 0.1, like BatchNorm's running statistics);
eval mode picks the periods from that running spectrum. The aggregation weights stay
per sample, as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cluster.models.torch_base import TorchModel
from cluster.models.transformer import sinusoidal_positions

DEFAULT_PARAMS = dict(lr=0.001, n_epochs=100, batch_size=256, early_stop=15, d_model=64,
                      d_ff=64, e_layers=2, top_k=3, num_kernels=6, dropout=0.1, seq_len=20)


class InceptionBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_kernels: int):
        super().__init__()
        self.kernels = nn.ModuleList([
            nn.Conv2d(in_channels, out_channels, kernel_size=2 * i + 1, padding=i)
            for i in range(num_kernels)])
        for m in self.kernels:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return torch.stack([k(x) for k in self.kernels], dim=-1).mean(-1)


class TimesBlock(nn.Module):
    def __init__(self, seq_len: int, d_model: int, d_ff: int, top_k: int, num_kernels: int,
                 momentum: float = 0.1):
        super().__init__()
        self.seq_len = seq_len
        self.k = max(1, min(int(top_k), seq_len // 2))
        self.momentum = momentum
        self.conv = nn.Sequential(InceptionBlock(d_model, d_ff, num_kernels), nn.GELU(),
                                  InceptionBlock(d_ff, d_model, num_kernels))
        self.register_buffer("running_amplitude", torch.zeros(seq_len // 2 + 1))

    def _periods(self, x):
        amp = torch.fft.rfft(x, dim=1).abs()  # (B, T//2+1, N)
        per_sample = amp.mean(-1)  # (B, T//2+1)
        if self.training:
            freq = per_sample.mean(0).detach()
            with torch.no_grad():
                if bool(self.running_amplitude.abs().sum() == 0):
                    self.running_amplitude.copy_(freq)
                else:
                    self.running_amplitude.mul_(1 - self.momentum).add_(self.momentum * freq)
        else:
            freq = self.running_amplitude.clone()
        freq[0] = 0  # ignore the mean (frequency 0)
        top = torch.topk(freq, self.k).indices.clamp(min=1).cpu().tolist()
        periods = [max(1, x.shape[1] // f) for f in top]
        return periods, per_sample[:, top]  # (B, k) weights

    def forward(self, x):  # (B, T, N) -> (B, T, N)
        b, t, n = x.shape
        periods, weight = self._periods(x)
        res = []
        for p in periods:
            length = -(-t // p) * p
            out = x if length == t else torch.cat([x, x.new_zeros(b, length - t, n)], dim=1)
            out = out.reshape(b, length // p, p, n).permute(0, 3, 1, 2).contiguous()
            out = self.conv(out)
            out = out.permute(0, 2, 3, 1).reshape(b, -1, n)
            res.append(out[:, :t, :])
        res = torch.stack(res, dim=-1)  # (B, T, N, k)
        weight = F.softmax(weight, dim=1)[:, None, None, :]
        return (res * weight).sum(-1) + x


class _TimesNet(nn.Module):
    def __init__(self, n_features, d_model, d_ff, e_layers, top_k, num_kernels, dropout,
                 seq_len):
        super().__init__()
        self.token = nn.Conv1d(n_features, d_model, kernel_size=3, padding=1,
                               padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("pe", sinusoidal_positions(seq_len, d_model), persistent=False)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([TimesBlock(seq_len, d_model, d_ff, top_k, num_kernels)
                                     for _ in range(e_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(seq_len * d_model, 1)

    def forward(self, x):  # (B, T, F) -> (B,)
        h = self.token(x.permute(0, 2, 1)).transpose(1, 2) + self.pe[: x.shape[1]]
        h = self.emb_dropout(h)
        for block in self.blocks:
            h = self.norm(block(h))
        h = self.dropout(F.gelu(h))
        return self.projection(h.reshape(h.shape[0], -1)).squeeze(-1)


class TimesNetModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS
    SEQ_PARAM = "seq_len"

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _TimesNet(n_features, int(p["d_model"]), int(p["d_ff"]), int(p["e_layers"]),
                         int(p["top_k"]), int(p["num_kernels"]), float(p["dropout"]),
                         int(p["seq_len"]))
