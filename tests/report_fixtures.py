"""A hand-made :class:`~taskrel.pipelines.compare.Comparison` for the report tests: four tasks,
a ground truth whose diagonal is 100 times its off-diagonal, a method with a caveat and
a missing entry, the known structure, metrics with a missing value, and the trust figures
of 6 repeats computed by :func:`taskrel.relatedness.reliability.trust_summary`."""

from __future__ import annotations

import math

import numpy as np

from taskrel.pipelines.compare import Comparison
from taskrel.relatedness.reliability import trust_summary
from taskrel.relatedness.result import Relatedness

NAMES = ["school-a", "school-b", "school-c", "school-d"]
UNITS_GT = "change of the target's mean test loss when the source's data are removed"
UNITS_MTIF = "predicted change of the target's mean test loss (influence)"
CAVEAT = "the Hessian is not positive definite (smallest eigenvalue -3.2e-04); damped by 1e-3"


def hand_made() -> Comparison:
    """The comparison (deterministic)."""
    rng = np.random.default_rng(0)
    signal = np.array(
        [
            [40.0, 0.30, -0.12, 0.05],
            [0.25, 55.0, 0.08, -0.20],
            [-0.10, 0.04, 61.0, 0.15],
            [0.02, -0.30, 0.12, 48.0],
        ]
    )
    truth = signal + 0.03 * rng.normal(size=(6, 4, 4))
    mtif = 0.9 * signal + 0.05 * rng.normal(size=(6, 4, 4))
    mtif_mean = mtif.mean(0)
    mtif_mean[2, 3] = math.nan  # no estimate for this pair
    results = {
        "mtif": Relatedness(
            mtif_mean, NAMES, "mtif", meta={"units": UNITS_MTIF, "caveats": [CAVEAT]}
        ),
        "ground-truth": Relatedness(truth.mean(0), NAMES, "loto", meta={"units": UNITS_GT}),
    }
    structure = np.array(
        [[1.0, 0.8, -0.1, 0.0], [0.8, 1.0, 0.1, -0.5], [-0.1, 0.1, 1.0, 0.3], [0.0, -0.5, 0.3, 1.0]]
    )
    trust = trust_summary(truth, "loto", {"mtif": mtif}, NAMES, seed=0)
    return Comparison(
        NAMES,
        results,
        skipped={"vmtl": "not applicable: needs classification tasks"},
        metrics={n: {"loss": 0.5 + k / 10, "accuracy": math.nan} for k, n in enumerate(NAMES)},
        structure=structure,
        config={"data": "hand-made", "model": "hard"},
        timings={"mtif": {"wall_time_s": 1.5}, "ground-truth": {"wall_time_s": 12.0}},
        reference="ground-truth",
        trust=trust,
    )
