"""Spoken language understanding (ATIS, SNIPS or a user folder): intent detection and slot
filling as two tasks on the same utterances.

Folder layout
-------------
``train/``, ``dev/`` and ``test/``, each with three line-aligned UTF-8 files: ``seq.in``
(space-separated tokens), ``seq.out`` (one BIO slot tag per token) and ``label`` (the
intent). Optional ``intent_label.txt``/``slot_label.txt`` files are ignored: the label sets
come from the training split (below), so their ``UNK``/``PAD`` entries shift no ids.
Every line must be non-empty, the three files of a split must have the same number of lines
and each ``seq.out`` line must have as many tags as its ``seq.in`` line has tokens;
otherwise :class:`DataError` names the file and the 1-based line.

Encoding
--------
- Rows are the train utterances (file order), then dev (the ``val`` split), then test; both
  tasks share ``x`` and the index arrays.
- Vocabulary (``meta['vocab']``, ``V`` entries): id 0 ``<pad>``, id 1 ``<unk>``, then the
  distinct tokens of the (kept) *training* utterances, case kept as in the files, sorted.
  These are the words a model may learn an embedding for.
- Token table (``meta['tokens']``): the vocabulary followed by the sorted tokens that occur
  only in dev or test (the out-of-vocabulary words). ``x`` is int64 ``(n, L)`` ids into this
  table, padded with 0: an id ``>= V`` marks an out-of-vocabulary word, which a word-level
  model reads as ``<unk>`` while a character-level one can still spell it. No label of a
  dev or test utterance enters either list.
- Intents and slot tags: the *training* split's intent labels and slot tags, sorted, plus an
  extra class ``UNK`` appended last. A multi-intent label (``atis_flight#atis_airfare``) is
  one class when it occurs in training. A dev/test utterance whose intent never occurs in
  training (an unseen single label, or an unseen ``#``-joined combination) gets the
  ``UNK`` id, and so does a dev/test slot tag absent from training. No training example
  has ``UNK``; the SLU models mask it at prediction (:func:`unseen_class`), so it is never
  predicted and these examples count as errors in intent accuracy, slot F1 and sentence
  accuracy: the common published convention. ``meta['unseen_*']`` counts them, and
  ``meta['original_tags']`` maps each dev/test row holding an unseen slot tag to its
  original (truncated) tag strings, so that span F1 scores the real spans
  (:func:`gold_tag_names`). Slot targets are int64 ``(n, L)`` padded with
  ``PAD_TAG = -100``.

Facts on the bundled copies (all splits): ATIS 4478/500/893 utterances, 21 training intents
(4 of them ``#``-combinations) and 120 training slot tags; 1 dev and 5 test utterances have
an unseen intent (test: 3 unseen ``#``-combinations and 2 ``atis_day_name``); 1 dev and
6 test slot tags are unseen. SNIPS 13084/700/700, 7 intents, 72 slot tags, nothing unseen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from taskrel.data.files import bundled
from taskrel.data.taskset import PAD_TAG, SplitName, Task, TaskSet
from taskrel.errors import DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
UNK = "UNK"
BUILTIN = ("atis", "snips")
SPLIT_FOLDERS = (("train", "train"), ("dev", "val"), ("test", "test"))  # (folder, split)
FILES = ("seq.in", "seq.out", "label")


@dataclass(frozen=True)
class _Split:
    """The utterances of one split: tokens, tags and intent per utterance, and the 1-based
    line of each in the split's files."""

    tokens: list[list[str]]
    tags: list[list[str]]
    intents: list[str]
    lines: np.ndarray

    def subset(self, idx: np.ndarray) -> _Split:
        pick = idx.tolist()
        return _Split(
            tokens=[self.tokens[i] for i in pick],
            tags=[self.tags[i] for i in pick],
            intents=[self.intents[i] for i in pick],
            lines=self.lines[idx],
        )


def load_slu(
    name: Literal["atis", "snips"] = "atis",
    max_len: int | None = None,
    n_train: int | None = None,
    seed: int = 0,
) -> TaskSet:
    """Load the bundled ATIS or SNIPS data as an ``intent`` and a ``slots`` task.

    Args:
        name: ``atis`` or ``snips``.
        max_len: pad/truncate every utterance to this many tokens (a truncated utterance
            loses its last tokens and their tags); ``None`` pads to the longest utterance.
        n_train: keep a seeded random subset of this many training utterances (in file
            order); vocabulary and label sets then come from that subset.
        seed: seed of the ``n_train`` subset.

    Returns:
        See :func:`load_slu_folder`.
    """
    if name not in BUILTIN:
        raise DataError(
            f"unknown SLU data set {name!r}; built-in: {BUILTIN} "
            "(use load_slu_folder for your own folder)"
        )
    return _load(bundled("slu", name), name, max_len, n_train, seed)


def load_slu_folder(
    path: str | os.PathLike[str],
    max_len: int | None = None,
    n_train: int | None = None,
    seed: int = 0,
) -> TaskSet:
    """Load a user folder in the seq.in/seq.out/label layout (see module docstring).

    Args:
        path: the folder holding ``train/``, ``dev/`` and ``test/``.
        max_len, n_train, seed: as for :func:`load_slu`.

    Returns:
        A :class:`TaskSet` named after the folder, ``shared_inputs=True``, with tasks
        ``intent`` (classification; ``x`` int64 ``(n, L)`` token ids, ``y`` int64 ``(n,)``)
        and ``slots`` (sequence_labeling; the same ``x``, ``y`` int64 ``(n, L)`` tag ids
        padded with -100). ``meta`` holds ``vocab``, ``tokens``, ``intents``, ``slot_tags``
        (both ending with ``UNK``), ``max_len``, ``source_lines`` (split -> 1-based lines of
        its rows), ``original_tags`` (row -> tag strings of the rows with an unseen slot
        tag), and the counts ``unseen_{val,test}_{intents,tags}``,
        ``oov_{val,test}_tokens``, ``truncated``, with the unseen label names in
        ``unseen_labels``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such SLU folder (expected train/, dev/ and test/ "
            "with seq.in, seq.out and label)"
        )
    return _load(folder, folder.name, max_len, n_train, seed)


def _load(
    folder: Path | Traversable, name: str, max_len: int | None, n_train: int | None, seed: int
) -> TaskSet:
    if max_len is not None and max_len < 1:
        raise DataError(f"{name}: max_len must be >= 1 or None, got {max_len}")
    splits = {split: _read_split(folder, sub) for sub, split in SPLIT_FOLDERS}
    splits["train"] = _subsample(splits["train"], n_train, seed, name)
    vocab = _vocabulary(splits["train"])
    tokens = _token_table(vocab, [splits["val"], splits["test"]])
    intents = _label_set(name, "intent", splits["train"].intents)
    tags = _label_set(name, "slot tag", [t for seq in splits["train"].tags for t in seq])
    lengths = [len(u) for s in splits.values() for u in s.tokens]
    length = max_len or max(lengths)
    meta = {
        "vocab": vocab,
        "tokens": tokens,
        "intents": intents,
        "slot_tags": tags,
        "max_len": length,
        "truncated": sum(n > length for n in lengths),
        "source_lines": {k: s.lines for k, s in splits.items()},
        "original_tags": _original_tags(list(splits.values()), tags, length),
        **_unseen_counts(splits, vocab, intents, tags),
    }
    tasks = _tasks(list(splits.values()), tokens, intents, tags, length)
    return TaskSet(name=name, tasks=tasks, shared_inputs=True, meta=meta)


def _tasks(
    splits: list[_Split], tokens: list[str], intents: list[str], tags: list[str], length: int
) -> tuple[Task, Task]:
    """The ``intent`` and ``slots`` tasks over the rows of ``splits`` (train, val, test)."""
    bounds = np.cumsum([0, *(len(s.intents) for s in splits)])
    shared: dict[str, Any] = {
        "x": _encode_tokens([u for s in splits for u in s.tokens], tokens, length),
        "train_idx": np.arange(bounds[0], bounds[1]),
        "val_idx": np.arange(bounds[1], bounds[2]),
        "test_idx": np.arange(bounds[2], bounds[3]),
    }
    intent = Task(
        name="intent",
        kind="classification",
        y=_ids([i for s in splits for i in s.intents], intents),
        n_outputs=len(intents),
        labels=tuple(intents),
        **shared,
    )
    slots = Task(
        name="slots",
        kind="sequence_labeling",
        y=_encode_tags([t for s in splits for t in s.tags], tags, length),
        n_outputs=len(tags),
        labels=tuple(tags),
        **shared,
    )
    return intent, slots


# -- reading ------------------------------------------------------------------------------
def _read_split(folder: Path | Traversable, sub: str) -> _Split:
    files = {f: folder / sub / f for f in FILES}
    texts = {f: _read_lines(folder, sub, f) for f in FILES}
    counts = {f: len(lines) for f, lines in texts.items()}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{folder / sub}: seq.in, seq.out and label must have the same number "
            f"of lines, got {counts}"
        )
    tokens, tags, intents = [], [], []
    for line, (text, tag_text, intent) in enumerate(zip(*texts.values(), strict=True), 1):
        for f, content in zip(FILES, (text, tag_text, intent), strict=True):
            if not content.strip():
                raise DataError(f"{files[f]}: line {line} is empty")
        tokens.append(text.split())
        tags.append(tag_text.split())
        intents.append(intent.strip())
        if len(tokens[-1]) != len(tags[-1]):
            raise DataError(
                f"{files['seq.out']}: line {line} has {len(tags[-1])} tags but "
                f"{files['seq.in']} line {line} has {len(tokens[-1])} tokens"
            )
    return _Split(tokens, tags, intents, np.arange(1, len(intents) + 1))


def _read_lines(folder: Path | Traversable, sub: str, file: str) -> list[str]:
    resource = folder / sub / file
    if not resource.is_file():
        raise DataError(
            f"{folder}: missing {sub}/{file} (an SLU folder needs train/, dev/ "
            "and test/, each with seq.in, seq.out and label)"
        )
    try:
        text = resource.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{resource}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{resource}: the file is empty")
    return [line.rstrip("\r") for line in lines]


def _subsample(train: _Split, n_train: int | None, seed: int, name: str) -> _Split:
    if n_train is None or n_train >= len(train.intents):
        return train
    if n_train < 1:
        raise DataError(f"{name}: n_train must be >= 1 or None, got {n_train}")
    rng = np.random.default_rng(seed)
    return train.subset(np.sort(rng.choice(len(train.intents), size=n_train, replace=False)))


# -- encoding -----------------------------------------------------------------------------
def _vocabulary(train: _Split) -> list[str]:
    """``<pad>``, ``<unk>``, then the sorted distinct training tokens."""
    words = {t for seq in train.tokens for t in seq} - {PAD_TOKEN, UNK_TOKEN}
    return [PAD_TOKEN, UNK_TOKEN, *sorted(words)]


def _token_table(vocab: list[str], others: Sequence[_Split]) -> list[str]:
    """``vocab``, then the sorted distinct tokens of ``others`` that are not in it."""
    known = set(vocab)
    unseen = {t for split in others for seq in split.tokens for t in seq} - known
    return [*vocab, *sorted(unseen)]


def _label_set(name: str, what: str, train_labels: Sequence[str]) -> list[str]:
    """The sorted distinct training labels, then ``UNK``."""
    labels = sorted(set(train_labels))
    if UNK in labels:
        raise DataError(f"{name}: the training data uses the reserved {what} {UNK!r}")
    return [*labels, UNK]


def _ids(labels: Sequence[str], names: list[str]) -> np.ndarray:
    """int64 ids of ``labels`` in ``names``; unknown labels get the last id (``UNK``)."""
    index = {n: i for i, n in enumerate(names)}
    unk = len(names) - 1
    return np.array([index.get(label, unk) for label in labels], dtype=np.int64)


def _encode_tokens(utterances: list[list[str]], tokens: list[str], length: int) -> np.ndarray:
    """int64 ``(n, length)`` ids into ``tokens``, 0-padded; tokens not in it get id 1."""
    index = {t: i for i, t in enumerate(tokens)}
    index.pop(PAD_TOKEN)
    x = np.zeros((len(utterances), length), dtype=np.int64)
    for row, tokens in enumerate(utterances):
        ids = [index.get(t, 1) for t in tokens[:length]]
        x[row, : len(ids)] = ids
    return x


def _encode_tags(sequences: list[list[str]], tags: list[str], length: int) -> np.ndarray:
    """int64 ``(n, length)`` tag ids, padded with ``PAD_TAG``."""
    y = np.full((len(sequences), length), PAD_TAG, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids = _ids(seq[:length], tags)
        y[row, : len(ids)] = ids
    return y


def _original_tags(
    splits: Sequence[_Split], tags: list[str], length: int
) -> dict[int, tuple[str, ...]]:
    """Row -> its tag strings (truncated to ``length``), for every row (train, val, test
    in order) with a tag outside the training tags ``tags[:-1]``."""
    known = set(tags[:-1])
    rows = (tuple(seq[:length]) for s in splits for seq in s.tags)
    return {r: seq for r, seq in enumerate(rows) if not known.issuperset(seq)}


def _unseen_counts(
    splits: dict[str, _Split], vocab: list[str], intents: list[str], tags: list[str]
) -> dict[str, Any]:
    """Per dev/test split: utterances with an unseen intent, unseen slot-tag tokens and
    out-of-vocabulary tokens (counted before truncation), and the unseen label names."""
    known_words, known_intents, known_tags = set(vocab[2:]), set(intents[:-1]), set(tags[:-1])
    counts: dict[str, Any] = {"unseen_labels": {}}
    for split in ("val", "test"):
        s = splits[split]
        new_intents = [i for i in s.intents if i not in known_intents]
        new_tags = [t for seq in s.tags for t in seq if t not in known_tags]
        counts[f"unseen_{split}_intents"] = len(new_intents)
        counts[f"unseen_{split}_tags"] = len(new_tags)
        counts[f"oov_{split}_tokens"] = sum(t not in known_words for u in s.tokens for t in u)
        counts["unseen_labels"][split] = {
            "intents": sorted(set(new_intents)),
            "slot_tags": sorted(set(new_tags)),
        }
    return counts


# -- scoring ------------------------------------------------------------------------------
def unseen_class(labels: Sequence[str] | None) -> int | None:
    """Id of the ``UNK`` class, which stands for dev/test labels unseen in training (the
    last label, as the SLU loaders build label sets); None when ``labels`` has none.
    Models mask it at prediction, so no prediction of it is ever counted correct."""
    return len(labels) - 1 if labels and labels[-1] == UNK else None


def gold_tag_names(taskset: TaskSet, task: int, split: SplitName) -> list[list[str]]:
    """Gold tag strings of the real tokens of each row of ``split`` of a sequence-labelling
    task, for span scoring: ``labels[y]``, except in a row with an unseen tag (the ``UNK``
    id), which gets its original strings from ``meta['original_tags']``, so seqeval sees
    the real spans. An unseen tag whose string is not recorded (a task set rebuilt without
    its meta) is named ``B-UNK``: a one-token span of a type no model predicts."""
    t = taskset.tasks[task]
    labels = t.labels or tuple(str(i) for i in range(t.n_outputs))
    unk = unseen_class(labels)
    original: dict[int, tuple[str, ...]] = taskset.meta.get("original_tags", {})
    names = []
    for row in t.indices(split):
        ids = t.y[row][t.y[row] != PAD_TAG]
        recorded = original.get(int(row)) if unk is not None and unk in ids else None
        if recorded is not None and len(recorded) == len(ids):
            names.append(list(recorded))
        else:
            names.append([f"B-{UNK}" if i == unk else labels[i] for i in ids.tolist()])
    return names
