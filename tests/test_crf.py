"""Linear-chain CRF slot decoder: exact likelihood and decoding against brute force, and its
use as the loss and decoder of the joint SLU model and of feedback MTL."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import PAD_TAG, TaskSet
from taskrel.models import build_model
from taskrel.models.base import per_example_loss
from taskrel.models.crf import CRF
from taskrel.models.feedback import FeedbackMTL, _task_loss
from taskrel.models.slu import JointSLU, mask_class
from taskrel.training.metrics import evaluate, predict_task, task_losses
from taskrel.training.trainer import TrainConfig, train

SMALL = {"embedding_dim": 16, "hidden": 16, "decoder_hidden": 16, "dropout": 0.1, "crf": True}


def _random_crf(n_tags: int, seed: int) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(n_tags).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def _score(crf: CRF, emissions: torch.Tensor, tags: tuple[int, ...]) -> torch.Tensor:
    """s(y) of one example restricted to its real positions (emissions ``(n, C)``)."""
    s = crf.start[tags[0]] + crf.end[tags[-1]]
    s = s + sum(emissions[i, t] for i, t in enumerate(tags))
    return s + sum(crf.transitions[a, b] for a, b in itertools.pairwise(tags))


# masks of every length 0..L, a gap in the middle and leading padding
MASKS = [
    [1, 1, 1, 1],
    [1, 1, 1, 0],
    [1, 1, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 0, 0],
    [1, 0, 1, 1],
    [0, 1, 1, 0],
]


@pytest.mark.parametrize("n_tags", [2, 3, 4])
def test_nll_and_viterbi_equal_brute_force(n_tags: int) -> None:
    crf = _random_crf(n_tags, seed=n_tags)
    mask = torch.tensor(MASKS, dtype=torch.bool)
    b, length = mask.shape
    emissions = 2 * torch.randn(b, length, n_tags, dtype=torch.float64)
    tags = torch.randint(0, n_tags, (b, length)).masked_fill(~mask, PAD_TAG)
    nll = crf.nll(emissions, tags, mask)
    best = crf.decode(emissions, mask)
    assert nll.shape == (b,) and best.shape == (b, length)
    for r in range(b):
        pos = mask[r].nonzero().flatten().tolist()
        if not pos:
            assert nll[r].item() == 0.0
            continue
        e = emissions[r, pos]
        seqs = list(itertools.product(range(n_tags), repeat=len(pos)))
        scores = torch.stack([_score(crf, e, s) for s in seqs])
        gold = _score(crf, e, tuple(tags[r, pos].tolist()))
        torch.testing.assert_close(
            nll[r], torch.logsumexp(scores, 0) - gold, rtol=1e-12, atol=1e-12
        )
        assert tuple(best[r, pos].tolist()) == seqs[int(scores.argmax())]
    # probabilities over all sequences of one example sum to 1
    pos = list(range(length))
    seqs = list(itertools.product(range(n_tags), repeat=length))
    all_tags = torch.tensor(seqs)
    e = emissions[:1].expand(len(seqs), -1, -1)
    p = torch.exp(-crf.nll(e, all_tags, torch.ones(len(seqs), length, dtype=torch.bool)))
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_viterbi_excludes_a_masked_tag_whatever_its_other_scores() -> None:
    """An emission of -inf (how the SLU models mask UNK) removes the tag from decoding: the
    result is the brute-force best sequence among those without it, although start,
    transitions and end favour it."""
    n_tags, banned = 4, 3
    crf = _random_crf(n_tags, seed=7)
    with torch.no_grad():
        crf.start[banned] += 30
        crf.transitions[:, banned] += 30
        crf.end[banned] += 30
    mask = torch.tensor(MASKS, dtype=torch.bool)
    emissions = torch.randn(*mask.shape, n_tags, dtype=torch.float64)
    assert bool((crf.decode(emissions, mask)[mask] == banned).all())  # unmasked: all banned
    best = crf.decode(mask_class(emissions, banned), mask)
    for r in range(len(MASKS)):
        pos = mask[r].nonzero().flatten().tolist()
        if not pos:
            continue
        seqs = list(itertools.product(range(banned), repeat=len(pos)))
        scores = torch.stack([_score(crf, emissions[r, pos], s) for s in seqs])
        assert tuple(best[r, pos].tolist()) == seqs[int(scores.argmax())]


def test_nll_gradients_match_finite_differences() -> None:
    crf = _random_crf(3, seed=0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    tags = torch.randint(0, 3, mask.shape).masked_fill(~mask, PAD_TAG)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64)

    def nll(e: torch.Tensor, trans: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
        params = {"transitions": trans, "start": start, "end": end}
        return torch.func.functional_call(crf, params, (e, tags, mask))

    inputs = tuple(
        p.detach().clone().requires_grad_()
        for p in (emissions, crf.transitions, crf.start, crf.end)
    )
    assert torch.autograd.gradcheck(nll, inputs)
    # padding emissions get no gradient
    e = emissions.clone().requires_grad_()
    crf(e, tags, mask).sum().backward()
    assert e.grad is not None and bool((e.grad[~mask] == 0).all())


# -- in the SLU models -------------------------------------------------------------------
@pytest.fixture(scope="module")
def atis300() -> TaskSet:
    """300 ATIS training utterances, 100 validation and 100 test utterances."""
    ts = load("atis", n_train=300, seed=0)
    return ts.with_tasks(
        [replace(t, val_idx=t.val_idx[:100], test_idx=t.test_idx[:100]) for t in ts.tasks]
    )


def _check_crf_paths(model: JointSLU | FeedbackMTL, ts: TaskSet) -> None:
    """Every loss and prediction path of the slot task uses the CRF."""
    body = model.body if isinstance(model, FeedbackMTL) else model
    assert isinstance(body, JointSLU) and body.crf is not None
    slots = body.slot_task
    assert {"crf.transitions", "crf.start", "crf.end"} <= {
        n.removeprefix("body.") for n in model.task_parameter_names(slots)
    }
    x, y = ts.tasks[slots].arrays("val")
    out, pred = predict_task(model, x, slots)
    out_t, y_t = torch.as_tensor(out), torch.as_tensor(y)
    mask = y_t != PAD_TAG
    with torch.no_grad():
        crf_loss = body.crf.nll(out_t, y_t, mask) / mask.sum(1)
    masked = mask_class(out_t, body.unseen[slots])  # UNK is never predicted
    assert np.array_equal(pred, body.crf.decode(masked, torch.as_tensor(x) != 0).numpy())
    expected = float(crf_loss.mean())
    assert expected != pytest.approx(
        float(per_example_loss(out_t, y_t, "sequence_labeling").mean())
    )
    assert task_losses(model, ts, "val")["slots"] == pytest.approx(expected, rel=1e-5)
    assert evaluate(model, ts, "val")["slots"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert _task_loss(model, ts, slots, "val") == pytest.approx(expected, rel=1e-5)
    model.train()
    xb, yb = torch.as_tensor(x[:8]), torch.as_tensor(y[:8])
    torch.manual_seed(3)
    loss = model.loss(xb, yb, slots)
    torch.manual_seed(3)
    direct = body.crf.nll(model(xb, slots), yb, yb != PAD_TAG) / (yb != PAD_TAG).sum(1)
    torch.testing.assert_close(loss, direct)


@pytest.mark.parametrize("name", ["slu", "feedback"])
def test_crf_models_train_end_to_end(atis300: TaskSet, name: str) -> None:
    options = SMALL if name == "slu" else {"iterations": 1, "slu": SMALL}
    torch.manual_seed(0)
    model = build_model(name, atis300, options)
    assert isinstance(model, JointSLU | FeedbackMTL)
    before = task_losses(model, atis300, "train")["slots"]
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=32, patience=None, grad_clip=5.0, seed=0)
    train(model, atis300, cfg, progress=False)
    after = task_losses(model, atis300, "train")["slots"]
    assert after < 0.5 * before
    _check_crf_paths(model, atis300)
    # the transitions learned something (e.g. I-x after O is discouraged)
    body = model.body if isinstance(model, FeedbackMTL) else model
    assert body.crf is not None and float(body.crf.transitions.detach().abs().max()) > 0.05


def test_zero_scores_give_the_token_cross_entropy() -> None:
    """With zero transitions and start/end scores the CRF factorises over tokens: its NLL
    per real token is the softmax tagger's loss, and Viterbi is the per-token argmax."""
    crf = CRF(5)
    mask = torch.tensor(MASKS[:4], dtype=torch.bool)
    emissions = torch.randn(4, 4, 5)
    tags = torch.randint(0, 5, (4, 4)).masked_fill(~mask, PAD_TAG)
    per_token = crf.nll(emissions, tags, mask) / mask.sum(1)
    torch.testing.assert_close(per_token, per_example_loss(emissions, tags, "sequence_labeling"))
    assert torch.equal(crf.decode(emissions, mask)[mask], emissions.argmax(-1)[mask])
