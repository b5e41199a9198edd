"""Robust feature scaling fitted on the training segment and kept with the model,
so a model predicts the same on raw feature rows anywhere (a serving replica too)."""
from __future__ import annotations

import numpy as np


class RobustScaler:
    """(x - median) / (1.4826 * MAD), clipped to ±clip; NaN and ±inf become 0."""

    def __init__(self, clip: float = 3.0):
        self.clip = clip
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> "RobustScaler":
        x = np.where(np.isfinite(x), x, np.nan).astype(np.float64)
        with np.errstate(all="ignore"):
            center = np.nanmedian(x, axis=0)
            mad = np.nanmedian(np.abs(x - center), axis=0) * 1.4826
            std = np.nanstd(x, axis=0)
        scale = np.where(mad > 1e-12, mad, np.where(std > 1e-12, std, 1.0))
        self.center = np.nan_to_num(center, nan=0.0)
        self.scale = np.nan_to_num(scale, nan=1.0)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.center is None:
            raise ValueError("RobustScaler is not fitted")
        return {"scaler_center": np.asarray(self.center, np.float64),
                "scaler_scale": np.asarray(self.scale, np.float64),
                "scaler_clip": np.asarray(self.clip, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "RobustScaler":
        scaler = cls(float(arrays["scaler_clip"]))
        scaler.center = np.asarray(arrays["scaler_center"], np.float64)
        scaler.scale = np.asarray(arrays["scaler_scale"], np.float64)
        return scaler

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.center is None:
            raise ValueError("RobustScaler is not fitted")
        with np.errstate(all="ignore"):
            z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        z = np.clip(z, -self.clip, self.clip)
        return np.where(np.isfinite(z), z, 0.0).astype(np.float32)
