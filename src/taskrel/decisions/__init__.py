"""Decisions proved by training: predict what training a group of tasks together gives,
choose groups on those predictions, and check the choice by retraining.

- :mod:`taskrel.decisions.predictors` — the :class:`GroupOutcomePredictor` interface, its
  registry :data:`PREDICTORS` and the exact predictor (retraining).
- :mod:`taskrel.decisions.mtif_subset` — MTIF subset step (``mtif-newton``,
  ``mtif-first-order``); :mod:`taskrel.decisions.gradtag` — Grad-TAG (``grad-tag``);
  :mod:`taskrel.decisions.tag` — TAG (``tag``); :mod:`taskrel.decisions.matrix` — matrix
  heuristics (``gradient-cosine``, ``affinity-sum``, ``param-similarity``);
  :mod:`taskrel.decisions.submodel` — the model of a task subset seen from the full model.
- :mod:`taskrel.decisions.search` — the partition search on group-additive objectives
  (predicted losses, or pair weights of a relatedness matrix): exact up to 10 tasks, local
  search beyond, fixed number of groups or a penalty per group.
- :mod:`taskrel.decisions.crossfit` — choosing on K cross-fitted folds of the training +
  validation rows, and the one-standard-error rule over folds.
- :mod:`taskrel.decisions.evaluate` — actual subset outcomes, group LDS, and the decision
  evaluation against all-in-one, single-task, random partitions and the oracle.
"""
