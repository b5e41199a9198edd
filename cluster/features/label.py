"""The label: the return from the close of day t+1 to the close of day t+h.

``h`` is the setting ``qlib.label_horizon`` (default below); the label expression,
the look-ahead rows a feature update re-emits, and the purge gaps of training and
tuning are all derived from it (``FeatureSet.label_horizon``).
"""
LABEL_NAME = "LABEL0"
LABEL_HORIZON = 2


def label_expression(horizon: int = LABEL_HORIZON) -> str:
    """Qlib's expression of the label (Alpha158's for the default horizon)."""
    return f"Ref($close, -{horizon})/Ref($close, -1) - 1"
