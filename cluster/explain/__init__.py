"""Explanations (SHAP) of registered models: global importance, grouped by feature
family, and the local explanation of one prediction.

- ``explainers``  one explainer per model family: trees by the libraries' own TreeSHAP
  (``pred_contrib`` / ``pred_contribs``; ``bench/explain.py`` measured it against
  ``shap.TreeExplainer``), the linear model exactly by ``shap.LinearExplainer`` on its
  scaled inputs, non-sequence torch models by ``shap``'s seeded permutation explainer
  on a fixed background drawn from the version's training reference sample;
- ``service``     what the API calls: local explanations of a posted row or of an
  instrument on a date, and the global explanation computed once per model version
  and kept with it (a registry artefact).

Every explanation is additive: ``base_value + sum(values) == prediction`` (within
1e-6) and deterministic: the same model and input give identical values.
"""
