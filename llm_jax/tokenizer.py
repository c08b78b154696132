"""Tokenizers: our own SentencePiece BPE / unigram and byte / character baselines (trained here), plus loaders
for Llama-3 tiktoken and Hugging Face files.

`load(path)` picks the format from what it finds:
  - a directory holding baseline.json, or that file -> a byte- or character-level `CharTokenizer`;
  - a directory holding tokenizer.json, or a *.json file -> Hugging Face `tokenizers` (bos/eos/pad named by a
    tokenizer_config.json beside it, else None);
  - a tokenizer.model (or any file) whose first line reads `base64(token_bytes) rank` -> tiktoken BPE with the
    Llama 3.1 split pattern and its 256 special tokens (Meta's Llama 3 / 3.1 `tokenizer.model`);
  - otherwise a SentencePiece model, which must carry this project's special tokens (see below).
tiktoken and tokenizers are imported only when such a file is loaded (they come with the `[hf]` extra).

All of them share the `Tokenizer` interface: vocab_size, bos_id, eos_id, pad_id, special (name -> id),
encode, encode_batch, decode, token_bytes and save (writes the original files, so load(directory) gives the
same tokenizer back). `encode()` of user text never produces special ids, so text cannot inject a role
marker; code adds them by id. `decode()` drops special ids, as SentencePiece does for control pieces.
decode(encode(s)) == s for every valid string; a lone surrogate (a str that is not Unicode text, e.g. from
`errors="surrogateescape"`) has no UTF-8 form and is encoded as U+FFFD, the replacement character.

Our SentencePiece settings (and why):
  - byte fallback: any UTF-8 text encodes, nothing maps to <unk>, decode(encode(s)) == s;
  - identity normalization, no dummy prefix, whitespace kept: code indentation survives the round trip;
  - "\n" is a user-defined piece and runs of spaces may form pieces, so indentation costs few tokens;
  - digits split one per piece (arithmetic later sees digits, not arbitrary number chunks).
Its special tokens are *control* pieces: ids 0-3 are unk, bos, eos, pad; the chat/tool controls follow
(CONTROL_TOKENS order, ids 4-19). The baselines use the same 20 ids, then one id per byte (20-275), then (char)
one id per character of the vocabulary: ASCII is one byte, so one token, either way.

    tok = tokenizer.train(texts, "workdir/tokenizer", vocab_size=4096)   # model_type: bpe, unigram, byte, char
    tok = tokenizer.load("workdir/tokenizer")          # or a Llama 3 tokenizer.model, or an HF model directory

From the command line (documents: "stdlib", the built-in corpus, or a directory / file of .txt or .jsonl):

    python -m llm_jax.tokenizer train --source stdlib --out runs/tok --model-type unigram --vocab-size 8192
    python -m llm_jax.tokenizer encode runs/tok "How many r's are in strawberry?"   # the pieces, one per id
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import random
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

MODEL_FILE = "tokenizer.model"
BASELINE_FILE = "baseline.json"
MODEL_TYPES = ("bpe", "unigram", "byte", "char")
HF_FILE, HF_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
UNK, BOS, EOS, PAD = "<|unk|>", "<|bos|>", "<|eos|>", "<|pad|>"
# Roles and tools for chat (SFT, RL); think for reasoning traces; reserved slots for later stages.
CONTROL_TOKENS = (
    "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>", "<|tool_call_start|>", "<|tool_call_end|>",
    "<|tool_output_start|>", "<|tool_output_end|>", "<|think_start|>", "<|think_end|>",
    "<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>",
)

# Llama 3.1 pre-tokenizer split and special tokens (ids len(ranks) + i), as in meta-llama/llama-models
# models/llama3_1/api/tokenizer.py and transformers' DEFAULT_LLAMA_SPECIAL_TOKENS["3.1"] in
# models/llama/convert_llama_weights_to_hf.py. Llama 3.0 used other names for the same 256 slots.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
) + tuple(f"<|reserved_special_token_{i}|>" for i in range(3, 256 - 8))
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+$")
# tiktoken's regex overflows its stack on very long runs of (non-)whitespace (openai/tiktoken#195); like Meta's
# tokenizer we cut such runs every 25,000 characters. Lookbehinds anchor at run starts, so the search is linear.
_MAX_RUN = 25_000
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{_MAX_RUN},}}|(?<!\s)\s{{{_MAX_RUN},}}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# SentencePiece silently skips training sentences longer than this (bytes); we cut longer ones instead.
_MAX_SENTENCE_BYTES = 1 << 16


def _valid(text: str) -> str:
  """`text` with lone surrogates (no UTF-8 form) replaced by U+FFFD; valid text is returned as is."""
  return text if text.isascii() or not _SURROGATE.search(text) else _SURROGATE.sub("\ufffd", text)


class Tokenizer:
  """What every tokenizer offers; subclasses set the attributes and implement encode, decode, _token_length."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  special: dict[str, int]
  files: dict[str, bytes]  # file name -> original contents, written by save()

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def _token_length(self, i: int) -> int:
    """UTF-8 bytes token `i` stands for; 0 for special tokens."""
    raise NotImplementedError

  def token_bytes(self) -> np.ndarray:
    """UTF-8 byte length of every token id; 0 for special tokens (they are not text).

    Bits per byte divides a sum of token losses by the bytes those tokens stand for, which makes models
    with different tokenizers comparable.
    """
    return np.array([self._token_length(i) for i in range(self.vocab_size)], np.int32)

  def save(self, directory: str) -> str:
    """Writes the original file(s) into `directory`; returns the path of the main one."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, data in self.files.items():
      paths.append(os.path.join(directory, name))
      with open(paths[-1] + ".tmp", "wb") as f:
        f.write(data)
      os.replace(paths[-1] + ".tmp", paths[-1])  # a killed run never leaves half a tokenizer behind
    return paths[0]


class SentencePieceTokenizer(Tokenizer):
  """A loaded SentencePiece model with the project's special tokens."""

  def __init__(self, model_proto: bytes):
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.files = {MODEL_FILE: model_proto}
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
    self.special = {p: self.sp.piece_to_id(p) for p in (UNK, BOS, EOS, PAD) + CONTROL_TOKENS}
    missing = [p for p, i in self.special.items() if self.sp.id_to_piece(i) != p]
    if missing:
      raise ValueError(f"tokenizer model lacks special tokens {missing}; retrain it with llm_jax.tokenizer.train")

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(_valid(text))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode([_valid(t) for t in texts])

  def decode(self, ids: Iterable[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def _token_length(self, i: int) -> int:
    if self.sp.is_control(i) or self.sp.is_unknown(i):
      return 0
    return 1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))


class TiktokenTokenizer(Tokenizer):
  """A Llama-3-style tiktoken BPE file (`base64(token_bytes) rank` per line) with the Llama 3.1 specials."""

  def __init__(self, contents: bytes, name: str = "llama3"):
    import tiktoken  # pylint: disable=import-outside-toplevel
    # Parsed here, not with tiktoken.load.load_tiktoken_bpe: that caches files by *path* in a temp dir, so a
    # tokenizer rewritten at the same path would load stale. The format is the one it reads.
    lines = (line.split() for line in contents.splitlines() if line.strip())
    ranks = {base64.b64decode(token): int(rank) for token, rank in lines}
    self.files = {MODEL_FILE: contents}
    self.special = {t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)}
    self.enc = tiktoken.Encoding(name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=self.special)
    self.vocab_size = self.enc.n_vocab
    self.bos_id, self.eos_id = self.special["<|begin_of_text|>"], self.special["<|end_of_text|>"]
    self.pad_id = self.special["<|finetune_right_pad_id|>"]  # what Meta's Llama 3.1 code pads with
    self._special_ids = set(self.special.values())
    self._lengths = np.zeros(self.vocab_size, np.int32)
    for token, rank in ranks.items():
      self._lengths[rank] = len(token)

  def encode(self, text: str) -> list[int]:
    text = _valid(text)
    if len(text) <= _MAX_RUN or not _LONG_RUN.search(text):
      return self.enc.encode_ordinary(text)  # special-token text is encoded as plain text
    cuts = [c for m in _LONG_RUN.finditer(text) for c in range(m.start() + _MAX_RUN, m.end(), _MAX_RUN)]
    return [i for a, b in zip([0] + cuts, cuts + [len(text)]) for i in self.enc.encode_ordinary(text[a:b])]

  def decode(self, ids: Iterable[int]) -> str:
    return self.enc.decode([int(i) for i in ids if int(i) not in self._special_ids])

  def _token_length(self, i: int) -> int:
    return int(self._lengths[i])


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` tokenizer.json; bos/eos/pad named by tokenizer_config.json if given, else None."""

  def __init__(self, tokenizer_json: bytes, config_json: bytes | None = None):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.files = {HF_FILE: tokenizer_json, **({HF_CONFIG_FILE: config_json} if config_json is not None else {})}
    self.tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    self.tok.no_truncation()  # a padding or truncation setting saved in the file would alter encode()
    self.tok.no_padding()
    self.tok.encode_special_tokens = True  # special-token text in user input is encoded as plain text
    added = self.tok.get_added_tokens_decoder()
    self.special = {t.content: i for i, t in sorted(added.items()) if t.special}
    self._special_ids = set(self.special.values())
    self._added_text = {i: t.content for i, t in added.items() if not t.special}
    self.vocab_size = max(self.tok.get_vocab(with_added_tokens=True).values()) + 1
    config = json.loads(config_json) if config_json else {}

    def token_id(field: str) -> int | None:
      token = config.get(field)
      token = token.get("content") if isinstance(token, dict) else token
      return None if token is None else self.tok.token_to_id(token)

    self.bos_id, self.eos_id, self.pad_id = token_id("bos_token"), token_id("eos_token"), token_id("pad_token")
    spec = json.loads(tokenizer_json)
    self._byte_level = _has_type(spec.get("decoder"), "ByteLevel")  # GPT-2 / Llama 3 style
    self._byte_fallback = bool(spec.get("model", {}).get("byte_fallback"))  # SentencePiece-converted, <0xAB>

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(_valid(text), add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tok.encode_batch([_valid(t) for t in texts], add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def _token_length(self, i: int) -> int:
    if i in self._added_text:
      return len(self._added_text[i].encode("utf-8"))  # added tokens hold raw text, not byte-level characters
    piece = self.tok.id_to_token(i)
    if piece is None or i in self._special_ids:
      return 0
    if self._byte_level:
      return len(bytes(_BYTE_OF_CHAR[c] for c in piece))
    if self._byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
      return 1
    return len(piece.replace("\u2581", " ").encode("utf-8"))


class CharTokenizer(Tokenizer):
  """Baselines: one id per character of `chars`, and one per UTF-8 byte for every other character.

  `chars=""` is the byte-level tokenizer (276 ids: the 20 special ids, then bytes 0-255). A character-level
  vocabulary adds the most frequent non-ASCII characters of the training text (ASCII already takes one token
  as its byte), so every character costs one token except rare ones, which cost their 2-4 bytes.
  """

  def __init__(self, chars: str = ""):
    names = (UNK, BOS, EOS, PAD) + CONTROL_TOKENS
    if len(set(chars)) != len(chars) or any(c.isascii() or _SURROGATE.match(c) for c in chars):
      raise ValueError("chars must be distinct non-ASCII characters")
    self.kind = "char" if chars else "byte"
    self.chars = chars
    self.files = {BASELINE_FILE: json.dumps({"kind": self.kind, "chars": chars}, ensure_ascii=False).encode()}
    self.special = {name: i for i, name in enumerate(names)}
    self.bos_id, self.eos_id, self.pad_id = self.special[BOS], self.special[EOS], self.special[PAD]
    self._offset = len(names)
    self._pieces = [b""] * len(names) + [bytes([b]) for b in range(256)] + [c.encode("utf-8") for c in chars]
    self.vocab_size = len(self._pieces)
    self._char_id = {c: self._offset + 256 + i for i, c in enumerate(chars)}
    self._byte_id = np.arange(self._offset, self._offset + 256, dtype=np.int32)

  def encode(self, text: str) -> list[int]:
    text = _valid(text)
    if text.isascii() or not self._char_id:
      return self._byte_id[np.frombuffer(text.encode("utf-8"), np.uint8)].tolist()
    out, known, offset = [], self._char_id, self._offset
    for c in text:
      i = known.get(c)
      if i is not None:
        out.append(i)
      elif c < "\x80":
        out.append(offset + ord(c))
      else:
        out.extend(offset + b for b in c.encode("utf-8"))
    return out

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special ids and ids past the vocabulary (a model's unused padding rows) read as nothing."""
    pieces, n = self._pieces, self.vocab_size
    return b"".join(pieces[i] for i in map(int, ids) if 0 <= i < n).decode("utf-8", errors="replace")

  def _token_length(self, i: int) -> int:
    return len(self._pieces[i])


def train_chars(texts: Iterable[str], vocab_size: int) -> CharTokenizer:
  """The character-level baseline whose `vocab_size - 276` extra ids go to the commonest non-ASCII chars (fewer
  if the texts hold fewer)."""
  counts = collections.Counter(c for text in texts if not text.isascii() for c in _valid(text) if not c.isascii())
  return CharTokenizer("".join(c for c, _ in counts.most_common(max(0, vocab_size - 276))))


def _has_type(component: dict | None, name: str) -> bool:
  """Whether a tokenizer.json component (decoder, pre_tokenizer, possibly a Sequence) is or holds `name`."""
  if not component:
    return False
  return component.get("type") == name or any(_has_type(c, name) for c in component.get("decoders", []))


def _byte_of_char() -> dict[str, int]:
  """GPT-2's byte-level alphabet (bytes_to_unicode in openai/gpt-2 src/encoder.py), inverted: char -> byte.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes map to chr(256), chr(257), ... in order.
  """
  kept = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
  shifted = [b for b in range(256) if b not in kept]
  return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(shifted)}}


_BYTE_OF_CHAR = _byte_of_char()


def _sentences(texts: Iterable[str], max_chars: int, lines_per_sentence: int = 8,
               max_bytes: int = _MAX_SENTENCE_BYTES) -> Iterable[str]:
  """SentencePiece trains on 'sentences'; we feed groups of lines so newlines are part of the data.

  A group longer than `max_bytes` in UTF-8 (SentencePiece would skip it without a word) is cut into pieces
  of at most max_bytes // 4 characters, so every character of the sample is trained on.
  """
  total, step = 0, max_bytes // 4
  for text in texts:
    lines = _valid(text).split("\n")
    for i in range(0, len(lines), lines_per_sentence):
      group = "\n".join(lines[i:i + lines_per_sentence]) + "\n"
      for piece in [group] if len(group) <= step else (group[j:j + step] for j in range(0, len(group), step)):
        yield piece
        total += len(piece)
        if total >= max_chars:
          return


def train(texts: Iterable[str], directory: str | None = None, *, vocab_size: int = 4096,
          model_type: str = "bpe", max_chars: int = 3_000_000, seed: int = 0) -> Tokenizer:
  """Trains a `model_type` tokenizer (MODEL_TYPES) on about max_chars characters of `texts`; saves it to
  `directory` if given.

  A sequence of documents is sampled in a seeded order; any other iterable is read from the start, and only
  until max_chars characters are in (memory stays bounded by max_chars, whatever the corpus). "byte" needs no
  training and ignores vocab_size; "char" keeps vocab_size - 276 characters.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}: expected one of {MODEL_TYPES}")
  if model_type == "byte":
    texts = []  # nothing to learn
  if isinstance(texts, Sequence):
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    sample = list(_sentences((texts[i] for i in order), max_chars))
  else:
    sample = list(_sentences(texts, max_chars))
  if model_type in ("byte", "char"):
    tok = CharTokenizer() if model_type == "byte" else train_chars(sample, vocab_size)
    if directory is not None:
      tok.save(directory)
    return tok
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample),
        model_writer=model, model_type=model_type, vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_by_whitespace=True, max_sentence_length=_MAX_SENTENCE_BYTES, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        control_symbols=list(CONTROL_TOKENS), user_defined_symbols=["\n"],
        num_threads=os.cpu_count() or 1, shuffle_input_sentence=False, minloglevel=2,
        hard_vocab_limit=True)
  except RuntimeError as e:  # e.g. a vocab_size too small or too large for the text
    raise ValueError(f"SentencePiece could not train a {vocab_size}-token {model_type} tokenizer on "
                     f"{sum(map(len, sample)):,} characters: {e}") from None
  tok = SentencePieceTokenizer(model.getvalue())
  if directory is not None:
    tok.save(directory)
  return tok


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def load(path: str) -> Tokenizer:
  """Loads a tokenizer directory (baseline.json, else tokenizer.json, else tokenizer.model) or file; the format
  is detected."""
  file = path
  if os.path.isdir(path):
    found = [f for f in (BASELINE_FILE, HF_FILE) if os.path.exists(os.path.join(path, f))]
    file = os.path.join(path, (found or [MODEL_FILE])[0])
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no tokenizer at {path!r} (looked for {BASELINE_FILE}, {HF_FILE} or {MODEL_FILE})")
  if os.path.basename(file) == BASELINE_FILE:
    try:
      spec = json.loads(_read(file))
      return CharTokenizer(spec["chars"])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{file!r}: not a baseline tokenizer file ({e})") from None
  if file.endswith(".json"):
    config = os.path.join(os.path.dirname(file), HF_CONFIG_FILE)
    return HFTokenizer(_read(file), _read(config) if os.path.isfile(config) else None)
  data = _read(file)
  if _TIKTOKEN_LINE.match(data.split(b"\n", 1)[0].rstrip(b"\r")):
    return TiktokenTokenizer(data, os.path.basename(file))
  error = (f"{file!r} is not a tokenizer: expected a SentencePiece model, a tiktoken BPE file "
           f"(`base64 rank` lines) or a Hugging Face {HF_FILE}")
  if not data:  # an empty proto parses as an empty SentencePiece model
    raise ValueError(error + "; it is empty")
  try:
    return SentencePieceTokenizer(data)
  except RuntimeError as e:  # SentencePiece could not parse it
    raise ValueError(error) from e


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m llm_jax.tokenizer", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("train", help="train a tokenizer and save it to --out")
  p.add_argument("--source", default="stdlib", help='"stdlib" or a directory / file of .txt or .jsonl documents')
  p.add_argument("--out", required=True, help="directory to write the tokenizer to")
  p.add_argument("--model-type", default="bpe", choices=MODEL_TYPES)
  p.add_argument("--vocab-size", type=int, default=4096)
  p.add_argument("--max-chars", type=int, default=3_000_000, help="characters of training text sampled")
  p.add_argument("--seed", type=int, default=0)
  p = commands.add_parser("encode", help="print the ids and pieces of a text")
  p.add_argument("tokenizer", help="a tokenizer directory or file (anything load() reads)")
  p.add_argument("text", nargs="?", help="the text; read from standard input when absent")
  args = parser.parse_args(argv)
  if args.command == "train":
    from llm_jax.data import sources  # pylint: disable=import-outside-toplevel
    try:
      docs = sources.load_documents(args.source)
    except (OSError, ValueError) as e:
      print(f"error: --source {args.source!r}: {e}", file=sys.stderr)
      return 2
    t0 = time.time()
    try:
      tok = train([d["text"] for d in docs], args.out, vocab_size=args.vocab_size, model_type=args.model_type,
                  max_chars=args.max_chars, seed=args.seed)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"trained a {tok.vocab_size}-token {args.model_type} tokenizer on {len(docs)} documents of "
          f"{args.source!r} in {time.time() - t0:.1f}s -> {args.out}")
    return 0
  try:
    tok = load(args.tokenizer)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = sys.stdin.read() if args.text is None else args.text
  ids = tok.encode(text)
  print(f"{len(ids)} tokens for {len(text.encode('utf-8'))} bytes")
  for i in ids:  # a byte that is part of a character reads as U+FFFD alone
    piece = tok.decode([i])
    print(f"{i:>7}  {piece!r}" + ("  (a byte of a multi-byte character)" if piece == "\ufffd" else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
