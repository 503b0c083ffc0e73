"""Building blocks of output-level feedback MTL (see ``docs/methods/feedback.md``).

- :class:`GumbelGate`: one categorical choice (e.g. the infusion point of a feedback edge)
  learned with straight-through Gumbel-Softmax samples;
- :class:`Amplifier`: the small network lifting a task's output to a hidden layer's width;
- :func:`feedback_signal`: what a task sends to the others (its output distribution,
  averaged over tokens for sequence labelling);
- :func:`output_distribution` and :func:`convergence_loss`: the trend penalty that makes
  the unrolled iterations settle;
- :class:`SharedDropout`: dropout masks drawn once per forward pass and reused by every
  iteration, so that iterations differ only through feedback;
- :class:`FeedbackBody`: what a base model must offer to be made dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taskrel.models.base import TaskSpec


class FeedbackBody(Protocol):
    """A base MTL model split into a shared encoding and per-task decoders with named
    infusion points (hidden layers that can receive an additive feedback feature)."""

    tasks: list[TaskSpec]

    def infusion_widths(self, task: int) -> dict[str, int]:
        """Width of each infusion point of ``task``, in order (e.g. ``{"encoder": 256}``)."""
        ...

    def encode(self, x: Tensor) -> Any:
        """The task-independent part of the forward pass (an opaque state). Any dropout
        of the pass draws its masks here or on first use, kept in the state
        (:class:`SharedDropout`)."""
        ...

    def decode(self, state: Any, task: int, additions: Mapping[str, Tensor]) -> Tensor:
        """Outputs of ``task`` with ``additions[point]`` ``(b, width)`` added at each named
        infusion point (broadcast over tokens for token-level layers). ``additions={}`` is
        the static base model. Repeated calls on one state reuse its dropout masks, so
        equal additions give equal outputs, in training too."""
        ...

    def output_mask(self, state: Any, task: int) -> Tensor | None:
        """``(b, L)`` bool mask of real tokens for sequence outputs; None otherwise."""
        ...

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        """Per-example loss ``(b,)`` of ``task``'s outputs against targets ``y``."""
        ...

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        """Hard predictions of ``task`` from its outputs on inputs ``x``."""
        ...

    def task_parameter_names(self, task: int) -> list[str]: ...

    def penalty(self) -> Tensor: ...


class GumbelGate(nn.Module):
    """A learned choice among ``n_options`` via straight-through Gumbel-Softmax.

    Training mode: ``forward()`` draws ``g = one_hot(argmax_o (logits_o + G_o))`` with
    Gumbel noise ``G``; the backward pass uses the gradient of the relaxed sample
    ``softmax((logits + G) / tau)`` (``F.gumbel_softmax(hard=True)``). Evaluation mode:
    the deterministic ``one_hot(argmax logits)``. Logits start at 0 (uniform choice);
    ``tau`` is set from outside (annealed by the owning model)."""

    def __init__(self, n_options: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_options))
        self.tau = 1.0

    def forward(self) -> Tensor:
        """One-hot weights ``(n_options,)``."""
        if self.training:
            return F.gumbel_softmax(self.logits, tau=self.tau, hard=True)
        return F.one_hot(self.logits.argmax(), len(self.logits)).to(self.logits.dtype)

    def probabilities(self) -> Tensor:
        """``softmax(logits)``, shape ``(n_options,)``: the learned preference."""
        return torch.softmax(self.logits.detach(), dim=0)


class SharedDropout:
    """Dropout with rate ``p`` whose masks are drawn once and then reused.

    ``drop(name, h)`` multiplies ``h`` by the mask called ``name``: on its first use a
    fresh inverted-dropout mask of ``h``'s shape (each entry ``0`` with probability ``p``,
    else ``1 / (1 - p)``), afterwards the same mask. One instance lives for one forward
    pass (one mask per example, token and unit at each named place), so every unrolled
    iteration of that pass sees the same masks. Identity when not ``active`` (evaluation)
    or when ``p == 0``."""

    def __init__(self, p: float, active: bool) -> None:
        self.p = p
        self.active = active and p > 0
        self.masks: dict[str, Tensor] = {}

    def __call__(self, name: str, h: Tensor) -> Tensor:
        if not self.active:
            return h
        mask = self.masks.get(name)
        if mask is None:
            keep = torch.rand(h.shape, device=h.device) >= self.p
            mask = keep.to(h.dtype) / (1.0 - self.p)
            self.masks[name] = mask
        elif mask.shape != h.shape:
            raise ValueError(
                f"dropout mask {name!r} has shape {tuple(mask.shape)}, not {tuple(h.shape)}"
            )
        return h * mask


class Amplifier(nn.Sequential):
    """``Linear(in, hidden) -> tanh -> Linear(hidden, out)``: maps a feedback signal
    ``(b, in)`` to an additive feature ``(b, out)`` of the receiving layer's width."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features))


def token_distribution(logits: Tensor) -> Tensor:
    """``softmax(logits)`` over the last axis, with rows that are all ``-inf`` (tokens
    that do not exist, e.g. padding of token-level intent logits) giving zeros instead of
    NaN (and no gradient)."""
    real = torch.isfinite(logits).any(-1, keepdim=True)
    return torch.softmax(logits.masked_fill(~real, 0.0), dim=-1) * real


def output_distribution(output: Tensor, kind: str) -> Tensor:
    """A task's output as a vector per example (or token): class probabilities
    ``(b, C)`` / ``(b, L, C)`` from logits (:func:`token_distribution`), or the prediction
    ``(b, 1)`` for regression."""
    if kind == "regression":
        return output.reshape(-1, 1)
    return token_distribution(output)


def masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: ``values`` ``(b, L, ...)``, ``mask`` ``(b, L)`` bool ->
    ``(b, ...)``."""
    m = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


def feedback_signal(output: Tensor, kind: str, mask: Tensor | None) -> Tensor:
    """What a task sends to the others, ``(b, C)``: its class distribution; for outputs
    with a token axis (sequence labelling, token-level intents) the distributions averaged
    over the real tokens of each utterance; for regression its prediction ``(b, 1)``."""
    dist = output_distribution(output, kind)
    if kind != "regression" and output.dim() == 3:
        if mask is None:
            raise ValueError("token-level outputs need a token mask")
        return masked_token_mean(dist, mask)
    return dist


Convergence = Literal["hinge", "squared"]


def convergence_loss(
    outputs: Sequence[Tensor],
    contraction: float,
    mask: Tensor | None = None,
    form: Convergence = "hinge",
) -> Tensor:
    """Penalty on iterations whose outputs fail to settle, per example ``(b,)``.

    ``outputs[k]`` is iteration ``k``'s output distribution, ``(b, C)`` or ``(b, L, C)``
    (then ``mask`` ``(b, L)`` selects real tokens). With the step size
    ``d_k = || p_k - sg(p_{k-1}) ||^2`` (squared L2 over ``C``, mean over real tokens),
    ``sg`` the stop-gradient and ``rho = contraction``:

    - ``hinge`` (our formulation): ``sum_{k=2..K} relu(d_k - rho * sg(d_{k-1}))``: each
      step must be shorter than ``rho`` times the previous one. Zero when ``K <= 1`` (no
      trend), for constant outputs and for fast enough contraction; positive for
      oscillation (``d_k = d_{k-1} > 0``).
    - ``squared``: ``sum_{k=1..K} d_k``, the squared differences of successive output
      distributions (``rho`` unused). Non-zero for ``K = 1`` too.

    Either way each iteration is pushed towards the previous one, never the reverse."""
    steps = []
    for prev, cur in zip(outputs[:-1], outputs[1:], strict=True):
        sq = (cur - prev.detach()).pow(2).sum(-1)
        if sq.dim() == 2:
            sq = masked_token_mean(sq, mask) if mask is not None else sq.mean(1)
        steps.append(sq)
    if form == "hinge":
        steps = [
            F.relu(d - contraction * d_prev.detach())
            for d_prev, d in zip(steps[:-1], steps[1:], strict=True)
        ]
    elif form != "squared":
        raise ValueError(f"convergence loss form must be 'hinge' or 'squared', got {form!r}")
    return torch.stack(steps).sum(0) if steps else outputs[0].new_zeros(outputs[0].shape[0])
