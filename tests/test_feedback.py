"""Output-level feedback MTL: gate, convergence loss, unrolling, detaching, read-out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskrel.data.taskset import PAD_TAG, Task, TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.models.base import Batch
from taskrel.models.feedback import FeedbackMLPBody, FeedbackMTL, feedback_relatedness
from taskrel.models.feedback_parts import GumbelGate, convergence_loss
from taskrel.models.slu import JointSLU
from taskrel.relatedness import RelateContext
from taskrel.training.trainer import TrainConfig

SMALL_SLU = {"embedding_dim": 8, "hidden": 6, "decoder_hidden": 5}


@pytest.fixture(scope="module")
def tiny_slu() -> TaskSet:
    """A hand-made SLU task set: 12 utterances of 2..5 tokens over a 10-word vocabulary,
    3 intents, 4 slot tags."""
    rng = np.random.default_rng(0)
    n, length = 12, 6
    x = np.zeros((n, length), dtype=np.int64)
    tags = np.full((n, length), PAD_TAG, dtype=np.int64)
    for r in range(n):
        k = int(rng.integers(2, 6))
        x[r, :k] = rng.integers(2, 10, size=k)
        tags[r, :k] = rng.integers(0, 4, size=k)
    split = {"train_idx": np.arange(8), "test_idx": np.arange(8, 12)}
    intent = Task("intent", "classification", x, np.arange(n) % 3, 3, **split)
    slots = Task(
        "slots", "sequence_labeling", x, tags, 4, labels=("B-a", "I-a", "B-b", "O"), **split
    )
    vocab = ["<pad>", "<unk>", *(f"w{i}" for i in range(8))]
    return TaskSet("tiny-slu", (intent, slots), shared_inputs=True, meta={"vocab": vocab})


def _batches(ts: TaskSet, rows: slice = slice(0, 8)) -> list[Batch]:
    return [
        Batch(t, torch.as_tensor(task.x[rows]), torch.as_tensor(task.y[rows]))
        for t, task in enumerate(ts.tasks)
    ]


# -- the gate -----------------------------------------------------------------------------
def test_gate_is_one_hot_forward_with_gradients_to_every_logit() -> None:
    torch.manual_seed(0)
    gate = GumbelGate(4)
    gate.tau = 0.7
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    chosen = set()
    for _ in range(30):
        g = gate()
        assert sorted(g.tolist()) == [0.0, 0.0, 0.0, 1.0]
        chosen.add(int(g.argmax()))
        gate.logits.grad = None
        (g * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        assert gate.logits.grad is not None and bool((gate.logits.grad != 0).all())
    assert len(chosen) > 1  # stochastic in training
    gate.eval()
    assert gate().tolist() == [0.0, 0.0, 0.0, 1.0]  # argmax of the logits in evaluation


# -- the convergence loss -----------------------------------------------------------------
def test_convergence_loss_zero_for_constant_outputs() -> None:
    p = torch.softmax(torch.randn(5, 3), dim=-1)
    assert torch.equal(convergence_loss([p, p.clone(), p.clone(), p.clone()], 0.5), torch.zeros(5))


def test_convergence_loss_of_oscillation_and_contraction() -> None:
    a = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    b = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    # a, b, a, b: every step has size d = 2 * 0.6^2 = 0.72 (row 0) or 0 (row 1)
    loss = convergence_loss([a, b, a, b], contraction=0.5)
    torch.testing.assert_close(loss, torch.tensor([2 * (0.72 - 0.5 * 0.72), 0.0]))
    # steps shrinking by 1/2 in L2 (1/4 in squared L2) pass a contraction of 0.5
    c = a + 0.5 * (b - a)
    assert torch.equal(convergence_loss([a, b, c], 0.5), torch.zeros(2))
    assert convergence_loss([a, b], 0.5).tolist() == [0.0, 0.0]  # K = 1: no trend


def test_squared_convergence_loss_sums_the_squared_steps() -> None:
    a = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    b = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    c = a + 0.5 * (b - a)  # [[0.5, 0.5], ...]: steps 0.72 then 0.18 (row 0)
    torch.testing.assert_close(
        convergence_loss([a, b, c], 0.5, form="squared"), torch.tensor([0.72 + 0.18, 0.0])
    )
    # unlike the hinge, it is non-zero for K = 1 and for contracting steps
    torch.testing.assert_close(
        convergence_loss([a, b], 0.5, form="squared"), torch.tensor([0.72, 0.0])
    )
    assert convergence_loss([a, b, c], 0.5).tolist() == [0.0, 0.0]
    # tokens: mean over real tokens; only the later iteration gets a gradient
    p0 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    p1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    both, first = torch.tensor([[True, True]]), torch.tensor([[True, False]])
    assert convergence_loss([p0, p1], 0.5, first, form="squared").tolist() == [0.0]
    loss = convergence_loss([p0, p1], 0.5, both, form="squared")
    assert loss.tolist() == [1.0]  # (0 + 2) / 2
    loss.sum().backward()
    assert p0.grad is None and p1.grad is not None
    torch.testing.assert_close(p1.grad, torch.tensor([[[0.0, 0.0], [-1.0, 1.0]]]))


def test_the_model_uses_the_chosen_convergence_loss(tiny_slu: TaskSet) -> None:
    logs = {}
    for form in ("hinge", "squared"):
        torch.manual_seed(0)
        options = {"iterations": 1, "infusion": "decoder", "convergence": form}
        model = build_model("feedback", tiny_slu, {**options, "slu": SMALL_SLU})
        torch.manual_seed(1)
        _, logs[form] = model.objective(_batches(tiny_slu))
    assert logs["hinge"]["convergence_loss"] == 0.0  # K = 1: no trend to penalise
    assert logs["squared"]["convergence_loss"] > 0.0
    assert logs["squared"]["data_loss"] == logs["hinge"]["data_loss"]  # same draws
    with pytest.raises(ConfigError, match="convergence"):
        build_model("feedback", tiny_slu, {"convergence": "cubic"})


def test_convergence_loss_masks_padding_and_detaches_the_past() -> None:
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    only_pad_moves = convergence_loss([a, b, a], 0.5, mask=torch.tensor([[True, False]]))
    assert only_pad_moves.tolist() == [0.0]
    p0, p1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    p2 = a.clone().requires_grad_()
    loss = convergence_loss([p0, p1, p2], 0.5, mask=torch.tensor([[True, True]]))
    assert loss.item() > 0
    loss.sum().backward()
    assert p0.grad is None and p1.grad is None and p2.grad is not None


# -- the unrolled model -------------------------------------------------------------------
@pytest.mark.parametrize("crf", [False, True])
def test_k0_equals_the_base_model(tiny_slu: TaskSet, crf: bool) -> None:
    torch.manual_seed(0)
    slu = {**SMALL_SLU, "crf": crf}
    base = JointSLU.from_taskset(tiny_slu, slu).eval()
    if base.crf is not None:  # non-zero transitions, so the CRF matters
        with torch.no_grad():
            for p in base.crf.parameters():
                p.normal_()
    feedback = build_model("feedback", tiny_slu, {"iterations": 0, "slu": slu}).eval()
    feedback.body.load_state_dict(base.state_dict())
    x = torch.as_tensor(tiny_slu.tasks[0].x)
    for t in (0, 1):
        assert torch.equal(feedback(x, t), base(x, t))
        assert torch.equal(feedback.predict(x, t), base.predict(x, t))
    y = torch.as_tensor(tiny_slu.tasks[1].y)
    assert torch.equal(feedback.loss(x, y, 1), base.loss(x, y, 1))
    if base.crf is not None:
        assert not torch.equal(base.predict(x, 1), base(x, 1).argmax(-1))  # Viterbi used
    feedback.train()
    base.train()
    torch.manual_seed(1)
    obj_fb, _ = feedback.objective(_batches(tiny_slu))
    torch.manual_seed(1)
    obj_base, _ = base.objective(_batches(tiny_slu))
    assert torch.equal(obj_fb, obj_base)  # same dropout draws, no extra terms at K = 0


def _zero_amplifiers(model: FeedbackMTL) -> None:
    with torch.no_grad():
        for amplifiers in model.amplifiers:
            for amp in amplifiers:
                amp[2].weight.zero_()
                amp[2].bias.zero_()


@pytest.mark.parametrize("infusion", ["embedding", "encoder", "decoder", "gate"])
def test_iterations_share_dropout_masks(tiny_slu: TaskSet, infusion: str) -> None:
    """With zero feedback every iteration equals iteration 0 in training mode: one dropout
    mask per example serves the whole unroll (fresh masks would move the outputs)."""
    torch.manual_seed(0)
    slu = {**SMALL_SLU, "layers": 2, "dropout": 0.5, "word_dropout": 0.2}
    model = build_model("feedback", tiny_slu, {"iterations": 3, "infusion": infusion, "slu": slu})
    assert isinstance(model, FeedbackMTL)
    _zero_amplifiers(model)
    x = torch.as_tensor(tiny_slu.tasks[0].x)
    outputs, _ = model.unroll(x)
    for k in range(1, 4):
        for t in (0, 1):
            assert torch.equal(outputs[k][t], outputs[0][t])
    # dropout is on: another pass draws other masks, and evaluation differs
    again = model.unroll(x)[0][0][0]
    assert not torch.allclose(again, outputs[0][0])
    assert not torch.allclose(model.eval()(x, 0), outputs[0][0])


def test_iterations_share_dropout_masks_in_the_mlp_body(synthetic_cls: TaskSet) -> None:
    torch.manual_seed(0)
    ts = synthetic_cls.select_tasks([0, 1])
    mlp = {"hidden": [8], "head_hidden": 6, "dropout": 0.5}
    model = build_model("feedback", ts, {"iterations": 2, "mlp": mlp})
    assert isinstance(model, FeedbackMTL)
    _zero_amplifiers(model)
    outputs, _ = model.unroll(torch.as_tensor(ts.tasks[0].x[:10]))
    for t in (0, 1):
        assert torch.equal(outputs[2][t], outputs[0][t])
        assert torch.equal(outputs[1][t], outputs[0][t])


def test_feedback_changes_outputs_unless_ablated(tiny_slu: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model(
        "feedback", tiny_slu, {"iterations": 2, "infusion": "decoder", "slu": SMALL_SLU}
    ).eval()
    assert isinstance(model, FeedbackMTL)
    x = torch.as_tensor(tiny_slu.tasks[0].x)
    base = [model.body.decode(model.body.encode(x), t, {}) for t in (0, 1)]
    for t in (0, 1):
        assert not torch.allclose(model(x, t), base[t])
    with model.ablated([(0, 1)]):  # intent -> slots off: slots back to the base model
        assert torch.equal(model(x, 1), base[1])
        assert not torch.allclose(model(x, 0), base[0])


@pytest.mark.parametrize("detach", [True, False])
def test_detached_feedback_stops_gradients_across_iterations(
    tiny_slu: TaskSet, detach: bool
) -> None:
    torch.manual_seed(0)
    model = build_model(
        "feedback",
        tiny_slu,
        {
            "iterations": 1,
            "infusion": "decoder",
            "edges": ["intent->slots"],
            "detach_feedback": detach,
            "slu": {**SMALL_SLU, "dropout": 0.0},
        },
    )
    x, y = (torch.as_tensor(a) for a in tiny_slu.tasks[1].arrays("train"))
    model(x, 1)[y != PAD_TAG].logsumexp(-1).sum().backward()  # final slot outputs only
    grad = model.body.intent_out.weight.grad
    # the intent head reaches the final slot outputs only through the fed-back distribution
    assert (grad is None or bool((grad == 0).all())) == detach


def test_gate_and_amplifiers_train_through_the_objective(tiny_slu: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model(
        "feedback", tiny_slu, {"iterations": 2, "gate_none": True, "slu": SMALL_SLU}
    )
    assert isinstance(model, FeedbackMTL)
    assert model.points == [["embedding", "encoder", "decoder"]] * 2
    loss, logs = model.objective(_batches(tiny_slu))
    loss.backward()
    assert set(logs) == {"data_loss", "intermediate_loss", "convergence_loss", "penalty"}
    for gate in model.gates:
        assert bool((gate.logits.grad != 0).any())
    for e in range(2):  # every infusion point's amplifier gets a gradient (straight-through)
        for amp in model.amplifiers[e]:
            assert amp[0].weight.grad is not None
    assert "gates.0.logits" in model.task_parameter_names(0)  # edge slots -> intent
    assert not any(n.startswith(("amplifiers", "gates")) for n in model.shared_parameters())
    model.on_step(0, 10)
    assert model.gates[0].tau == pytest.approx(1.0)
    model.on_step(9, 10)
    assert model.gates[0].tau == pytest.approx(0.1)


def test_generic_task_sets_use_the_mlp_body(synthetic_cls: TaskSet, synthetic_reg: TaskSet) -> None:
    model = build_model("feedback", synthetic_cls, {"mlp": {"hidden": [8], "head_hidden": 4}})
    assert isinstance(model, FeedbackMTL) and isinstance(model.body, FeedbackMLPBody)
    n = len(synthetic_cls)
    assert len(model.edges) == n * (n - 1) and model.points[0] == ["encoder", "decoder"]
    reg = build_model("feedback", synthetic_reg, {"iterations": 2})
    x = torch.as_tensor(synthetic_reg.tasks[0].x[:5])
    assert reg(x, 1).shape == (5,)
    loss, _ = reg.objective(_batches(synthetic_reg, slice(0, 5)))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="infusion point 'embedding'"):
        build_model("feedback", synthetic_cls, {"infusion": "embedding"})
    with pytest.raises(ConfigError, match="feedback edge"):
        build_model("feedback", synthetic_cls, {"edges": ["t0-c0->nope"]})


def _copy_task(n: int = 40) -> tuple[TaskSet, FeedbackMTL]:
    """Two 2-class tasks on shared inputs; the model's task 1 sees only task 0's fed-back
    distribution (its own head is zero) and its labels are task 0's predictions."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    split = {"train_idx": np.arange(n // 2), "test_idx": np.arange(n // 2, n)}
    y = np.zeros(n, dtype=np.int64)
    tasks = [Task(f"t{t}", "classification", x, y, 2, **split) for t in (0, 1)]
    ts = TaskSet("copy", tasks, shared_inputs=True)
    model = build_model(
        "feedback",
        ts,
        {
            "iterations": 1,
            "infusion": "decoder",
            "edges": ["t0->t1"],
            "amplifier_hidden": 2,
            "mlp": {"hidden": [], "head_hidden": 2, "activation": "none"},
        },
    )
    assert isinstance(model, FeedbackMTL)
    body = model.body
    with torch.no_grad():
        body.head_hidden[1].weight.zero_()
        body.head_hidden[1].bias.zero_()
        body.head_out[1].weight.copy_(torch.eye(2))
        body.head_out[1].bias.zero_()
        amp = model.amplifiers[0][0]
        amp[0].weight.copy_(4 * torch.eye(2))
        amp[0].bias.zero_()
        amp[2].weight.copy_(3 * torch.eye(2))
        amp[2].bias.zero_()
        pred0 = model(torch.as_tensor(x), 0).argmax(-1).numpy()
    tasks = [Task(f"t{t}", "classification", x, pred0, 2, **split) for t in (0, 1)]
    return TaskSet("copy", tasks, shared_inputs=True), model.eval()


def test_relatedness_is_the_loss_rise_when_an_edge_is_removed() -> None:
    ts, model = _copy_task()
    rel = feedback_relatedness(ts, RelateContext(), model=model)
    x = torch.as_tensor(ts.tasks[1].x[ts.tasks[1].test_idx])
    y = torch.as_tensor(ts.tasks[1].y[ts.tasks[1].test_idx])
    with torch.no_grad():
        p0 = torch.softmax(model(x, 0), dim=-1)
        logits1 = 3 * torch.tanh(4 * p0)  # amplifier -> identity decoder -> identity head
    full = torch.nn.functional.cross_entropy(logits1, y).item()
    assert rel.matrix[1, 0] == pytest.approx(math.log(2) - full, rel=1e-5)  # ablated: 0 logits
    assert rel.matrix[1, 0] > 0  # task 0's feedback helps task 1
    assert rel.matrix[0, 1] == 0 and rel.matrix[0, 0] == 0
    assert rel.meta["gates"][0]["chosen"] == "decoder"


def test_relatedness_trains_a_model_when_none_is_given(synthetic_cls: TaskSet) -> None:
    ts = synthetic_cls.select_tasks([0, 1, 3])
    ctx = RelateContext(
        model="feedback",
        model_config={"mlp": {"hidden": [8]}},
        train_config=TrainConfig(epochs=3, seed=0),
    )
    rel = feedback_relatedness(ts, ctx)
    assert rel.matrix.shape == (3, 3) and np.all(np.diag(rel.matrix) == 0)
    assert np.all(np.isfinite(rel.matrix)) and np.any(rel.matrix != 0)
    assert {g["chosen"] for g in rel.meta["gates"]} <= {"encoder", "decoder"}


# -- the convergence check in chunks --------------------------------------------------------
@pytest.mark.parametrize("name", ["slu", "feedback"])
def test_convergence_check_in_chunks_equals_the_full_batch(tiny_slu: TaskSet, name: str) -> None:
    """Intent and slots share their rows, so the check accumulates the gradients over
    chunks of rows (here 3 rows: chunks of 3, 3 and 2 of the 8 utterances), weighted by
    their share: the same objective, gradient norm and scale as one full batch."""
    from taskrel.training.convergence import _chunks, gradient_check

    slu = {**SMALL_SLU, "char_filters": 0}
    config = slu if name == "slu" else {"iterations": 2, "slu": slu}
    torch.manual_seed(0)
    model = build_model(name, tiny_slu, config).double()
    batches = _batches(tiny_slu)
    assert [len(c[0][0].x) for c in _chunks(batches, 3)] == [3, 3, 2]
    full = gradient_check(model, batches, 1e-3, chunk_rows=100)
    chunked = gradient_check(model, batches, 1e-3, chunk_rows=3)
    for field in ("grad_norm", "scale", "relative", "objective"):
        assert getattr(chunked, field) == pytest.approx(getattr(full, field), rel=1e-10)
    assert 0 < full.relative < math.inf
    model.row_mean_objective = False  # a model whose objective couples rows: one chunk
    assert gradient_check(model, batches, 1e-3, chunk_rows=3) == full
