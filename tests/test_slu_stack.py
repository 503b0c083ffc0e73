"""The Stack-Propagation SLU model (`slu-stack`): voting, token-level intent loss, stack
propagation, feedback on it, and `taskrel predict` with it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.models.feedback import FeedbackMTL
from taskrel.models.slu import slu_scores, tag_sentence
from taskrel.models.slu_stack import StackSLU, vote

TINY = {"embedding_dim": 8, "hidden": 8, "decoder_hidden": 8, "attention_dim": 6}
NEG = -math.inf


@pytest.fixture(scope="module")
def atis_small() -> TaskSet:
    """200 ATIS training utterances, no validation split, the first 200 test utterances."""
    ts = load("atis", n_train=200, seed=0)
    return ts.with_tasks(
        [
            replace(t, val_idx=np.zeros(0, dtype=np.int64), test_idx=t.test_idx[:200])
            for t in ts.tasks
        ]
    )


def test_vote_is_a_majority_of_token_argmaxes_with_probability_ties() -> None:
    logits = torch.tensor(
        [
            # three real tokens vote 2, 0, 2: class 2 wins although token 1 is most sure of 0
            [[0.0, 0.0, 1.0], [9.0, 0.0, 0.0], [0.0, 0.5, 1.0], [NEG, NEG, NEG]],
            # one vote each for 0 and 1: the tie goes to the larger mean probability, 1
            [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [NEG, NEG, NEG], [NEG, NEG, NEG]],
            # padding (mask False) never votes, whatever its scores
            [[0.0, 2.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]],
        ]
    )
    mask = torch.tensor(
        [[True, True, True, False], [True, True, False, False], [True, False, False, False]]
    )
    # row 1 by hand: mean probability of class 0 = (e/(e+2) + 1/(e^3+2)) / 2 = 0.39...,
    # of class 1 = (1/(e+2) + e^3/(e^3+2)) / 2 = 0.56...
    p0 = (math.e / (math.e + 2) + 1 / (math.e**3 + 2)) / 2
    p1 = (1 / (math.e + 2) + math.e**3 / (math.e**3 + 2)) / 2
    assert p1 > p0
    assert vote(logits, mask).tolist() == [2, 1, 1]


def test_intent_loss_is_the_mean_token_cross_entropy(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = StackSLU.from_taskset(atis_small, TINY).eval()
    intent = atis_small["intent"]
    x, y = torch.as_tensor(intent.x[:5]), torch.as_tensor(intent.y[:5])
    out = model(x, 0)
    assert out.shape == (5, x.shape[1], intent.n_outputs)
    real = x != 0
    assert bool(torch.isinf(out[~real]).all()) and bool(torch.isfinite(out[real]).all())
    for r in range(5):
        tokens = out[r, real[r]]
        expected = torch.nn.functional.cross_entropy(tokens, y[r].expand(len(tokens)))
        torch.testing.assert_close(model.loss(x[r : r + 1], y[r : r + 1], 0)[0], expected)
    # the prediction is the vote of the token argmaxes (UNK excluded)
    torch.testing.assert_close(model.predict(x, 0), vote(out[..., :-1], real))


def test_the_slot_loss_trains_the_intent_decoder(atis_small: TaskSet) -> None:
    """Stack propagation: the slot decoder reads the token intent distributions, so the
    slot loss has a gradient on the intent decoder (a JointSLU's would be zero)."""
    torch.manual_seed(0)
    model = StackSLU.from_taskset(atis_small, TINY)
    slots = atis_small["slots"]
    model.loss(torch.as_tensor(slots.x[:8]), torch.as_tensor(slots.y[:8]), 1).mean().backward()
    assert model.intent_out.weight.grad is not None
    assert float(model.intent_out.weight.grad.abs().sum()) > 0
    names = set(model.task_parameter_names(0))
    assert names == {n for n, _ in model.named_parameters() if n.startswith("intent_")}
    shared = set(model.shared_parameters())
    assert {"query.weight", "key.weight", "value.weight"} <= shared
    assert not any(n.startswith(("intent_", "slot_", "crf")) for n in shared)


def test_outputs_do_not_depend_on_padding(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = StackSLU.from_taskset(atis_small, TINY).eval()
    x = torch.as_tensor(atis_small.tasks[0].x[:6])
    n = int((x[0] != 0).sum())
    for task in (0, 1):
        alone = model(x[:1, :n], task)
        batched = model(x, task)[:1, :n]
        torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


def _favour_unk(model: StackSLU, boost: float = 50.0) -> None:
    with torch.no_grad():
        model.intent_out.bias[-1] += boost
        model.slot_out.bias[-1] += boost


def test_the_unseen_intent_never_wins_the_vote(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = StackSLU.from_taskset(atis_small, TINY).eval()
    _favour_unk(model)
    intent = atis_small["intent"]
    x = torch.as_tensor(intent.x[intent.test_idx])
    unk = intent.n_outputs - 1
    out = model(x, 0)
    assert bool((out[x != 0].argmax(-1) == unk).all())  # every token's raw favourite ...
    pred = model.predict(x, 0)
    assert not bool((pred == unk).any())  # ... is never voted for
    torch.testing.assert_close(pred, vote(out[..., :-1], x != 0))
    scores = slu_scores(model, atis_small, "test")
    expected = float(np.mean(pred.numpy() == intent.y[intent.test_idx]))
    assert scores["intent_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("infusion", ["gate", "embedding"])
def test_feedback_with_zero_amplifiers_reproduces_the_stack_base(
    atis_small: TaskSet, infusion: str
) -> None:
    torch.manual_seed(0)
    base = StackSLU.from_taskset(atis_small, TINY).eval()
    options = {"base": "slu-stack", "iterations": 2, "infusion": infusion, "stack": TINY}
    model = build_model("feedback", atis_small, options).eval()
    assert isinstance(model, FeedbackMTL) and isinstance(model.body, StackSLU)
    model.body.load_state_dict(base.state_dict())
    x = torch.as_tensor(atis_small.tasks[0].x[:32])
    # with the amplifiers on, feedback moves both outputs ...
    for t in (0, 1):
        assert not torch.allclose(model(x, t), base(x, t))
    with torch.no_grad():
        for amplifiers in model.amplifiers:
            for amp in amplifiers:
                amp[2].weight.zero_()
                amp[2].bias.zero_()
    # ... with zero amplifiers every iteration is the base model, bit for bit
    for t in (0, 1):
        assert torch.equal(model(x, t), base(x, t))
        assert torch.equal(model.predict(x, t), base.predict(x, t))
    outputs, _ = model.unroll(x)
    assert len(outputs) == 3 and torch.equal(outputs[2][0], outputs[0][0])


def test_feedback_on_the_stack_base_trains(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model(
        "feedback", atis_small, {"base": "slu-stack", "iterations": 2, "stack": TINY}
    )
    assert isinstance(model, FeedbackMTL)
    assert model.points == [["embedding", "encoder", "decoder"]] * 2
    intent, slots = atis_small
    from taskrel.models.base import Batch

    rows = slice(0, 16)
    batches = [
        Batch(t, torch.as_tensor(task.x[rows]), torch.as_tensor(task.y[rows]))
        for t, task in enumerate((intent, slots))
    ]
    loss, logs = model.objective(batches)
    assert torch.isfinite(loss) and logs["convergence_loss"] >= 0
    loss.backward()
    for amplifiers in model.amplifiers:  # the token-level intent signal reaches the slots
        assert all(amp[0].weight.grad is not None for amp in amplifiers)
    assert "overall_accuracy" in model.extra_metrics(atis_small, "test")


@pytest.mark.parametrize("name", ["slu-stack", "feedback"])
def test_predict_command_with_a_saved_stack_model(tmp_path, capsys, name: str) -> None:
    from taskrel.cli import main
    from taskrel.config import RunConfig
    from taskrel.pipelines.experiment import load_model, run_training

    model_cfg = (
        {"name": name, **TINY}
        if name == "slu-stack"
        else {
            "name": "feedback",
            "base": "slu-stack",
            "iterations": 1,
            "stack": TINY,
        }
    )
    cfg = RunConfig.model_validate(
        {
            "data": {"name": "atis", "options": {"n_train": 100}},
            "model": model_cfg,
            "train": {"epochs": 1, "batch_size": 50},
        }
    )
    run = tmp_path / "run"
    run.mkdir()
    run_training(cfg, run, progress=False)
    sentence = "show me flights from boston to denver"
    status = main(["predict", str(run), sentence])
    out = capsys.readouterr().out
    assert status == 0
    model, taskset, _ = load_model(run)
    body = model.body if isinstance(model, FeedbackMTL) else model
    assert isinstance(body, StackSLU)
    expected = tag_sentence(model, taskset, sentence)
    assert f"intent: {expected.intent}" in out
    for word, tag in zip(expected.tokens, expected.slots, strict=True):
        assert f"| {word} | {tag} |" in out
