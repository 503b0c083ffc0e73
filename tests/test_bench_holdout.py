"""The VMTL benchmark's held-out rows (the ``prior`` decision data) never overlap the rows
that train or select a model, nor the test rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def vmtl_bench():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("vmtl_bench", BENCH / "vmtl_bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["vmtl_bench"] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("vmtl_bench", None)
        sys.path.remove(str(BENCH))


def _job(vb, holdout: float):  # type: ignore[no-untyped-def]
    method = vb.Method("VMTL", "vmtl", {"latent": 8}, (1e-3,), ({"beta": 1.0},))
    return vb.Job("office-caltech", {}, 0.1, 3, method, 1e-3, {}, 1, 0.2, holdout_frac=holdout)


def test_holdout_rows_are_disjoint_from_train_val_and_test(vmtl_bench) -> None:  # type: ignore[no-untyped-def]
    plain, _, none = vmtl_bench.prepare(_job(vmtl_bench, 0.0))
    ts, _, held = vmtl_bench.prepare(_job(vmtl_bench, 0.2))
    assert none is None
    for p, t, h in zip(plain.tasks, ts.tasks, held.tasks, strict=True):
        fraction = np.concatenate([p.train_idx, p.val_idx])  # the split's training fraction
        used = np.concatenate([t.train_idx, t.val_idx])
        assert len(h.val_idx) > 0
        assert not np.intersect1d(h.val_idx, used).size  # never trained on nor selected on
        assert not np.intersect1d(h.val_idx, t.test_idx).size
        # held-out + train + validation is exactly the training fraction; test unchanged
        np.testing.assert_array_equal(np.sort(np.concatenate([h.val_idx, used])), np.sort(fraction))
        np.testing.assert_array_equal(t.test_idx, p.test_idx)
        np.testing.assert_array_equal(h.train_idx, t.train_idx)
        assert len(h.val_idx) == round(0.2 * len(fraction))


def test_holdout_changes_the_cache_key_only_when_used(vmtl_bench) -> None:  # type: ignore[no-untyped-def]
    a, b = _job(vmtl_bench, 0.0), _job(vmtl_bench, 0.2)
    assert vmtl_bench.digest(a) != vmtl_bench.digest(b)
    assert vmtl_bench.digest(a) == vmtl_bench.digest(_job(vmtl_bench, 0))
