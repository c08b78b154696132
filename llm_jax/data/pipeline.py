"""The grain input pipeline: pieces of text -> tokenize -> pack into rows of seq_len -> batch.

Packing keeps documents apart. Each piece becomes `[bos] + ids`, shifted into `inputs` / `targets` of equal
length, and grain's ConcatThenSplit packing lays pieces end to end into rows of exactly `seq_len` tokens
(no padding while data lasts) and emits, per row, `segment_ids` (1, 2, ... per piece, 0 for padding) and
`positions` (restarting at 0 in each piece). The model masks attention to its own segment and gives RoPE
the per-piece positions, so a row of three pieces trains exactly like three separate sequences: no token
ever attends to an unrelated document, and no target is predicted across a document boundary. That is
what the model meets at inference (one document, starting at BOS); BOS-separated packing without a mask
would instead teach it to read through unrelated text. A piece cut at the end of a row continues in the
next row as a new segment starting at position 0.

Training order, and why it does not depend on the number of hosts: the pieces are shuffled globally (grain's
index shuffle, reshuffled every epoch) into one endless sequence, and the global batch is defined as
`batch_size` independent row streams: row r of every global batch is the next row of packing the pieces
`shuffled[r::batch_size]`. A host builds only the streams of the rows its devices hold (`rows`, from
`sharding.process_rows`: [i*B/P, (i+1)*B/P) for process i of P) and stacks them into its part of the batch.
So 2 hosts x 4 devices train on exactly the rows of 1 host x 8 devices, every piece is tokenized by exactly
one host, and no host reads or tokenizes the others' data. (Slicing the pieces per host and packing each
slice, the obvious alternative, makes the batches a function of the host count.)

The iterator's state is each row stream's packing state (a few integers), keyed by global row number, and
saved with every checkpoint, so a resumed run sees exactly the batches it would have seen; because the keys
are global, the states that P hosts saved can be merged and restored onto any other host count
(`training.checkpoint` does that). One background thread builds batches ahead of the training loop (per-row
streams read synchronously: a thread pool per row would mean thousands of threads at large batch sizes).

Evaluation batches are small and fixed: every host builds the same global batches and keeps its own rows,
so each held-out row is evaluated once, whatever the host count.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import grain
import numpy as np
from grain import experimental as grain_exp

from llm_jax.data import sources

FEATURES = ("inputs", "targets", "segment_ids", "positions")
SFT_FEATURES = FEATURES + ("weights",)  # 1 where the target is trained (the assistant's tokens)


def pieces(docs: list[dict], chunk_chars: int) -> list[str]:
  return [p for doc in docs for p in sources.chunk(doc["text"], chunk_chars)]


def labelled_pieces(docs: list[dict], chunk_chars: int) -> dict[str, list[str]]:
  """pieces() per source label, for a weighted mixture."""
  out: dict[str, list[str]] = {}
  for doc in docs:
    out.setdefault(doc["source"], []).extend(sources.chunk(doc["text"], chunk_chars))
  return out


def check_mixture(texts: dict[str, list[str]], weights: dict[str, float]):
  """ValueError naming the labels that `weights` gives a weight to but that hold no training pieces."""
  missing = [k for k in weights if not texts.get(k)]
  if missing:
    raise ValueError(f"data.mixture names {missing}, which hold no training documents; the labels of "
                     f"data.source are {sorted(k for k in texts if texts[k])}")


def start_ids(tokenizer) -> list[int]:
  """What every document starts with: bos; tokenizers without one (e.g. GPT-2's) use eos as the separator."""
  start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
  if start is None:
    raise ValueError("the tokenizer names neither a bos nor an eos token (for a Hugging Face tokenizer.json, "
                     "add bos_token to its tokenizer_config.json)")
  return [start]


class _Tokenize(grain.transforms.Map):
  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.start = start_ids(tokenizer)

  def map(self, text: str) -> dict:
    ids = np.asarray(self.start + self.tokenizer.encode(text), np.int32)
    return {"inputs": ids[:-1], "targets": ids[1:]}


def _rename(row: dict) -> dict:
  # inputs_* and targets_* segment ids/positions are identical (same lengths); keep one copy.
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": row["inputs_segment_ids"], "positions": row["inputs_positions"]}


def _pack(ds: grain.IterDataset, seq_len: int) -> grain.IterDataset:
  packed = grain_exp.ConcatThenSplitIterDataset(ds, length_struct={"inputs": seq_len, "targets": seq_len})
  return packed.map(_rename)


def _split_rendered(example: tuple) -> dict:
  ids, mask = (np.asarray(x, np.int32) for x in example)
  return {"inputs": ids[:-1], "targets": ids[1:], "weights": mask[1:]}


def _pack_whole(ds: grain.IterDataset, seq_len: int, bins: int) -> grain.IterDataset:
  """First-fit packing of whole examples into rows of seq_len (padding, segment 0, fills the rest)."""
  packed = grain_exp.FirstFitPackIterDataset(ds, length_struct=dict.fromkeys(("inputs", "targets", "weights"), seq_len),
                                             num_packing_bins=bins, shuffle_bins=False)
  return packed.map(lambda row: {"inputs": row["inputs"], "targets": row["targets"], "weights": row["weights"],
                                 "segment_ids": row["inputs_segment_ids"], "positions": row["inputs_positions"]})


class _StackRows(grain.IterDataset):
  """Stacks one element from each row stream into a [rows, ...] batch (see the module docstring)."""

  def __init__(self, streams: dict[int, grain.IterDataset], batch_size: int, features: tuple[str, ...]):
    super().__init__(list(streams.values()))
    self._rows, self._batch_size, self._features = list(streams), batch_size, features

  def __iter__(self):
    return _StackRowsIterator([p.__iter__() for p in self.parents], self._rows, self._batch_size, self._features)


class _StackRowsIterator(grain.DatasetIterator):
  """State: {"batch_size": B, "rows": {"<global row>": that stream's state}}; rows of other hosts in a
  (merged) state are ignored, so a state saved with any host count restores here."""

  def __init__(self, parents: list[grain.DatasetIterator], rows: list[int], batch_size: int,
               features: tuple[str, ...]):
    super().__init__(parents)
    self._rows, self._batch_size, self._features = rows, batch_size, features

  def __next__(self) -> dict:
    out = [next(it) for it in self._parents]
    return {k: np.stack([row[k] for row in out]) for k in self._features}

  def get_state(self) -> dict:
    return {"batch_size": self._batch_size,
            "rows": {str(r): it.get_state() for r, it in zip(self._rows, self._parents)}}

  def set_state(self, state: dict):
    if not isinstance(state, dict) or "rows" not in state:
      raise ValueError("the data iterator state is not a row-stream state (saved by an older version of the "
                       "pipeline?): resume from a checkpoint of this version, or start a new workdir")
    if state.get("batch_size") != self._batch_size:
      raise ValueError(f"the data iterator state was saved with data.batch_size={state.get('batch_size')}, now "
                       f"{self._batch_size}: each row of the global batch is its own stream, so the batch size "
                       "cannot change on resume")
    missing = [r for r in self._rows if str(r) not in state["rows"]]
    if missing:
      raise ValueError(f"the data iterator state lacks rows {missing[:8]}{'...' if len(missing) > 8 else ''} "
                       f"of the {self._batch_size}-row global batch (holds {len(state['rows'])} rows)")
    for r, it in zip(self._rows, self._parents):
      it.set_state(state["rows"][str(r)])


def train_dataset(texts: list[str] | dict[str, list[str]], tokenizer, *, seq_len: int, batch_size: int, seed: int,
                  rows: Sequence[int] | None = None, prefetch: int = 2,
                  weights: dict[str, float] | None = None) -> grain.IterDataset:
  """Infinite packed batches of `rows` (default: all) of the `batch_size`-row global batch.

  Each element is a dict of [len(rows), seq_len] int32 arrays, row i being global row `rows[i]`.
  `prefetch` batches are built ahead in a background thread (0: on demand, in the caller's thread).
  With `texts` as {label: pieces} and `weights` {label: weight}, each label's pieces are shuffled and
  repeated on their own and grain's `MapDataset.mix` interleaves them in proportion to the weights (a label
  weighted twice as much is read twice as often, however many pieces it has).
  """
  tokenize = _Tokenize(tokenizer)
  tokenized = lambda ds: ds.map(tokenize).filter(lambda x: len(x["inputs"]) > 0)
  if isinstance(texts, dict):
    weights = weights or dict.fromkeys(texts, 1.0)
    check_mixture(texts, weights)
    labels = list(weights)
    parts = [grain.MapDataset.source(texts[k]).shuffle(seed=seed + i).repeat() for i, k in enumerate(labels)]
    shuffled = grain.MapDataset.mix(parts, [weights[k] for k in labels])
  else:
    shuffled = grain.MapDataset.source(texts).shuffle(seed=seed).repeat()
  return _row_streams(shuffled, tokenized, lambda ds: _pack(ds, seq_len), batch_size=batch_size, rows=rows,
                      prefetch=prefetch)


def sft_dataset(examples: list[tuple[list[int], list[int]]], *, seq_len: int, batch_size: int, seed: int,
                rows: Sequence[int] | None = None, prefetch: int = 2, bins: int = 8) -> grain.IterDataset:
  """Like train_dataset, for rendered conversations: (ids, loss mask) pairs of at most seq_len + 1 tokens
  (llm_jax/data/chat.py), with a `weights` feature (the mask of each target).

  Conversations are packed whole (grain's first-fit packing over `bins` rows; the rest of a row is padding,
  segment 0), never split across rows: a conversation's second half without its first would train the
  assistant to answer questions it cannot see.
  """
  too_long = [i for i, (ids, _) in enumerate(examples) if len(ids) > seq_len + 1]
  if too_long:
    raise ValueError(f"{len(too_long)} examples exceed seq_len + 1 = {seq_len + 1} tokens (first: #{too_long[0]}); "
                     "render them with max_tokens=seq_len + 1")

  return _row_streams(grain.MapDataset.source(examples).shuffle(seed=seed).repeat(), lambda ds: ds.map(_split_rendered),
                      lambda ds: _pack_whole(ds, seq_len, bins), batch_size=batch_size,
                      rows=rows, prefetch=prefetch, features=SFT_FEATURES)


def _row_streams(shuffled: grain.MapDataset, encode, pack, *, batch_size: int, rows: Sequence[int] | None,
                 prefetch: int, features: tuple[str, ...] = FEATURES) -> grain.IterDataset:
  """The global batch as `batch_size` row streams (module docstring): row r packs shuffled[r::batch_size].

  `shuffled` is the endless, shuffled sequence of source items; `encode` maps a MapDataset of them to one of
  {"inputs", "targets", ...} arrays; `pack` turns its iterator into rows of `features`.
  """
  rows = list(range(batch_size) if rows is None else rows)
  if not rows or any(not 0 <= r < batch_size for r in rows) or len(set(rows)) != len(rows):
    raise ValueError(f"rows must be distinct row numbers in [0, batch_size={batch_size}), got {rows}")
  sync = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  streams = {r: pack(encode(shuffled[r::batch_size]).to_iter_dataset(sync)) for r in rows}
  ds = _StackRows(streams, batch_size, features)
  return grain_exp.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch) if prefetch else ds


def eval_batches(texts: list[str], tokenizer, *, seq_len: int, batch_size: int, num_batches: int,
                 rows: Sequence[int] | None = None) -> list[dict]:
  """`rows` (default: all) of the first `num_batches` global packed batches of the held-out texts.

  Fixed order, the same at every eval and on every host: the texts are packed end to end into
  `batch_size`-row global batches (the last one padded with empty rows, segment 0, which count nowhere);
  each host keeps only its rows.
  """
  ds = grain.MapDataset.source(texts).map(_Tokenize(tokenizer)).filter(lambda x: len(x["inputs"]) > 0)
  return _fixed_batches(_pack(ds.to_iter_dataset(), seq_len), batch_size, num_batches, rows)


def sft_eval_batches(examples: list[tuple[list[int], list[int]]], *, seq_len: int, batch_size: int,
                     num_batches: int, rows: Sequence[int] | None = None) -> list[dict]:
  """eval_batches for rendered conversations (sft_dataset's packing and features), in the given order."""
  ds = grain.MapDataset.source(examples).map(_split_rendered).to_iter_dataset()
  return _fixed_batches(_pack_whole(ds, seq_len, bins=1), batch_size, num_batches, rows)


def _fixed_batches(ds: grain.IterDataset, batch_size: int, num_batches: int, rows: Sequence[int] | None) -> list[dict]:
  it: Iterator[dict] = iter(ds.batch(batch_size, drop_remainder=False))
  keep = np.asarray(range(batch_size) if rows is None else rows)
  out = []
  for batch in it:
    n = batch["inputs"].shape[0]
    if n < batch_size:  # pad the last batch with empty rows (segment 0 is masked everywhere)
      batch = {k: np.pad(v, ((0, batch_size - n), (0, 0))) for k, v in batch.items()}
    out.append({k: v[keep] for k, v in batch.items()})
    if len(out) == num_batches:
      break
  if not out:
    raise ValueError("the validation split is empty: raise data.val_fraction or add documents")
  return out
