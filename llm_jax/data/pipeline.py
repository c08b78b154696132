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

Training order: pieces are shuffled globally (grain's index shuffle, reshuffled every epoch), sliced by
`jax.process_index()` so every host reads different data, and the iterator's state (a few integers) is
saved with each checkpoint, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np
from grain import experimental as grain_exp

from llm_jax.data import sources

FEATURES = ("inputs", "targets", "segment_ids", "positions")


def pieces(docs: list[dict], chunk_chars: int) -> list[str]:
  return [p for doc in docs for p in sources.chunk(doc["text"], chunk_chars)]


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


def train_dataset(texts: list[str], tokenizer, *, seq_len: int, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite packed batches for this host: `batch_size` is the per-host batch."""
  ds = grain.MapDataset.source(texts).shuffle(seed=seed).repeat()
  ds = ds[process_index::process_count]
  ds = ds.map(_Tokenize(tokenizer)).filter(lambda x: len(x["inputs"]) > 0)
  return _pack(ds.to_iter_dataset(), seq_len).batch(batch_size, drop_remainder=True)


def eval_batches(texts: list[str], tokenizer, *, seq_len: int, batch_size: int, num_batches: int) -> list[dict]:
  """The first `num_batches` packed batches of the held-out texts, in a fixed order (same every eval)."""
  ds = grain.MapDataset.source(texts).map(_Tokenize(tokenizer)).filter(lambda x: len(x["inputs"]) > 0)
  it: Iterator[dict] = iter(_pack(ds.to_iter_dataset(), seq_len).batch(batch_size, drop_remainder=False))
  out = []
  for batch in it:
    rows = batch["inputs"].shape[0]
    if rows < batch_size:  # pad the last batch with empty rows (segment 0 is masked everywhere)
      batch = {k: np.pad(v, ((0, batch_size - rows), (0, 0))) for k, v in batch.items()}
    out.append(batch)
    if len(out) == num_batches:
      break
  if not out:
    raise ValueError("the validation split is empty: raise data.val_fraction or add documents")
  return out
