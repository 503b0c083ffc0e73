"""Joint spoken-language-understanding model: intent classification and slot filling on
one BiLSTM encoder (the static, ``K = 0`` base of feedback MTL).

:class:`SLUModel` holds what every SLU base shares (embeddings, character CNN, BiLSTM,
shared dropout masks, CRF, unseen-class masking, metrics, device handling);
:class:`JointSLU` (``slu``) adds the heads below, and
:class:`taskrel.models.slu_stack.StackSLU` (``slu-stack``) its Stack-Propagation decoders.

For a batch of ``b`` utterances padded with token id 0, trimmed to the longest one
(``l`` tokens), with ``E`` = ``embedding_dim + char_filters``, ``h`` = ``hidden`` per
direction and ``D`` = ``decoder_hidden``::

    e   = Dropout([Embedding(w) ; CharCNN(x)])           (b, l, E)   point "embedding"
    H   = Dropout(BiLSTM(e))                              (b, l, 2h)  point "encoder"
          (with layers > 1: Dropout between the stacked BiLSTM layers too)
    intent: a = softmax over real tokens of v^T tanh(W_a H_l + c_a)
            u = sum_l a_l H_l                             (b, 2h)
            d = Dropout(ReLU(W_d u + c_d))                (b, D)      point "decoder"
            logits = W_o d + c_o                          (b, C)
    slots:  d_l = Dropout(ReLU(W_s H_l + c_s))            (b, l, D)   point "decoder"
            logits_l = W_t d_l + c_t                      (b, L, S)   (padded back to L)

The slot output is always ``logits`` ``(b, L, S)``. With ``crf`` (the default) they are the
emission scores of a linear-chain CRF (:class:`taskrel.models.crf.CRF`; its transition,
start and end scores belong to the slot task): the slot loss is the CRF negative
log-likelihood of the gold tag sequence divided by the utterance's number of real tokens
(nats per token, the scale of the softmax loss), and the prediction is the Viterbi sequence
(:meth:`SLUModel.output_loss`, :meth:`SLUModel.output_predictions`). With ``crf=False`` the
slot loss is the token-averaged cross-entropy and the prediction the per-token argmax.
Feedback MTL sends the softmax of the slot logits averaged over tokens either way.

Unseen labels: an intent or slot task whose labels end with ``UNK`` (the class of dev/test
labels unseen in training, :func:`taskrel.data.slu.unseen_class`) keeps that class in its
logits and losses (training never sees it as a target), but its score is ``-inf`` at
prediction (argmax, Viterbi, :func:`tag_sentence`), so it is never predicted.

Dropout draws its masks once per forward pass (:meth:`SLUModel.encode`, one mask per
example, token and unit at each place, :class:`SharedDropout`), and every later
:meth:`JointSLU.decode` of that pass reuses them: the unrolled iterations of feedback MTL
then differ only through the feedback.

Token ids ``x`` index the task set's token table (``meta['tokens']``, see
:mod:`taskrel.data.slu`); ``w`` is ``x`` with every id outside the training vocabulary
(``meta['vocab']``) replaced by ``<unk>`` (id 1), so only training words have embeddings.
The character CNN (Ma & Hovy, 2016; on with ``char_filters > 0``, e.g. 50) spells every token of the
table, out-of-vocabulary words included: characters (those of the training vocabulary; any
other is one ``<unk>`` character) embedded with width ``char_dim``, a width-3 convolution
with ``char_filters`` filters, max-pooled over the word's characters. In training, each
word of ``w`` is replaced by ``<unk>`` with probability ``word_dropout`` first; its spelling
stays.
The LSTM runs on packed sequences, so padding never reaches it. Feedback MTL adds a
vector ``(b, width)`` at an infusion point: to ``e`` or ``H`` at every token (the LSTM is
then re-run for ``e``), or to the decoder's pre-activation. Parameters: embedding and LSTM
are shared; attention and intent decoder belong to the intent task, the slot decoder (and
the CRF) to the slot task. The model adds no penalty (dropout regularises).

Devices: inputs and targets may live on any device; the model moves them to its
parameters' device, and :meth:`SLUModel.forward` and :meth:`SLUModel.output_predictions`
return on the input's device (so the CPU-side trainer and evaluation work unchanged with
a model moved to a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from taskrel.data.slu import gold_tag_names, unseen_class
from taskrel.data.taskset import PAD_TAG, TaskSet
from taskrel.errors import ConfigError, DataError
from taskrel.models.base import Batch, ModelConfig, MTLModel, TaskSpec
from taskrel.models.crf import CRF
from taskrel.models.feedback_parts import SharedDropout, masked_token_mean, token_distribution
from taskrel.training.metrics import predict_task, sequence_metrics

INFUSION_POINTS = ("embedding", "encoder", "decoder")


class JointSLUConfig(ModelConfig):
    embedding_dim: int = Field(128, ge=1, description="word embedding width E")
    hidden: int = Field(128, ge=1, description="LSTM units per direction h")
    layers: int = Field(1, ge=1, description="stacked BiLSTM layers")
    decoder_hidden: int = Field(128, ge=1, description="decoder hidden width D")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout on e, H and d")
    word_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="training: replace each word by <unk> (id 1) with "
        "this probability, so the <unk> embedding is learned for unseen words",
    )
    char_filters: int = Field(
        50,
        ge=0,
        description="character-CNN filters per token (0: no character features; the default "
        "50 measured better than none on ATIS and SNIPS, docs/bench/feedback.md)",
    )
    char_dim: int = Field(30, ge=1, description="character embedding width")
    crf: bool = Field(
        True,
        description="decode slots with a linear-chain CRF on the slot logits (loss: CRF "
        "negative log-likelihood per real token; predictions: Viterbi)",
    )


@dataclass
class SLUState:
    """Task-independent part of a forward pass.

    Attributes:
        emb: embeddings after dropout ``(b, l, E)``, ``l`` = longest utterance in the batch.
        enc: BiLSTM outputs after dropout ``(b, l, 2h)`` (zero at padding).
        mask: real tokens ``(b, l)`` bool.
        lengths: tokens per utterance ``(b,)`` int64 (at least 1).
        total_length: ``L``, the padded length of the input.
        dropout: the dropout masks of this pass, reused by every decode.
    """

    emb: Tensor
    enc: Tensor
    mask: Tensor
    lengths: Tensor
    total_length: int
    dropout: SharedDropout

    def full_mask(self) -> Tensor:
        """Real tokens ``(b, L)`` at the input's padded length."""
        return F.pad(self.mask, (0, self.total_length - self.mask.shape[1]))


def slu_task_indices(taskset: TaskSet) -> tuple[int, int]:
    """Positions ``(intent, slots)`` of an SLU task set's two tasks.

    Raises:
        ConfigError: the task set is not one classification and one sequence-labelling
            task over shared token inputs.
    """
    kinds = [t.kind for t in taskset.tasks]
    ok = (
        taskset.shared_inputs
        and sorted(kinds) == ["classification", "sequence_labeling"]
        and taskset.tasks[0].x.dtype.kind in "iu"
        and taskset.tasks[0].x.ndim == 2
    )
    if not ok:
        raise ConfigError(
            f"dataset {taskset.name!r} is not an SLU task set (expected an intent "
            f"classification and a slot labelling task on shared token ids; got {kinds})"
        )
    return kinds.index("classification"), kinds.index("sequence_labeling")


def is_slu_taskset(taskset: TaskSet) -> bool:
    """True for an intent + slots task set on shared token inputs."""
    try:
        slu_task_indices(taskset)
    except ConfigError:
        return False
    return True


class SLUModel(MTLModel):
    """What the SLU bases share (see the module docstring): word (and character)
    embeddings, the stacked BiLSTM on packed sequences with shared dropout masks, the CRF
    slot decoder, the masked ``UNK`` class, SLU metrics, and device transparency: inputs
    and targets may live on any device, computations run on the parameters' device, and
    :meth:`forward` and :meth:`output_predictions` return on the input's device.
    Subclasses add their decoders (:meth:`decode`, :meth:`output_mask`,
    :meth:`infusion_widths`) and may add to the encoder (:meth:`contextualize`)."""

    Config = JointSLUConfig
    config: JointSLUConfig
    intent_prefixes: ClassVar[tuple[str, ...]] = ()
    """Name prefixes of the intent task's parameters."""
    slot_prefixes: ClassVar[tuple[str, ...]] = ("slot_hidden.", "slot_out.", "crf.")

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        vocab_size: int,
        intent_task: int,
        slot_task: int,
        config: JointSLUConfig,
        spellings: CharTable | None = None,
        unseen: Mapping[int, int] | None = None,
    ) -> None:
        """``vocab_size`` words get an embedding; ``spellings`` (needed when
        ``config.char_filters > 0``) spells every token id the inputs may hold; ``unseen``
        maps a task position to the class id that is never predicted."""
        super().__init__(tasks)
        self.config = config
        self.intent_task, self.slot_task = intent_task, slot_task
        self.vocab_size = vocab_size
        self.unseen = dict(unseen or {})
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=0)
        self.chars: CharCNN | None = None
        if config.char_filters > 0:
            if spellings is None:
                raise ConfigError(f"{self.name}: char_filters > 0 needs the tokens' spellings")
            self.chars = CharCNN(spellings, config.char_dim, config.char_filters)
        # one BiLSTM per layer, so that the dropout between layers is ours (shared masks)
        self.lstm = nn.LSTM(
            config.embedding_dim + config.char_filters,
            config.hidden,
            batch_first=True,
            bidirectional=True,
        )
        self.lstm_upper = nn.ModuleList(
            nn.LSTM(2 * config.hidden, config.hidden, batch_first=True, bidirectional=True)
            for _ in range(config.layers - 1)
        )
        self.crf = CRF(tasks[slot_task].n_outputs) if config.crf else None

    @classmethod
    def build(cls, taskset: TaskSet, config: JointSLUConfig) -> SLUModel:
        intent, slots = slu_task_indices(taskset)
        x = taskset.tasks[0].x
        vocab = taskset.meta.get("vocab")
        vocab_size = len(vocab) if vocab else int(x.max()) + 1 if x.size else 2
        spellings = None
        if config.char_filters > 0:
            tokens = taskset.meta.get("tokens") or vocab
            if not tokens or len(tokens) <= int(x.max()):
                raise ConfigError(
                    f"dataset {taskset.name!r}: model.char_filters > 0 needs meta['tokens'] "
                    "(the spelling of every token id); set model.char_filters=0 otherwise"
                )
            spellings = CharTable.build(tokens, vocab_size)
        classes = [unseen_class(task.labels) for task in taskset.tasks]
        unseen = {t: c for t, c in enumerate(classes) if c is not None}
        specs = TaskSpec.from_taskset(taskset)
        return cls(specs, vocab_size, intent, slots, config, spellings, unseen)

    # -- the feedback-body interface (see taskrel.models.feedback_parts.FeedbackBody) ----
    def infusion_widths(self, task: int) -> dict[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(
        self, state: SLUState, task: int, additions: Mapping[str, Tensor]
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_mask(self, state: SLUState, task: int) -> Tensor | None:  # pragma: no cover
        raise NotImplementedError

    def encode(self, x: Tensor) -> SLUState:
        """Embed and encode token ids ``x`` ``(b, L)`` (0 = padding; moved to the model's
        device); in training, draw this pass's dropout masks."""
        x = x.to(self._device())
        mask_full = x != 0
        lengths = mask_full.sum(1).clamp(min=1)
        longest = int(lengths.max())
        x = x[:, :longest]
        words = x.masked_fill(x >= self.vocab_size, 1)
        if self.training and self.config.word_dropout > 0:
            drop = torch.rand(x.shape, device=x.device) < self.config.word_dropout
            words = words.masked_fill(drop & (words > 1), 1)
        emb = self.embedding(words)
        if self.chars is not None:
            emb = torch.cat([emb, self.chars(x)], dim=-1)
        dropout = SharedDropout(self.config.dropout, self.training)
        emb = dropout("embedding", emb)
        mask = mask_full[:, :longest]
        enc = self.contextualize(emb, lengths, mask, dropout)
        return SLUState(emb, enc, mask, lengths, mask_full.shape[1], dropout)

    def contextualize(
        self, emb: Tensor, lengths: Tensor, mask: Tensor, drop: SharedDropout
    ) -> Tensor:
        """The encoder on embeddings ``emb`` ``(b, l, E)``: here the stacked BiLSTM,
        ``(b, l, 2h)``, dropout after every layer."""
        out = emb
        for i, lstm in enumerate([self.lstm, *self.lstm_upper]):
            packed = pack_padded_sequence(
                out, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = pad_packed_sequence(
                lstm(packed)[0], batch_first=True, total_length=emb.shape[1]
            )
            out = drop(f"lstm{i}", out)
        return out

    def encoder_features(self, state: SLUState, additions: Mapping[str, Tensor]) -> Tensor:
        """The encoder output ``(b, l, width)`` with the ``embedding`` addition (the
        encoder re-run on ``e + a``) and the ``encoder`` addition (added to every token)."""
        enc = state.enc
        if "embedding" in additions:
            add = additions["embedding"].unsqueeze(1)
            enc = self.contextualize(state.emb + add, state.lengths, state.mask, state.dropout)
        if "encoder" in additions:
            enc = enc + additions["encoder"].unsqueeze(1)
        return enc

    # -- the MTLModel interface ---------------------------------------------------------
    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.decode(self.encode(x), task, {}).to(x.device)

    def objective(self, batches: Sequence[Batch]) -> tuple[Tensor, dict[str, float]]:
        """Both tasks' mean losses from ONE encoder pass over the shared utterances."""
        state = self.encode(batches[0].x)
        losses = [
            self.output_loss(self.decode(state, b.task, {}), b.y, b.task).mean() for b in batches
        ]
        data = torch.stack(losses).sum()
        return data, {"data_loss": float(data.detach()), "penalty": 0.0}

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        """Per-example loss ``(b,)`` (on the model's device): with the CRF, the slot task's
        is the CRF negative log-likelihood of the gold tags given the slot logits
        ``(b, L, S)`` divided by the utterance's number of real tokens (``y != PAD_TAG``;
        nats per token, the scale of the softmax loss); otherwise the default (token-mean
        cross-entropy)."""
        device = self._device()
        output, y = output.to(device), y.to(device)
        if self.crf is None or task != self.slot_task:
            return super().output_loss(output, y, task)
        mask = y != PAD_TAG
        return self.crf.nll(output, y, mask) / mask.sum(1).clamp(min=1).to(output.dtype)

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        """Intent ids ``(b,)``; slot tags ``(b, L)``: Viterbi over the real tokens
        (``x != 0``) with the CRF, else the per-token argmax. The task's ``UNK`` class
        (:attr:`unseen`) scores ``-inf``, so it is never predicted. On ``x``'s device."""
        device = self._device()
        output = mask_class(output.to(device), self.unseen.get(task))
        if self.crf is None or task != self.slot_task:
            return super().output_predictions(output, x, task).to(x.device)
        return self.crf.decode(output, x.to(device) != 0).to(x.device)

    def task_parameter_names(self, task: int) -> list[str]:
        prefixes = self.intent_prefixes if task == self.intent_task else self.slot_prefixes
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]

    def extra_metrics(self, taskset: TaskSet, split: str) -> dict[str, float]:
        return slu_scores(self, taskset, split)


class JointSLU(SLUModel):
    """Embeddings + BiLSTM + attention-pooled intent head + per-token slot head, optionally
    decoded by a CRF (``crf``: None without it; see the module docstring). ``unseen``
    maps a task to its ``UNK`` class, masked at prediction."""

    name = "slu"
    intent_prefixes = ("attention.", "intent_hidden.", "intent_out.")

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        vocab_size: int,
        intent_task: int,
        slot_task: int,
        config: JointSLUConfig,
        spellings: CharTable | None = None,
        unseen: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(tasks, vocab_size, intent_task, slot_task, config, spellings, unseen)
        width = 2 * config.hidden
        self.attention = nn.Sequential(
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False)
        )
        self.intent_hidden = nn.Linear(width, config.decoder_hidden)
        self.intent_out = nn.Linear(config.decoder_hidden, tasks[intent_task].n_outputs)
        self.slot_hidden = nn.Linear(width, config.decoder_hidden)
        self.slot_out = nn.Linear(config.decoder_hidden, tasks[slot_task].n_outputs)

    def infusion_widths(self, task: int) -> dict[str, int]:
        cfg = self.config
        return {
            "embedding": cfg.embedding_dim + cfg.char_filters,
            "encoder": 2 * cfg.hidden,
            "decoder": cfg.decoder_hidden,
        }

    def decode(self, state: SLUState, task: int, additions: Mapping[str, Tensor]) -> Tensor:
        """Logits of ``task`` (intent ``(b, C)``, slots ``(b, L, S)``) with optional
        additive features ``(b, width)`` at the infusion points."""
        enc = self.encoder_features(state, additions)
        dec_add = additions.get("decoder")
        if task == self.intent_task:
            scores = self.attention(enc).squeeze(-1).masked_fill(~state.mask, -torch.inf)
            pooled = torch.einsum("bl,bld->bd", torch.softmax(scores, dim=1), enc)
            pre = self.intent_hidden(pooled)
            pre = pre if dec_add is None else pre + dec_add
            return self.intent_out(state.dropout("intent", F.relu(pre)))
        pre = self.slot_hidden(enc)
        pre = pre if dec_add is None else pre + dec_add.unsqueeze(1)
        logits = self.slot_out(state.dropout("slots", F.relu(pre)))
        return F.pad(logits, (0, 0, 0, state.total_length - logits.shape[1]))

    def output_mask(self, state: SLUState, task: int) -> Tensor | None:
        """Real tokens ``(b, L)`` for the slot task, None for the intent task."""
        if task == self.intent_task:
            return None
        return state.full_mask()


# -- character features -------------------------------------------------------------------
@dataclass(frozen=True)
class CharTable:
    """Spellings of a token table as character ids.

    Attributes:
        ids: int64 ``(n_tokens, max_chars)``: character ids of each token (0 = padding,
            1 = a character outside ``alphabet``), truncated to ``max_chars``; the rows of
            ``<pad>`` and ``<unk>`` (ids 0 and 1) are all padding.
        alphabet: the characters that get an embedding (those of the training vocabulary),
            ids from 2 on.
    """

    ids: np.ndarray
    alphabet: tuple[str, ...]

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int, max_chars: int = 20) -> CharTable:
        """Spell ``tokens``; the alphabet comes from ``tokens[2:vocab_size]``."""
        alphabet = tuple(sorted({c for t in tokens[2:vocab_size] for c in t}))
        index = {c: i + 2 for i, c in enumerate(alphabet)}
        ids = np.zeros((len(tokens), max_chars), dtype=np.int64)
        for row, token in enumerate(tokens[2:], start=2):
            spelled = [index.get(c, 1) for c in token[:max_chars]]
            ids[row, : len(spelled)] = spelled
        return cls(ids, alphabet)


class CharCNN(nn.Module):
    """Word features from spelling: character embeddings, a width-3 convolution, max over
    the word's own characters (positions past its end are left out, so a word's features
    do not depend on the longest word of its batch; a word without characters gets 0).
    Input token ids ``(b, l)``; output ``(b, l, filters)``."""

    def __init__(self, table: CharTable, dim: int, filters: int) -> None:
        super().__init__()
        self.spelling: Tensor
        self.register_buffer("spelling", torch.as_tensor(table.ids))
        self.embedding = nn.Embedding(len(table.alphabet) + 2, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        chars = self.spelling[x]  # (b, l, max_chars)
        longest = max(int((chars != 0).sum(-1).max()), 1)
        batch, length, _ = chars.shape
        flat = chars[..., :longest].reshape(batch * length, longest)
        conv = self.conv(self.embedding(flat).transpose(1, 2))  # (b * l, filters, longest)
        real = (flat != 0).unsqueeze(1)  # spellings are left-aligned: real chars first
        features = conv.masked_fill(~real, -math.inf).amax(dim=2)  # (b * l, filters)
        features = features.masked_fill(~real.any(dim=2), 0.0)
        return features.reshape(batch, length, -1)


# -- metrics ------------------------------------------------------------------------------
def slu_metrics(
    intent_true: np.ndarray,
    intent_pred: np.ndarray,
    slots_true: np.ndarray,
    slots_pred: np.ndarray,
    slot_labels: Sequence[str],
    gold_tags: list[list[str]] | None = None,
) -> dict[str, float]:
    """Standard SLU scores (fractions in [0, 1]).

    Args:
        intent_true, intent_pred: intent ids ``(n,)``.
        slots_true: gold tag ids ``(n, L)`` padded with ``PAD_TAG``; ``slots_pred``:
            predicted tag ids ``(n, L)`` (padding positions ignored).
        slot_labels: tag names (BIO), indexed by tag id.
        gold_tags: gold tag strings of the real tokens of each row, for the span F1
            (default ``slot_labels[slots_true]``; :func:`taskrel.data.slu.gold_tag_names`
            gives unseen tags their original strings).

    Returns:
        ``intent_accuracy``, ``slot_f1`` (span-level CoNLL F1, seqeval: a span counts only
        if its type and both boundaries match), ``overall_accuracy`` (intent and every
        slot tag of the utterance correct).
    """
    intent_ok = intent_true == intent_pred
    slots_ok = ((slots_true == slots_pred) | (slots_true == PAD_TAG)).all(axis=1)
    seq = sequence_metrics(slots_true, slots_pred, slot_labels, gold_tags)
    return {
        "intent_accuracy": float(intent_ok.mean()),
        "slot_f1": seq["slot_f1"],
        "overall_accuracy": float((intent_ok & slots_ok).mean()),
    }


def slu_scores(model: MTLModel, taskset: TaskSet, split: str) -> dict[str, float]:
    """:func:`slu_metrics` of ``model`` on ``split`` of an SLU task set (empty split: {})."""
    intent, slots = slu_task_indices(taskset)
    x, y_intent = taskset.tasks[intent].arrays(split)  # type: ignore[arg-type]
    if len(x) == 0:
        return {}
    _, y_slots = taskset.tasks[slots].arrays(split)  # type: ignore[arg-type]
    _, p_intent = predict_task(model, x, intent)
    _, p_slots = predict_task(model, x, slots)
    gold = gold_tag_names(taskset, slots, split)  # type: ignore[arg-type]
    return slu_metrics(y_intent, p_intent, y_slots, p_slots, _names(taskset, slots), gold)


def mask_class(output: Tensor, cls: int | None) -> Tensor:
    """``output`` ``(..., C)`` with class ``cls`` scored ``-inf`` (unchanged for None)."""
    if cls is None:
        return output
    hit = torch.arange(output.shape[-1], device=output.device) == cls
    return output.masked_fill(hit, -torch.inf)


# -- tagging one sentence -----------------------------------------------------------------
def encode_sentence(sentence: str, vocab: Sequence[str]) -> Tensor:
    """Whitespace tokens of ``sentence`` as ids ``(1, n)``: the exact token, else its
    lower-case form, else ``<unk>`` (id 1).

    Raises:
        DataError: the sentence has no tokens.
    """
    tokens = sentence.split()
    if not tokens:
        raise DataError("the sentence to tag is empty")
    index = {w: i for i, w in enumerate(vocab) if i > 0}
    ids = [index.get(t, index.get(t.lower(), 1)) for t in tokens]
    return torch.tensor([ids], dtype=torch.long)


@dataclass
class TaggedSentence:
    """One tagged sentence: its tokens, the intent (name and probability) and one slot tag
    per token."""

    tokens: list[str]
    intent: str
    intent_probability: float
    slots: list[str]


@torch.no_grad()
def tag_sentence(model: MTLModel, taskset: TaskSet, sentence: str) -> TaggedSentence:
    """Intent and slot tags of one whitespace-tokenised sentence with a trained SLU model
    of ``taskset`` (whose ``meta['tokens']``, else ``meta['vocab']``, maps words to ids;
    a word in neither is ``<unk>``). The intent is the model's prediction
    (:meth:`MTLModel.predict`: the argmax, or a vote over tokens for token-level intent
    logits); its probability comes from :func:`intent_distribution`. The ``UNK`` intent
    and tag are never output."""
    intent, slots = slu_task_indices(taskset)
    vocab = taskset.meta.get("tokens") or taskset.meta.get("vocab")
    if vocab is None:
        raise DataError(f"dataset {taskset.name!r} has no vocabulary in its meta data")
    x = encode_sentence(sentence, vocab)
    model.eval()
    intent_names = _names(taskset, intent)
    logits = model(x, intent)
    best = int(model.output_predictions(logits, x, intent)[0])
    probs = intent_distribution(logits, unseen_class(intent_names))[0]
    tags = model.predict(x, slots)[0].tolist()
    tag_names = _names(taskset, slots)
    return TaggedSentence(
        sentence.split(), intent_names[best], float(probs[best]), [tag_names[t] for t in tags]
    )


def intent_distribution(logits: Tensor, unseen: int | None = None) -> Tensor:
    """Intent probabilities ``(b, C)`` with class ``unseen`` excluded: the softmax of
    utterance logits ``(b, C)``, or the mean over real tokens of the token softmaxes of
    token-level logits ``(b, L, C)`` (padding rows are all ``-inf``)."""
    logits = mask_class(logits, unseen)
    if logits.dim() == 2:
        return torch.softmax(logits, dim=-1)
    real = torch.isfinite(logits).any(-1)
    return masked_token_mean(token_distribution(logits), real)


def _names(taskset: TaskSet, task: int) -> tuple[str, ...]:
    t = taskset.tasks[task]
    return t.labels or tuple(str(i) for i in range(t.n_outputs))
