"""TabNet (Arik & Pfister, AAAI 2021) on one day's features, after the paper and
dreamquark-ai/tabnet.

- Input BatchNorm, then ``n_steps`` decision steps. Each step's attentive
  transformer (FC -> ghost BatchNorm -> x prior -> sparsemax) yields a sparse
  feature mask M; the prior is updated ``prior *= gamma - M`` so a feature used
  now is less likely to be used again (``gamma`` = 1 forces single use).
- Feature transformer: ``n_shared`` GLU layers whose FCs are shared by all steps,
  then ``n_independent`` step-specific GLU layers (FC -> ghost BN -> GLU), residual
  sums scaled by sqrt(0.5). Its output splits into ``n_d`` decision features
  (ReLU, summed over steps) and ``n_a`` features for the next step's attention.
- Output: Linear(n_d -> 1) on the aggregated decision features.
- Sparsity regularisation: the masks' entropy ``mean_batch(sum_j -M log(M + 1e-15))``,
  averaged over steps, times ``lambda_sparse`` is added to the MSE loss.

Ghost BatchNorm normalises chunks of ``virtual_batch_size`` rows while training and
uses running statistics in eval mode, so a prediction does not depend on its batch.

Defaults chosen here (the seed leaves them open): n_d = n_a = 16, n_steps 3, gamma
1.3, 2 shared + 2 independent GLU layers, lambda_sparse 1e-4, virtual batch 256,
BN momentum 0.02, lr 0.01, 100 epochs, batch 1024, early stop 15; ``dropout`` (0 by
default, TabNet has none) applies before the output layer only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cluster.models.torch_base import TorchModel

DEFAULT_PARAMS = dict(lr=0.01, n_epochs=100, batch_size=1024, early_stop=15, n_d=16, n_a=16,
                      n_steps=3, gamma=1.3, n_shared=2, n_independent=2, lambda_sparse=1e-4,
                      virtual_batch_size=256, momentum=0.02, dropout=0.0)


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection onto the simplex (Martins & Astudillo 2016); autograd
    through the sort gives sparsemax's Jacobian."""
    z = z - z.max(dim=dim, keepdim=True).values
    zs = torch.sort(z, dim=dim, descending=True).values
    shape = [1] * z.dim()
    shape[dim] = -1
    k = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype).view(shape)
    cs = zs.cumsum(dim) - 1
    support = (k * zs > cs).sum(dim=dim, keepdim=True)
    tau = cs.gather(dim, support - 1) / support.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class GhostBatchNorm(nn.Module):
    def __init__(self, dim: int, virtual_batch_size: int, momentum: float):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, momentum=momentum)
        self.vbs = max(int(virtual_batch_size), 2)

    def forward(self, x):
        if not self.training or x.shape[0] <= self.vbs:
            return self.bn(x)
        chunks = x.chunk(math.ceil(x.shape[0] / self.vbs), 0)
        return torch.cat([self.bn(c) for c in chunks], 0)


class GLULayer(nn.Module):
    def __init__(self, in_dim, out_dim, fc: nn.Linear | None, vbs, momentum):
        super().__init__()
        self.out_dim = out_dim
        self.fc = fc if fc is not None else nn.Linear(in_dim, 2 * out_dim, bias=False)
        self.bn = GhostBatchNorm(2 * out_dim, vbs, momentum)

    def forward(self, x):
        x = self.bn(self.fc(x))
        return x[:, : self.out_dim] * torch.sigmoid(x[:, self.out_dim:])


class FeatureTransformer(nn.Module):
    def __init__(self, in_dim, out_dim, shared: nn.ModuleList, n_independent, vbs, momentum):
        super().__init__()
        layers = []
        for i, fc in enumerate(shared):
            layers.append(GLULayer(in_dim if i == 0 else out_dim, out_dim, fc, vbs, momentum))
        for _ in range(n_independent):
            first = not layers
            layers.append(GLULayer(in_dim if first else out_dim, out_dim, None, vbs, momentum))
        self.layers = nn.ModuleList(layers)
        self.scale = math.sqrt(0.5)

    def forward(self, x):
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = (x + layer(x)) * self.scale
        return x


class AttentiveTransformer(nn.Module):
    def __init__(self, n_a, in_dim, vbs, momentum):
        super().__init__()
        self.fc = nn.Linear(n_a, in_dim, bias=False)
        self.bn = GhostBatchNorm(in_dim, vbs, momentum)

    def forward(self, a, prior):
        return sparsemax(self.bn(self.fc(a)) * prior, dim=-1)


class _TabNet(nn.Module):
    def __init__(self, n_features, n_d, n_a, n_steps, gamma, n_shared, n_independent,
                 lambda_sparse, vbs, momentum, dropout):
        super().__init__()
        self.n_d, self.n_steps, self.gamma = n_d, n_steps, gamma
        self.lambda_sparse = lambda_sparse
        self.input_bn = nn.BatchNorm1d(n_features, momentum=0.01)
        width = n_d + n_a
        self.shared = nn.ModuleList(
            [nn.Linear(n_features if i == 0 else width, 2 * width, bias=False)
             for i in range(n_shared)])
        self.initial = FeatureTransformer(n_features, width, self.shared, n_independent, vbs,
                                          momentum)
        self.transformers = nn.ModuleList([
            FeatureTransformer(n_features, width, self.shared, n_independent, vbs, momentum)
            for _ in range(n_steps)])
        self.attentions = nn.ModuleList([AttentiveTransformer(n_a, n_features, vbs, momentum)
                                         for _ in range(n_steps)])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_d, 1)

    def forward(self, x):  # (B, F) -> ((B,), sparsity loss)
        x = self.input_bn(x)
        prior = torch.ones_like(x)
        a = self.initial(x)[:, self.n_d:]
        out = x.new_zeros(x.shape[0], self.n_d)
        entropy = x.new_zeros(())
        for attention, transformer in zip(self.attentions, self.transformers):
            mask = attention(a, prior)
            entropy = entropy + torch.mean(torch.sum(-mask * torch.log(mask + 1e-15), dim=1))
            prior = prior * (self.gamma - mask)
            h = transformer(x * mask)
            out = out + torch.relu(h[:, : self.n_d])
            a = h[:, self.n_d:]
        pred = self.head(self.dropout(out)).squeeze(-1)
        return pred, self.lambda_sparse * entropy / self.n_steps


class TabNetModel(TorchModel):
    DEFAULT_PARAMS = DEFAULT_PARAMS

    def _build_network(self, n_features: int) -> nn.Module:
        p = self.params
        return _TabNet(n_features, int(p["n_d"]), int(p["n_a"]), int(p["n_steps"]),
                       float(p["gamma"]), int(p["n_shared"]), int(p["n_independent"]),
                       float(p["lambda_sparse"]), int(p["virtual_batch_size"]),
                       float(p["momentum"]), float(p["dropout"]))
