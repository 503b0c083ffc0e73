"""Stack-Propagation SLU model (after Qin et al., EMNLP 2019): token-level intent
detection whose soft output guides slot filling, the utterance intent by a vote over
tokens. A second, structurally different base for feedback MTL (registry name
``slu-stack``).

For a batch of ``b`` utterances padded with token id 0, trimmed to the longest one
(``l`` tokens), with ``E`` = ``embedding_dim + char_filters``, ``h`` = ``hidden`` per
direction, ``a`` = ``attention_dim``, ``D`` = ``decoder_hidden`` and ``C`` intents::

    e   = Dropout([Embedding(w) ; CharCNN(x)])            (b, l, E)      point "embedding"
    H   = Dropout(BiLSTM(e))                               (b, l, 2h)
    A   = Dropout(softmax(Q K^T / sqrt(a)) V),  Q, K, V = e W_q, e W_k, e W_v  (b, l, a)
    G   = [H ; A]                                          (b, l, 2h + a) point "encoder"
    token intents: z_l = W_io Dropout(ReLU(W_i G_l + c_i)) + c_io   (b, l, C)  "decoder"
    slots: s_l = W_so Dropout(ReLU(W_s [G_l ; softmax(z_l)] + c_s)) + c_so   (b, l, S)
                                                                   "decoder" (pre-activation)

The self-attention attends over the real tokens only; the BiLSTM, the layers, the word
dropout, the character CNN and the shared dropout masks are those of
:class:`taskrel.models.slu.SLUModel`. The slot decoder reads the token's intent
distribution ``softmax(z_l)`` (not detached: the slot loss trains the intent decoder too,
the "stack propagation"), and the CRF (``crf``, default on) decodes the slot scores.

Outputs: the slot output is ``s`` ``(b, L, S)`` as in :class:`~taskrel.models.slu.JointSLU`.
The intent output is **token-level**, ``z`` ``(b, L, C)``, every logit ``-inf`` at
padding (a token that does not exist has no intent). Its loss is the mean over the
utterance's real tokens of the token cross-entropy against the utterance's intent (nats
per token; :meth:`StackSLU.output_loss`), its prediction a vote
(:func:`vote`): every real token votes for its argmax intent (``UNK`` excluded), the most
votes win, and ties go to the larger mean token probability. Feedback MTL sends the intent
distribution averaged over real tokens (the soft vote).

Differences from the paper, for speed on CPU: both decoders are position-wise layers on
the encoder (the paper's decoders are unidirectional LSTMs, the slot decoder also reading
the previous slot label), the CRF models the tag sequence instead, and the intent fed to
the slot decoder is the soft distribution (the paper feeds the token's intent output).
Parameters: embedding, BiLSTM and self-attention are shared; the intent decoder belongs to
the intent task, the slot decoder and CRF to the slot task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from taskrel.models.base import TaskSpec
from taskrel.models.feedback_parts import SharedDropout, masked_token_mean, token_distribution
from taskrel.models.slu import CharTable, JointSLUConfig, SLUModel, SLUState, mask_class


class StackSLUConfig(JointSLUConfig):
    attention_dim: int = Field(
        128, ge=1, description="width a of the self-attention next to the BiLSTM"
    )


class StackSLU(SLUModel):
    """Self-attentive BiLSTM encoder, token-level intent decoder, slot decoder fed with
    the token intent distributions (see the module docstring)."""

    Config = StackSLUConfig
    config: StackSLUConfig
    name = "slu-stack"
    intent_prefixes = ("intent_hidden.", "intent_out.")

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        vocab_size: int,
        intent_task: int,
        slot_task: int,
        config: StackSLUConfig,
        spellings: CharTable | None = None,
        unseen: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(tasks, vocab_size, intent_task, slot_task, config, spellings, unseen)
        emb, att = config.embedding_dim + config.char_filters, config.attention_dim
        self.query = nn.Linear(emb, att, bias=False)
        self.key = nn.Linear(emb, att, bias=False)
        self.value = nn.Linear(emb, att, bias=False)
        width = 2 * config.hidden + att
        n_intents = tasks[intent_task].n_outputs
        self.intent_hidden = nn.Linear(width, config.decoder_hidden)
        self.intent_out = nn.Linear(config.decoder_hidden, n_intents)
        self.slot_hidden = nn.Linear(width + n_intents, config.decoder_hidden)
        self.slot_out = nn.Linear(config.decoder_hidden, tasks[slot_task].n_outputs)

    def infusion_widths(self, task: int) -> dict[str, int]:
        cfg = self.config
        return {
            "embedding": cfg.embedding_dim + cfg.char_filters,
            "encoder": 2 * cfg.hidden + cfg.attention_dim,
            "decoder": cfg.decoder_hidden,
        }

    def contextualize(
        self, emb: Tensor, lengths: Tensor, mask: Tensor, drop: SharedDropout
    ) -> Tensor:
        """``G = [BiLSTM(e) ; SelfAttention(e)]`` ``(b, l, 2h + a)``."""
        lstm = super().contextualize(emb, lengths, mask, drop)
        q, k, v = self.query(emb), self.key(emb), self.value(emb)
        scores = torch.einsum("bia,bja->bij", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask.unsqueeze(1), -torch.inf)
        attended = torch.einsum("bij,bja->bia", torch.softmax(scores, dim=-1), v)
        return torch.cat([lstm, drop("attention", attended)], dim=-1)

    def decode(self, state: SLUState, task: int, additions: Mapping[str, Tensor]) -> Tensor:
        """Token intent logits ``(b, L, C)`` (``-inf`` at padding) or slot logits
        ``(b, L, S)``, with optional additive features ``(b, width)`` at the infusion
        points (for the slot task, ``embedding`` and ``encoder`` additions also reach the
        token intents it reads; ``decoder`` goes to the slot decoder only)."""
        enc = self.encoder_features(state, additions)
        dec_add = additions.get("decoder")
        intent_add = dec_add if task == self.intent_task else None
        intents = self._token_intents(enc, state.dropout, intent_add)
        pad = state.total_length - enc.shape[1]
        if task == self.intent_task:
            intents = intents.masked_fill(~state.mask.unsqueeze(-1), -torch.inf)
            return F.pad(intents, (0, 0, 0, pad), value=-torch.inf)
        pre = self.slot_hidden(torch.cat([enc, torch.softmax(intents, dim=-1)], dim=-1))
        pre = pre if dec_add is None else pre + dec_add.unsqueeze(1)
        logits = self.slot_out(state.dropout("slots", F.relu(pre)))
        return F.pad(logits, (0, 0, 0, pad))

    def _token_intents(self, enc: Tensor, drop: SharedDropout, add: Tensor | None) -> Tensor:
        """Intent logits of every token ``(b, l, C)`` from encoder features ``(b, l, G)``."""
        pre = self.intent_hidden(enc)
        pre = pre if add is None else pre + add.unsqueeze(1)
        return self.intent_out(drop("intent", F.relu(pre)))

    def output_mask(self, state: SLUState, task: int) -> Tensor:
        """Real tokens ``(b, L)``: both outputs are token-level."""
        return state.full_mask()

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        """Intent: the mean over real tokens (rows of ``output`` ``(b, L, C)`` that are not
        all ``-inf``) of the token cross-entropy against the intent ``y`` ``(b,)``, in nats
        per token; slots: as :class:`~taskrel.models.slu.SLUModel`."""
        if task != self.intent_task:
            return super().output_loss(output, y, task)
        device = self._device()
        output, y = output.to(device), y.to(device)
        real = torch.isfinite(output).any(-1)
        logp = torch.log_softmax(output.masked_fill(~real.unsqueeze(-1), 0.0), dim=-1)
        gold = y.reshape(-1, 1, 1).expand(-1, output.shape[1], 1)
        return masked_token_mean(-logp.gather(-1, gold).squeeze(-1), real)

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        """Intent ids ``(b,)`` by :func:`vote` over the real tokens (``x != 0``) with the
        ``UNK`` intent excluded; slot tags as :class:`~taskrel.models.slu.SLUModel`."""
        if task != self.intent_task:
            return super().output_predictions(output, x, task)
        device = self._device()
        logits = mask_class(output.to(device), self.unseen.get(task))
        return vote(logits, x.to(device) != 0).to(x.device)


def vote(logits: Tensor, mask: Tensor) -> Tensor:
    """Utterance intents ``(b,)`` from token intent logits ``(b, L, C)`` and real tokens
    ``mask`` ``(b, L)``: every real token votes for its argmax class; the class with the
    most votes wins, ties going to the larger mean token probability (``score = votes +
    mean_prob / 2``: a vote outweighs any probability difference)."""
    n_classes = logits.shape[-1]
    votes = F.one_hot(logits.argmax(-1), n_classes).to(logits.dtype)
    counts = (votes * mask.unsqueeze(-1).to(logits.dtype)).sum(1)
    soft = masked_token_mean(token_distribution(logits), mask)
    return (counts + soft / 2).argmax(-1)
