"""SentencePiece tokenizer: training, loading, special tokens and per-token byte lengths.

Trained settings (and why):
  - byte fallback: any UTF-8 text encodes, nothing maps to <unk>, decode(encode(s)) == s;
  - identity normalization, no dummy prefix, whitespace kept: code indentation survives the round trip;
  - "\n" is a user-defined piece and runs of spaces may form pieces, so indentation costs few tokens;
  - digits split one per piece (arithmetic later sees digits, not arbitrary number chunks).

Special tokens are *control* pieces: `encode()` of user text never produces them, so text cannot inject a
role marker; code adds them by id. Ids 0-3 are unk, bos, eos, pad; the chat/tool controls follow.

    tok = tokenizer.train(texts, "workdir/tokenizer", vocab_size=4096)
    tok = tokenizer.load("workdir/tokenizer")
"""

from __future__ import annotations

import io
import os
import random
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

MODEL_FILE = "tokenizer.model"
UNK, BOS, EOS, PAD = "<|unk|>", "<|bos|>", "<|eos|>", "<|pad|>"
# Roles and tools for chat (SFT, RL); think for reasoning traces; reserved slots for later stages.
CONTROL_TOKENS = (
    "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>", "<|tool_call_start|>", "<|tool_call_end|>",
    "<|tool_output_start|>", "<|tool_output_end|>", "<|think_start|>", "<|think_end|>",
    "<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>",
)


class Tokenizer:
  """A loaded SentencePiece model with the project's special tokens."""

  def __init__(self, model_proto: bytes):
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
    self.special = {p: self.sp.piece_to_id(p) for p in (UNK, BOS, EOS, PAD) + CONTROL_TOKENS}
    missing = [p for p, i in self.special.items() if self.sp.id_to_piece(i) != p]
    if missing:
      raise ValueError(f"tokenizer model lacks special tokens {missing}; retrain it with llm_jax.tokenizer.train")

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def token_bytes(self) -> np.ndarray:
    """UTF-8 byte length of every token id; 0 for special tokens (they are not text).

    Bits per byte divides a sum of token losses by the bytes those tokens stand for, which makes models
    with different tokenizers comparable.
    """
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        continue
      out[i] = 1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return out

  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(self.model_proto)
    os.replace(tmp, path)  # a killed run never leaves half a tokenizer behind
    return path


def _sentences(texts: Iterable[str], max_chars: int, lines_per_sentence: int = 8) -> Iterable[str]:
  """SentencePiece trains on 'sentences'; we feed groups of lines so newlines are part of the data."""
  total = 0
  for text in texts:
    lines = text.split("\n")
    for i in range(0, len(lines), lines_per_sentence):
      piece = "\n".join(lines[i:i + lines_per_sentence]) + "\n"
      yield piece
      total += len(piece)
      if total >= max_chars:
        return


def train(texts: Sequence[str], directory: str | None = None, *, vocab_size: int = 4096,
          model_type: str = "bpe", max_chars: int = 3_000_000, seed: int = 0) -> Tokenizer:
  """Trains on a seeded sample of `texts` (about max_chars characters); saves to `directory` if given."""
  order = list(range(len(texts)))
  random.Random(seed).shuffle(order)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(_sentences((texts[i] for i in order), max_chars))),
      model_writer=model, model_type=model_type, vocab_size=vocab_size,
      byte_fallback=True, split_digits=True, normalization_rule_name="identity",
      add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
      split_by_whitespace=True, max_sentence_length=1 << 16, character_coverage=0.9995,
      unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
      control_symbols=list(CONTROL_TOKENS), user_defined_symbols=["\n"],
      num_threads=os.cpu_count() or 1, shuffle_input_sentence=False, minloglevel=2,
      hard_vocab_limit=True)
  tok = Tokenizer(model.getvalue())
  if directory is not None:
    tok.save(directory)
  return tok


def load(path: str) -> Tokenizer:
  """Loads a tokenizer from a directory holding tokenizer.model (e.g. workdir/tokenizer) or a .model file."""
  file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
  if not os.path.exists(file):
    raise FileNotFoundError(f"no tokenizer at {file!r}")
  with open(file, "rb") as f:
    return Tokenizer(f.read())
