"""TAG: task grouping by lookahead inter-task affinity.

After Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning"
(NeurIPS 2021). While one model trains on all tasks, every few steps a lookahead SGD step
on task j's loss alone moves the shared parameters, and the inter-task affinity is the
relative drop of task i's loss, ``Z[i, j] = 1 - L_i(theta_s - lr g_j) / L_i(theta_s)``,
averaged over training (:func:`taskrel.relatedness.baselines.lookahead_affinity`, the
``affinity`` relatedness method). TAG scores task ``i`` in group ``G`` by its mean
affinity to the other members, ``mean_{j in G \\ {i}} Z[i, j]`` (0 alone), and chooses
the groups that maximise the total.

The predictor returns minus that score. It is a proxy monotone in the predicted loss, not
a loss: turning it into one would need each task's loss alone (``T`` more trainings) and a
model of how per-step affinities accumulate over training, which TAG does not give.
"""

from __future__ import annotations

from taskrel.decisions.matrix import MatrixHeuristic


class TAG(MatrixHeuristic):
    """TAG's group affinity (registry ``tag``; see module docstring).

    Args:
        options: options of the ``affinity`` method (``every``, ``lr``, ``train_config``).
        matrix: a precomputed ``(T, T)`` affinity matrix.
    """

    name = "tag"
    method = "affinity"
    aggregate = "mean"
    units = (
        "minus the mean lookahead affinity of the task to the other members of its group "
        "(TAG's group score; a fraction of the task's loss per step, not a loss; 0 alone)"
    )
