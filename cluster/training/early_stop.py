"""The one early stopper of the zoo: boosting rounds (trees) and epochs (torch).

    stopper = EarlyStopper(patience=50)
    for step in range(1, n + 1):
        improved, stop = stopper.update(step, score)   # higher score is better
        if improved: keep this step's model
        if stop: break
    stopper.best_step, stopper.best_score

A non-finite score never counts as an improvement (a constant prediction has no IC);
the first step is always the best so far, so a run that never scores still has one.
"""
from __future__ import annotations

import math


class EarlyStopper:
    def __init__(self, patience: int):
        if int(patience) < 1:
            raise ValueError(f"early-stopping patience must be >= 1, got {patience}")
        self.patience = int(patience)
        self.best_step = 0
        self.best_score = -math.inf

    def update(self, step: int, score: float) -> tuple[bool, bool]:
        """Record ``score`` at ``step`` (1-based): (improved, stop now)."""
        value = float(score) if score is not None and math.isfinite(float(score)) else -math.inf
        improved = self.best_step == 0 or value > self.best_score
        if improved:
            self.best_step, self.best_score = int(step), value
        return improved, int(step) - self.best_step >= self.patience
