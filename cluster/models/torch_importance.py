"""Permutation importance of the zoo's PyTorch models: the drop in mean daily IC when
one feature column is shuffled (the scorer is the one DailyScorer)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cluster.models.torch_windows import levels, window_indices
from cluster.training.metrics import DailyScorer


def permutation_importance(model, features: pd.DataFrame, label: pd.Series,
                           n_repeats: int = 1, seed: int = 0,
                           history: pd.DataFrame | None = None) -> pd.Series:
    """Drop in the mean daily IC on the rows of ``features`` when one feature column
    is shuffled, averaged over ``n_repeats`` shuffles; sorted descending.

    Sequence models read each row's window from ``history`` when given (raw feature
    rows up to the last date of ``features``, e.g. the handler's infer data), else
    from ``features`` alone (windows padded at its start). The column is shuffled
    across every row any window reads, so inside the windows too."""
    net, device = model.ready_net()
    features = model.feature_frame(features)
    if model.sequence and history is not None:
        panel, _ = model.build_panel(model.feature_frame(history), device)
        pos = panel.locate(features.index)
        used = np.unique(window_indices(pos, panel.starts, model.seq_len, panel.pad))
        used = used[used != panel.pad]
    else:
        panel, pos = model.build_panel(features, device)
        used = np.arange(panel.pad)
    y = pd.Series(label).reindex(features.index).to_numpy(dtype=np.float64)
    dates, _ = levels(features.index)
    scorer = DailyScorer(dates, y)
    base = scorer.ic(model.run_net(net, panel, pos))
    rng = np.random.RandomState(seed)
    rows = torch.from_numpy(used).to(panel.data.device)
    out = {}
    for j, name in enumerate(model.feature_names):
        column = panel.data[rows, j].clone()
        drops = []
        for _ in range(max(int(n_repeats), 1)):
            perm = torch.from_numpy(rng.permutation(len(used))).to(panel.data.device)
            panel.data[rows, j] = column[perm]  # scaling is per column: shuffle scaled
            drops.append(base - scorer.ic(model.run_net(net, panel, pos)))
        panel.data[rows, j] = column
        out[name] = float(np.mean(drops))
    return pd.Series(out, dtype=np.float64).sort_values(ascending=False)
