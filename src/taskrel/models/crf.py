"""Linear-chain conditional random field over tag sequences (a slot decoder).

For emission scores ``E`` ``(b, L, C)`` and the real positions ``t_1 < ... < t_n`` of an
example (its mask), a tag sequence ``y`` scores::

    s(y) = start[y_1] + sum_k E[t_k, y_k] + sum_{k>1} T[y_{k-1}, y_k] + end[y_n]

(``T[i, j]``: score of tag ``j`` right after tag ``i``; padding positions are skipped, so
the mask need not be a prefix). ``p(y) = exp(s(y)) / Z`` with
``log Z = logsumexp over all C^n sequences of s``, computed by the forward algorithm in log
space (:func:`_log_matmul_exp`); the negative log-likelihood ``log Z - s(y)`` is in nats.
An example with no real position has ``s = log Z = 0``. The loop runs over positions (up
to the batch's last real one) and is vectorised over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CRF(nn.Module):
    """Transition scores ``transitions`` ``(C, C)`` (from, to) and ``start`` / ``end``
    scores ``(C,)``, all initialised to 0 (then the CRF starts as per-token softmax)."""

    def __init__(self, n_tags: int) -> None:
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        return self.transitions.to(dtype), self.start.to(dtype), self.end.to(dtype)

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood (nats) of each example's tag sequence, shape ``(b,)``.

        Args:
            emissions: scores ``(b, L, C)``.
            tags: tag ids ``(b, L)`` (any value, e.g. ``PAD_TAG``, where ``mask`` is False).
            mask: real positions ``(b, L)`` bool.
        """
        mask = mask.bool()
        tags = tags.masked_fill(~mask, 0)
        trans, start, end = self._scores(emissions.dtype)
        b = emissions.shape[0]
        rows = torch.arange(b, device=emissions.device)
        alpha = emissions.new_zeros(b, emissions.shape[2])  # log-sum over prefixes, per tag
        score = emissions.new_zeros(b)  # s(y) of the given tags
        seen = torch.zeros(b, dtype=torch.bool, device=emissions.device)
        last = tags[:, 0]
        for t in range(_span(mask)):
            m, emit, cur = mask[:, t], emissions[:, t], tags[:, t]
            nxt = _log_matmul_exp(alpha, trans)
            alpha = torch.where(
                m.unsqueeze(1), torch.where(seen.unsqueeze(1), nxt, start) + emit, alpha
            )
            step = torch.where(seen, trans[last, cur], start[cur]) + emit[rows, cur]
            score = score + torch.where(m, step, torch.zeros_like(step))
            last = torch.where(m, cur, last)
            seen = seen | m
        log_z = torch.logsumexp(alpha + end, dim=1)
        return torch.where(seen, log_z - score - end[last], torch.zeros_like(log_z))

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """:meth:`nll`."""
        return self.nll(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Viterbi: the highest-scoring tag sequence, ids ``(b, L)`` int64 (positions where
        ``mask`` ``(b, L)`` is False hold an arbitrary tag; callers ignore them)."""
        mask = mask.bool()
        b, length, n_tags = emissions.shape
        trans, start, end = self._scores(emissions.dtype)
        trans_t = trans.t().contiguous()  # (to, from): reduce over the contiguous dim
        identity = torch.arange(n_tags, device=emissions.device).expand(b, n_tags)
        delta = emissions.new_zeros(b, n_tags)  # best prefix score ending in each tag
        seen = torch.zeros(b, dtype=torch.bool, device=emissions.device)
        back = []  # back[t][r, j]: tag before tag j at position t (identity if none)
        for t in range(_span(mask)):
            m, emit = mask[:, t].unsqueeze(1), emissions[:, t]
            best, arg = (delta.unsqueeze(1) + trans_t).max(dim=2)
            first = ~seen.unsqueeze(1)
            delta = torch.where(m, torch.where(first, start, best) + emit, delta)
            back.append(torch.where(m & ~first, arg, identity))
            seen = seen | m.squeeze(1)
        cur = (delta + end).argmax(dim=1)
        out = torch.zeros(b, length, dtype=torch.long, device=emissions.device)
        for t in range(len(back) - 1, -1, -1):
            out[:, t] = cur
            cur = back[t].gather(1, cur.unsqueeze(1)).squeeze(1)
        return out


def _span(mask: Tensor) -> int:
    """Positions up to and including the last real one in any row (trailing padding of
    the whole batch is skipped)."""
    real = mask.any(0).nonzero()
    return int(real.max()) + 1 if len(real) else 0


def _log_matmul_exp(alpha: Tensor, trans: Tensor) -> Tensor:
    """``logsumexp_i (alpha[:, i, None] + trans[i, :])`` ``(b, C)`` as a matrix product of
    exponentials shifted by their maxima, in float64 (no underflow unless scores differ by
    more than ~700 nats); ~30x faster than materialising ``(b, C, C)``."""
    a_max = alpha.max(dim=1, keepdim=True).values.detach()
    t_max = trans.max(dim=0, keepdim=True).values.detach()
    prod = torch.exp((alpha - a_max).double()) @ torch.exp((trans - t_max).double())
    return torch.log(prod).to(alpha.dtype) + a_max + t_max
