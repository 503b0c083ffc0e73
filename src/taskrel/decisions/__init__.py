"""Decisions proved by training: predict what training a group of tasks together gives,
choose groups on those predictions, and check the choice by retraining.

- :mod:`taskrel.decisions.predictors` — the :class:`GroupOutcomePredictor` interface, its
  registry :data:`PREDICTORS` and the exact predictor (retraining).
- :mod:`taskrel.decisions.mtif_subset` — MTIF subset step (``mtif-newton``,
  ``mtif-first-order``); :mod:`taskrel.decisions.gradtag` — Grad-TAG (``grad-tag``);
  :mod:`taskrel.decisions.tag` — TAG (``tag``); :mod:`taskrel.decisions.matrix` — matrix
  heuristics (``gradient-cosine``, ``affinity-sum``, ``param-similarity``);
  :mod:`taskrel.decisions.submodel` — the model of a task subset seen from the full model.
"""
