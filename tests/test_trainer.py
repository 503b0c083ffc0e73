from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import RunDirError
from taskrel.models import build_model
from taskrel.seeding import seed_everything
from taskrel.training import TrainConfig, TrainingInterrupted, evaluate, fit, summarize, train
from taskrel.training.checkpoint import load_checkpoint

FAST = TrainConfig(epochs=12, lr=1e-2, batch_size=16, patience=None, checkpoint_every=2)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_results(synthetic_cls: TaskSet) -> None:
    runs = [fit(synthetic_cls, "hard", {"hidden": [8], "dropout": 0.2}, FAST) for _ in range(2)]
    for k, v in _params(runs[0].model).items():
        torch.testing.assert_close(v, _params(runs[1].model)[k], rtol=0, atol=0)
    assert evaluate(runs[0].model, synthetic_cls) == evaluate(runs[1].model, synthetic_cls)
    other = fit(
        synthetic_cls, "hard", {"hidden": [8], "dropout": 0.2}, FAST.model_copy(update={"seed": 1})
    )
    assert not torch.equal(other.model.encoder[0].weight, runs[0].model.encoder[0].weight)


def test_interrupt_and_resume_reach_the_uninterrupted_result(
    synthetic_cls: TaskSet, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    config = {"hidden": [8], "dropout": 0.2, "l2": 1e-4, "l2_task": None}
    reference = fit(synthetic_cls, "hard", config, FAST)

    def stop_at_5(epoch: int, record: dict[str, float]) -> None:
        if epoch == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingInterrupted) as info:
        fit(synthetic_cls, "hard", config, FAST, checkpoint=ckpt, on_epoch=stop_at_5)
    assert info.value.epoch == 5  # the interrupt came after epoch 5 was complete
    assert load_checkpoint(ckpt)["epoch"] == 5
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` lets it through
    copy = pickle.loads(pickle.dumps(info.value))  # as a worker process sends it back
    assert (copy.checkpoint, copy.epoch, str(copy)) == (ckpt, 5, str(info.value))
    seed_everything(123)  # resuming must not depend on the global RNG state
    model = build_model("hard", synthetic_cls, config)
    resumed = train(model, synthetic_cls, FAST, checkpoint=ckpt, resume=True)
    assert resumed.epochs_run == FAST.epochs
    for k, v in _params(reference.model).items():
        torch.testing.assert_close(v, _params(resumed.model)[k], rtol=0, atol=0)
    assert [h["objective"] for h in resumed.history] == [h["objective"] for h in reference.history]


def test_interrupt_without_checkpoint_names_the_last_finished_epoch(
    synthetic_cls: TaskSet,
) -> None:
    cfg = TrainConfig(epochs=10, lr=1e-2, batch_size=8)
    steps = math.ceil(max(len(t.train_idx) for t in synthetic_cls.tasks) / cfg.batch_size)
    assert steps >= 2

    def stop_in_epoch_5(step: int, model: object, batches: object) -> None:
        if step == 4 * steps + 1:  # the second step of epoch 5: epoch 4 is the last finished
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        fit(synthetic_cls, "hard", {"hidden": [8]}, cfg, on_step=stop_in_epoch_5)
    assert info.value.epoch == 4 and info.value.checkpoint is None
    assert "no checkpoint" in str(info.value)


def test_evaluation_restores_the_mode_it_found(synthetic_cls: TaskSet) -> None:
    from taskrel.training.trainer import validation_loss

    model = build_model(
        "hard", synthetic_cls, {"hidden": [8], "dropout": 0.5, "l2": 1e-4, "l2_task": 1e-4}
    )
    model.train()
    first = validation_loss(model, synthetic_cls)
    assert model.training and all(m.training for m in model.modules())
    # dropout was off while evaluating: the same loss twice, and again from eval mode
    assert validation_loss(model, synthetic_cls) == first
    evaluate(model, synthetic_cls, "val")
    assert all(m.training for m in model.modules())
    model.eval()
    assert validation_loss(model, synthetic_cls) == first and not model.training


def test_corrupt_checkpoint_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="corrupt checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(RunDirError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_early_stopping_restores_the_best_validation_epoch(synthetic_cls: TaskSet) -> None:
    cfg = TrainConfig(epochs=200, lr=5e-2, batch_size=16, patience=5)
    result = fit(synthetic_cls, "stl", {"hidden": [64], "l2": 0.0}, cfg)
    assert result.stopped_early and result.epochs_run < 200
    vals = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(vals)) + 1
    assert result.epochs_run - result.best_epoch == 5
    from taskrel.training.trainer import validation_loss

    assert validation_loss(result.model, synthetic_cls) == pytest.approx(min(vals), rel=1e-6)


def test_lbfgs_reaches_the_optimum_of_a_convex_model(synthetic_reg: TaskSet) -> None:
    cfg = TrainConfig(epochs=5, optimizer="lbfgs", lr=1.0, patience=None, dtype="float64")
    result = fit(
        synthetic_reg, "hard", {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}, cfg
    )
    model = result.model
    from taskrel.models.base import Batch

    batches = [
        Batch(t, torch.as_tensor(x).double(), torch.as_tensor(y).double())
        for t, (x, y) in enumerate(task.arrays("train") for task in synthetic_reg)
    ]
    loss, _ = model.objective(batches)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-7


def test_trainer_learns_a_real_dataset() -> None:
    taskset = load("rotated-digits", train=0.3, val=0.1, seed=0).standardize()
    result = fit(
        taskset,
        "hard",
        {"hidden": [64]},
        TrainConfig(epochs=30, lr=3e-3, batch_size=32, patience=5),
    )
    acc = summarize(evaluate(result.model, taskset))["accuracy"]
    assert acc > 0.85  # chance is 0.10


def test_selection_metric_drives_early_stopping_and_the_restored_epoch(
    synthetic_cls: TaskSet,
) -> None:
    scripted = iter([0.0, 0.2, 0.9, 0.5, 0.4, 0.3, 0.95])  # before training, then per epoch
    seed_everything(0)
    model = build_model("stl", synthetic_cls, {"hidden": [16], "l2": 1e-4})
    model.extra_metrics = lambda taskset, split: {"score": next(scripted)}  # type: ignore[method-assign]
    params_after: dict[int, dict[str, torch.Tensor]] = {}
    cfg = TrainConfig(epochs=50, lr=5e-2, batch_size=16, patience=3, selection_metric="score")
    result = train(
        model, synthetic_cls, cfg, on_epoch=lambda e, r: params_after.update({e: _params(model)})
    )
    # epoch 2 scored best and epochs 3-5 did not beat it, whatever the validation loss did
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (2, 5, True)
    assert [h["val_score"] for h in result.history] == [0.2, 0.9, 0.5, 0.4, 0.3]
    for k, v in _params(result.model).items():
        torch.testing.assert_close(v, params_after[2][k], rtol=0, atol=0)


def test_unknown_selection_metric_fails_before_training(synthetic_cls: TaskSet) -> None:
    from taskrel.errors import ConfigError

    model = build_model("stl", synthetic_cls, {"hidden": [4], "l2": 1e-4})
    epochs: list[int] = []
    with pytest.raises(ConfigError, match="selection_metric='overall_accuracy'.*no validation"):
        train(
            model,
            synthetic_cls,
            TrainConfig(epochs=3, selection_metric="overall_accuracy"),
            on_epoch=lambda e, r: epochs.append(e),
        )
    assert epochs == []
