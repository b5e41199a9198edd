"""Explanations (SHAP) of registered models: global importance, grouped by feature
family, and the local explanation of one prediction.

- ``explainers``  one explainer per model family: trees (lightgbm, xgboost) by the
  libraries' own TreeSHAP (``pred_contrib`` / ``pred_contribs``; ``bench/explain.py``
  measured it against ``shap.TreeExplainer``), the linear model exactly by
  ``shap.LinearExplainer`` on its scaled inputs, row torch models (mlp, tabnet) and
  ensembles of row models by ``shap``'s seeded permutation explainer on a fixed
  background drawn from the version's training reference sample, and models that read
  a window per prediction (lstm, transformer, informer, timesnet, patchtst, and
  ensembles with such a member) by the same explainer over the window, the features
  as players, on the version's stored training windows; a rolling version by its
  step's explainer (the step that answers the date; the latest when undated);
- ``background``  the training windows stored with a sequence version at registration;
- ``service``     what the API calls: local explanations of a posted row or of an
  instrument on a date, and the global explanation computed once per model version
  and kept with it (a registry artefact).

Every explanation is additive: ``base_value + sum(values) == prediction`` (within
1e-6) and deterministic: the same model and input give identical values.
"""
