"""Ray Tune over the model zoo: search spaces, walk-forward folds, the trainable,
schedulers and resources per trial, restore, best trial -> registry.

Imports only ``cluster`` (never ``serving``); ``jobs.tune`` is its command line.
"""
