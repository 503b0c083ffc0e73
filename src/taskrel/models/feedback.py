"""Output-level feedback MTL: a static multi-task model made dynamic by feeding every
task's outputs back into the other tasks (the exact formulation, in our words, is in
``docs/methods/feedback.md``).

A *body* (the static base model) is unrolled for ``K = iterations`` steps. Iteration 0 is
the base model. At iteration ``k + 1`` each feedback edge ``j -> i`` turns task ``j``'s
iteration-``k`` output distribution ``s_j^k`` (:func:`feedback_signal`, detached by default)
into an additive feature of task ``i`` at one infusion point ``p`` (a hidden layer):

    h_{i,p}^{k+1} = h_{i,p} + sum_{j -> i} g_{j->i,p} * A_{j->i,p}(s_j^k)

``A`` is an :class:`Amplifier`; ``g_{j->i}`` is a one-hot choice of the infusion point
(optionally including "no feedback"), learned per edge by a straight-through
:class:`GumbelGate` whose temperature is annealed over training, or fixed by the config.
The model's output is iteration ``K``'s. Training minimises, per task ``t``,

    mean loss_t(y^K) + intermediate_weight * mean_{k<K} mean loss_t(y^k)
    + convergence_weight * mean convergence_loss(p_t^0..p_t^K)

plus the body's penalty (``convergence``: our contraction hinge or the squared step sizes,
:func:`convergence_loss`). Dropout masks are drawn once per unroll and shared by all its
iterations, so with zero feedback every iteration equals iteration 0, in training too.
The body is a component chosen by ``base``: :class:`taskrel.models.slu.JointSLU`
(``slu``, the default for SLU task sets: intent distribution -> every token of the slot
tagger, token-averaged slot distribution -> intent classifier),
:class:`taskrel.models.slu_stack.StackSLU` (``slu-stack``: the token-averaged intent and
slot distributions, fed the same way) or :class:`FeedbackMLPBody` (``mlp``: shared MLP
encoder + one MLP head per task, the default for flat-feature task sets); the feedback
code is the same for all. :func:`feedback_relatedness` reads out how much each edge's
feedback lowers its target's test loss.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models.base import (
    Batch,
    ModelConfig,
    MTLModel,
    TaskSpec,
    hard_predictions,
    per_example_loss,
)
from taskrel.models.feedback_parts import (
    Amplifier,
    Convergence,
    FeedbackBody,
    GumbelGate,
    SharedDropout,
    convergence_loss,
    feedback_signal,
    output_distribution,
)
from taskrel.models.schedules import exponential_anneal
from taskrel.models.sharing import Activation, _check_flat, l2_penalty, mlp
from taskrel.models.slu import JointSLU, JointSLUConfig, SLUModel, is_slu_taskset, slu_scores
from taskrel.models.slu_stack import StackSLU, StackSLUConfig
from taskrel.relatedness.result import Relatedness
from taskrel.training.metrics import predict_task

if TYPE_CHECKING:
    from taskrel.relatedness import RelateContext

NONE_OPTION = "none"
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "none": nn.Identity}


class FeedbackMLPConfig(ModelConfig):
    hidden: list[int] = Field(default_factory=lambda: [64], description="shared encoder widths")
    head_hidden: int = Field(32, ge=1, description="hidden width of each task's head")
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    l2: float = Field(1e-4, ge=0.0, description="L2 coefficient on all body parameters")


@dataclass
class MLPState:
    """Shared features ``z`` ``(b, H)`` of one forward pass and its dropout masks."""

    z: Tensor
    dropout: SharedDropout


class FeedbackMLPBody(nn.Module):
    """Shared MLP encoder ``z = phi(x)`` ``(b, H)``; head of task ``t``:
    ``out = V_t Dropout(act(W_t z + c_t)) + e_t`` with a hidden layer of width
    ``head_hidden`` (the head's dropout masks are drawn once per forward pass).

    Infusion points: ``encoder`` (added to ``z`` for this task only) and ``decoder``
    (added to the head's pre-activation). Penalty ``(l2/2) ||theta||^2``."""

    def __init__(
        self, tasks: Sequence[TaskSpec], in_features: int, config: FeedbackMLPConfig
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.config = config
        self.encoder = mlp(in_features, config.hidden, config.activation, config.dropout)
        self.width = config.hidden[-1] if config.hidden else in_features
        self.head_hidden = nn.ModuleList(nn.Linear(self.width, config.head_hidden) for _ in tasks)
        self.head_out = nn.ModuleList(
            nn.Linear(config.head_hidden, t.n_outputs if t.kind != "regression" else 1)
            for t in tasks
        )
        self.act = _ACTIVATIONS[config.activation]()

    def infusion_widths(self, task: int) -> dict[str, int]:
        return {"encoder": self.width, "decoder": self.config.head_hidden}

    def encode(self, x: Tensor) -> MLPState:
        """Shared features ``(b, H)`` of flat inputs ``(b, d)``."""
        return MLPState(self.encoder(x), SharedDropout(self.config.dropout, self.training))

    def decode(self, state: MLPState, task: int, additions: Mapping[str, Tensor]) -> Tensor:
        """Logits ``(b, C)`` or regression predictions ``(b,)`` of ``task``."""
        z = state.z + additions["encoder"] if "encoder" in additions else state.z
        pre = self.head_hidden[task](z)
        if "decoder" in additions:
            pre = pre + additions["decoder"]
        out = self.head_out[task](state.dropout(f"head{task}", self.act(pre)))
        return out.squeeze(-1) if self.tasks[task].kind == "regression" else out

    def output_mask(self, state: MLPState, task: int) -> Tensor | None:
        return None

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        return per_example_loss(output, y, self.tasks[task].kind)

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        return hard_predictions(output, self.tasks[task].kind)

    def task_parameter_names(self, task: int) -> list[str]:
        return [
            f"{m}.{task}.{n}"
            for m in ("head_hidden", "head_out")
            for n, _ in getattr(self, m)[task].named_parameters()
        ]

    def penalty(self) -> Tensor:
        return l2_penalty(self, self.config.l2)


class FeedbackConfig(ModelConfig):
    iterations: int = Field(2, ge=0, description="K unrolled feedback iterations; 0 = base")
    infusion: Literal["gate", "embedding", "encoder", "decoder"] = Field(
        "gate", description="'gate' learns each edge's infusion point; else a fixed point"
    )
    gate_points: list[Literal["embedding", "encoder", "decoder"]] | None = Field(
        None, min_length=1, description="the gate's candidates; null = every point of the body"
    )
    gate_none: bool = Field(False, description="the gate may also choose 'no feedback'")
    tau_start: float = Field(1.0, gt=0.0, description="Gumbel-Softmax temperature at step 0")
    tau_end: float = Field(0.1, gt=0.0, description="temperature at the last step")
    amplifier_hidden: int = Field(64, ge=1, description="hidden width of each amplifier")
    edges: list[str] | None = Field(
        None, description="feedback edges 'source->target' (task names); null = all pairs"
    )
    detach_feedback: bool = Field(
        True, description="stop gradients through the fed-back outputs (truncated unroll)"
    )
    intermediate_weight: float = Field(
        1.0, ge=0.0, description="weight of the mean loss of iterations 0..K-1"
    )
    convergence_weight: float = Field(0.1, ge=0.0, description="weight of the convergence loss")
    convergence: Convergence = Field(
        "hinge",
        description="'hinge': each step must shrink by 'contraction' (our formulation); "
        "'squared': sum of squared differences of successive output distributions",
    )
    contraction: float = Field(
        0.5, ge=0.0, description="rho of the hinge: each step must shrink by rho"
    )
    base: Literal["auto", "slu", "slu-stack", "mlp"] = Field(
        "auto",
        description="the body: 'slu' (joint BiLSTM), 'slu-stack' (Stack-Propagation) or "
        "'mlp'; 'auto' = 'slu' for SLU task sets, 'mlp' otherwise",
    )
    slu: JointSLUConfig = Field(
        default_factory=JointSLUConfig, description="body options of the 'slu' base"
    )
    stack: StackSLUConfig = Field(
        default_factory=StackSLUConfig, description="body options of the 'slu-stack' base"
    )
    mlp: FeedbackMLPConfig = Field(
        default_factory=FeedbackMLPConfig, description="body options for flat-feature task sets"
    )


class FeedbackMTL(MTLModel):
    """A body unrolled with output-level feedback (see the module docstring)."""

    Config = FeedbackConfig
    name = "feedback"

    def __init__(
        self,
        body: FeedbackBody,
        config: FeedbackConfig,
        edges: Sequence[tuple[int, int]],
        shared_inputs: bool,
    ) -> None:
        super().__init__(body.tasks)
        if not isinstance(body, nn.Module):
            raise TypeError("the feedback body must be a torch.nn.Module")
        self.body = body
        self.config = config
        self.shared_inputs = shared_inputs
        self.edges = [(int(j), int(i)) for j, i in edges]
        self.points: list[list[str]] = []  # infusion points of each edge, in gate order
        self.amplifiers = nn.ModuleList()
        self.gates = nn.ModuleList()
        for j, i in self.edges:
            widths = body.infusion_widths(i)
            candidates = widths if config.gate_points is None else config.gate_points
            points: list[str] = (
                [config.infusion]
                if config.infusion != "gate"
                else [p for p in widths if p in candidates]
            )
            unknown = sorted(
                ({config.infusion} | set(config.gate_points or ())) - {"gate"} - set(widths)
            )
            if unknown:
                raise ConfigError(
                    f"feedback: infusion point {unknown[0]!r} does not exist in "
                    f"this model; its points: {list(widths)}"
                )
            self.points.append(points)
            signal = self.tasks[j].n_outputs if self.tasks[j].kind != "regression" else 1
            self.amplifiers.append(
                nn.ModuleList(Amplifier(signal, config.amplifier_hidden, widths[p]) for p in points)
            )
            if config.infusion == "gate":
                self.gates.append(GumbelGate(len(points) + int(config.gate_none)))
        self._ablated: frozenset[tuple[int, int]] = frozenset()

    @classmethod
    def build(cls, taskset: TaskSet, config: FeedbackConfig) -> FeedbackMTL:
        """The body named by ``config.base`` (``auto``: the joint SLU body for an intent +
        slots task set, the MLP body otherwise) with its options."""
        base = config.base
        if base == "auto":
            base = "slu" if is_slu_taskset(taskset) else "mlp"
        body: FeedbackBody
        if base == "slu":
            body = JointSLU.build(taskset, config.slu)
        elif base == "slu-stack":
            body = StackSLU.build(taskset, config.stack)
        else:
            specs = TaskSpec.from_taskset(taskset)
            body = FeedbackMLPBody(specs, _check_flat(taskset, cls.name), config.mlp)
        return cls(body, config, _parse_edges(config.edges, taskset.names), taskset.shared_inputs)

    def _gate(self, edge: int) -> GumbelGate:
        return cast(GumbelGate, self.gates[edge])

    # -- unrolling ----------------------------------------------------------------------
    def gate_weights(self, edge: int) -> Tensor:
        """One-hot weights over ``points[edge]`` (+ ``none``): a straight-through Gumbel
        sample in training mode, the argmax in evaluation mode, ``[1]`` for a fixed point."""
        if self.config.infusion == "gate":
            return self._gate(edge)()
        return torch.ones(1, device=self._device())

    def unroll(self, x: Tensor) -> tuple[list[list[Tensor]], Any]:
        """All iterations' outputs ``outputs[k][t]`` (``k = 0..K``) on inputs ``x`` and the
        body's encoder state. One gate sample per call serves every iteration."""
        body = self.body
        state = body.encode(x)
        n_tasks = len(self.tasks)
        outputs = [[body.decode(state, t, {}) for t in range(n_tasks)]]
        if self.config.iterations == 0 or not self.edges:
            return outputs, state
        weights = [self.gate_weights(e) for e in range(len(self.edges))]
        masks = [body.output_mask(state, t) for t in range(n_tasks)]
        for _ in range(self.config.iterations):
            signals = [
                feedback_signal(o, self.tasks[t].kind, masks[t]) for t, o in enumerate(outputs[-1])
            ]
            if self.config.detach_feedback:
                signals = [s.detach() for s in signals]
            additions: list[dict[str, Tensor]] = [{} for _ in range(n_tasks)]
            for e, (j, i) in enumerate(self.edges):
                if (j, i) in self._ablated:
                    continue
                for p, point in enumerate(self.points[e]):
                    w = weights[e][p]
                    if not w.requires_grad and float(w) == 0.0:
                        continue  # an unchosen point in evaluation: nothing to add
                    feature = w * cast(nn.ModuleList, self.amplifiers[e])[p](signals[j])
                    prev = additions[i].get(point)
                    additions[i][point] = feature if prev is None else prev + feature
            outputs.append(
                [
                    body.decode(state, t, additions[t]) if additions[t] else outputs[0][t]
                    for t in range(n_tasks)
                ]
            )
        return outputs, state

    def forward(self, x: Tensor, task: int) -> Tensor:
        """Iteration ``K``'s output of ``task`` (on ``x``'s device)."""
        return self.unroll(x)[0][-1][task].to(x.device)

    def objective(self, batches: Sequence[Batch]) -> tuple[Tensor, dict[str, float]]:
        """Final-iteration losses + weighted intermediate losses + convergence loss +
        penalty; one unroll for all tasks when their rows are the same (shared inputs)."""
        groups = (
            [(batches[0].x, list(batches))] if self.shared_inputs else [(b.x, [b]) for b in batches]
        )
        final, inter, conv = [], [], []
        cfg = self.config
        for x, group in groups:
            outputs, state = self.unroll(x)
            for b in group:
                kind = self.tasks[b.task].kind
                losses = [self.output_loss(o[b.task], b.y, b.task).mean() for o in outputs]
                final.append(losses[-1])
                if len(losses) > 1:
                    inter.append(torch.stack(losses[:-1]).mean())
                dists = [output_distribution(o[b.task], kind) for o in outputs]
                mask = self.body.output_mask(state, b.task)
                conv.append(convergence_loss(dists, cfg.contraction, mask, cfg.convergence).mean())
        data = torch.stack(final).sum()
        aux = torch.stack(inter).sum() if inter else data.new_zeros(())
        cl = torch.stack(conv).sum()
        pen = self.body.penalty()
        total = data + cfg.intermediate_weight * aux + cfg.convergence_weight * cl + pen
        return total, {
            "data_loss": float(data.detach()),
            "intermediate_loss": float(aux.detach()),
            "convergence_loss": float(cl.detach()),
            "penalty": float(pen.detach()),
        }

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        """The body's loss of ``task``'s outputs (e.g. the CRF loss of a CRF slot decoder)."""
        return self.body.output_loss(output, y, task)

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        """The body's hard predictions from ``task``'s outputs (e.g. Viterbi tags)."""
        return self.body.output_predictions(output, x, task)

    def on_step(self, step: int, total_steps: int) -> None:
        """Anneal the gates' temperature from ``tau_start`` to ``tau_end`` (geometric)."""
        tau = exponential_anneal(step, total_steps, self.config.tau_start, self.config.tau_end)
        for e in range(len(self.gates)):
            self._gate(e).tau = tau

    @contextmanager
    def ablated(self, edges: Sequence[tuple[int, int]]) -> Iterator[None]:
        """Switch off the feedback of the given ``(source, target)`` edges inside the
        block (their amplified signal is not added)."""
        previous = self._ablated
        self._ablated = previous | {(int(j), int(i)) for j, i in edges}
        try:
            yield
        finally:
            self._ablated = previous

    # -- read-outs ----------------------------------------------------------------------
    def gate_report(self) -> list[dict[str, Any]]:
        """Per edge: source, target, the gate's options, their probabilities
        ``softmax(logits)`` and the chosen option (a fixed point has probability 1)."""
        report = []
        for e, (j, i) in enumerate(self.edges):
            options = list(self.points[e])
            if self.config.infusion == "gate":
                options += [NONE_OPTION] if self.config.gate_none else []
                probs = self._gate(e).probabilities().tolist()
            else:
                probs = [1.0]
            report.append(
                {
                    "source": self.tasks[j].name,
                    "target": self.tasks[i].name,
                    "options": options,
                    "probabilities": probs,
                    "chosen": options[int(np.argmax(probs))],
                }
            )
        return report

    def write_artifacts(self, run_dir: Path, taskset: TaskSet) -> list[Path]:
        """``feedback_gates.json``: :meth:`gate_report`."""
        path = Path(run_dir) / "feedback_gates.json"
        path.write_text(json.dumps(self.gate_report(), indent=2) + "\n")
        return [path]

    def extra_metrics(self, taskset: TaskSet, split: str) -> dict[str, float]:
        """SLU scores (intent accuracy, slot F1, sentence accuracy) for an SLU body."""
        return slu_scores(self, taskset, split) if isinstance(self.body, SLUModel) else {}

    def task_parameter_names(self, task: int) -> list[str]:
        """The body's parameters of ``task`` plus the amplifiers and gates of the edges
        into ``task``."""
        names = [f"body.{n}" for n in self.body.task_parameter_names(task)]
        for e, (_, i) in enumerate(self.edges):
            if i == task:
                names += [f"amplifiers.{e}.{n}" for n, _ in self.amplifiers[e].named_parameters()]
                if self.gates:
                    names += [f"gates.{e}.{n}" for n, _ in self.gates[e].named_parameters()]
        return names

    def penalty(self) -> Tensor:
        return self.body.penalty()


def _parse_edges(spec: Sequence[str] | None, names: Sequence[str]) -> list[tuple[int, int]]:
    """Edges ``(source, target)`` from ``'source->target'`` strings (all pairs if None)."""
    if spec is None:
        return [(j, i) for i in range(len(names)) for j in range(len(names)) if i != j]
    edges = []
    for item in spec:
        parts = [p.strip() for p in item.split("->")]
        if len(parts) != 2 or not all(p in names for p in parts) or parts[0] == parts[1]:
            raise ConfigError(
                f"feedback edge {item!r}: expected 'source->target' with two "
                f"different task names from {list(names)}"
            )
        edges.append((list(names).index(parts[0]), list(names).index(parts[1])))
    return edges


def feedback_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    model: FeedbackMTL | None = None,
    model_config: Mapping[str, Any] | None = None,
    split: str = "test",
) -> Relatedness:
    """Output-level relatedness from a trained feedback model.

    ``matrix[i, j] = L_i(split; edge j -> i switched off) - L_i(split; full model)``: the
    rise of task ``i``'s mean loss (nats for classification / sequence labelling, squared
    target units for regression) when task ``j``'s feedback is removed; positive = ``j``'s
    feedback helps ``i``. Diagonal and absent edges are 0. ``meta`` holds the gates
    (``gates``: options, probabilities, choice per edge), the full and ablated losses.

    Args:
        taskset: the data (its ``split`` must be non-empty for every task).
        ctx: ``ctx.train_config`` trains the model when none is given; ``ctx.model_config``
            is used as its config when ``ctx.model == "feedback"``.
        model: an already trained :class:`FeedbackMTL` for ``taskset``.
        model_config: feedback options (override ``ctx.model_config``).
        split: where losses are measured (``test`` or ``val``).
    """
    from taskrel.training.trainer import fit

    if model is None:
        options = dict(ctx.model_config) if ctx.model == "feedback" else {}
        options.update(model_config or {})
        trained = fit(taskset, "feedback", options, ctx.train_config, progress=ctx.progress).model
        if not isinstance(trained, FeedbackMTL):  # pragma: no cover - registry guarantees it
            raise TypeError("the 'feedback' model is not a FeedbackMTL")
        model = trained
    names = taskset.names
    full = {n: _task_loss(model, taskset, t, split) for t, n in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    ablated: dict[str, float] = {}
    for j, i in model.edges:
        with model.ablated([(j, i)]):
            loss = _task_loss(model, taskset, i, split)
        ablated[f"{names[j]}->{names[i]}"] = loss
        matrix[i, j] = loss - full[names[i]]
    return Relatedness(
        matrix,
        names,
        "feedback",
        meta={
            "gates": model.gate_report(),
            "full_loss": full,
            "ablated_loss": ablated,
            "split": split,
            "iterations": model.config.iterations,
            "units": "rise of the target task's mean loss",
        },
    )


def _task_loss(model: MTLModel, taskset: TaskSet, task: int, split: str) -> float:
    """Mean per-example loss of ``task`` on ``split``.

    Raises:
        ConfigError: the split of that task is empty."""
    x, y = taskset.tasks[task].arrays(split)  # type: ignore[arg-type]
    if len(x) == 0:
        raise ConfigError(
            f"feedback relatedness: task {taskset.names[task]!r} has no {split!r} examples"
        )
    out, _ = predict_task(model, x, task)
    with torch.no_grad():
        return float(model.output_loss(torch.as_tensor(out), torch.as_tensor(y), task).mean())
