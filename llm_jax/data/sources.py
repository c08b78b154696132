"""Document sources: the built-in corpus (CPython's own standard library), synthetic text, and local files.

A document is a dict `{"text": str, "source": str, "where": str}` (source: the label data.mixture weights;
where: its file and line, for messages). The built-in corpus needs no download: every Python
install carries `pydoc_data.topics` (the language reference as English prose, source "docs") and the
standard library's `.py` files (code and docstrings, source "code"; `test/` trees and site-packages are
skipped). The train/validation split is by a hash of each document's text, so it does not depend on file
order, machine or Python hash seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sysconfig
from typing import Iterator

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def stdlib_documents() -> list[dict]:
  """pydoc topics then stdlib sources, in a fixed (sorted) order."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  docs = [{"text": text, "source": "docs", "where": f"pydoc_data.topics[{key!r}]"}
          for key, text in sorted(pydoc_data.topics.topics.items())]
  root = sysconfig.get_paths()["stdlib"]
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        with open(path, encoding="utf-8", errors="replace") as f:
          text = f.read()
        if text.strip():
          docs.append({"text": text, "source": "code", "where": path})
  return docs


def jsonl_records(path: str, error: type[Exception] = ValueError) -> Iterator[tuple[str, object]]:
  """("path:line", parsed JSON) for each non-blank line of a JSONL file; a line that is not UTF-8 or not JSON
  raises `error` naming the file, line and column."""
  for where, record in _jsonl(path):
    if isinstance(record, Skipped):
      raise error(str(record))
    yield where, record


class Skipped(ValueError):
  """A document that cannot be read: `reason` names the kind of problem, the message names file and line."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


SYNTHETIC = "synthetic"
BUILTIN = ("stdlib", "docs", "code", SYNTHETIC)
FILE_TYPES = (".txt", ".jsonl", ".parquet")


def synthetic_documents(n: int = 2000, seed: int = 0) -> list[dict]:
  """Seeded plain-text documents of exact facts a small model can learn: sums, products and differences of
  multi-digit numbers, and the letters of words (source "synthetic"). The words are the training split of the
  synthetic tasks' words (llm_jax/data/tasks/spelling.py), so pretraining on this source never shows a word
  those tasks hold out for evaluation."""
  from llm_jax.data.tasks import base, spelling  # pylint: disable=import-outside-toplevel
  rng = random.Random(seed)
  vocab = [w for w in spelling.words() if base.in_split(w, "train")]
  docs = []
  for _ in range(n):
    lines = []
    for _ in range(rng.randint(8, 16)):
      if rng.random() < 0.5:
        a, b = rng.randint(0, 9999), rng.randint(0, 999)
        op = rng.choice("+-*")
        lines.append(f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}.")
      else:
        w = rng.choice(vocab)
        lines.append(f'The word "{w}" is spelled {"-".join(w)} and has {len(w)} letters.')
    docs.append({"text": "\n".join(lines) + "\n", "source": SYNTHETIC, "where": f"synthetic #{len(docs)}"})
  return docs


def entry_files(path: str) -> list[str]:
  """The .txt / .jsonl / .parquet files of a data.source path: the file itself, or a directory's (sorted;
  hidden files and directories are skipped)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"data.source: {path!r} does not exist")
  paths = []
  for d, dirs, files in os.walk(path):
    dirs[:] = [x for x in dirs if not x.startswith(".")]  # e.g. prepare's .work/
    paths += [os.path.join(d, f) for f in files if f.endswith(FILE_TYPES) and not f.startswith(".")]
  paths.sort()
  if not paths:
    raise ValueError(f"data.source={path!r}: no {', '.join(FILE_TYPES)} files found")
  return paths


def entry_label(path: str) -> str:
  """The source label of a path's documents: its name without extension."""
  return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _parquet_rows(path: str, batch_rows: int = 1024) -> Iterator[tuple[str, object]]:
  try:
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
  try:
    f = pq.ParquetFile(path)
    if "text" not in f.schema_arrow.names:
      raise ValueError(f"{path}: no 'text' column (columns: {f.schema_arrow.names})")
    row = 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=["text"]):
      for value in batch.column(0).to_pylist():
        row += 1
        yield f"{path}:row {row}", value
  except (OSError, pa.ArrowException) as e:  # ArrowInvalid, truncated files, ...
    raise ValueError(f"{path}: unreadable parquet ({e})") from None


def file_stream(path: str, label: str) -> Iterator[dict | Skipped]:
  """The documents of one file (see `stream`), a Skipped for each unreadable record."""
  if path.endswith(".txt"):
    with open(path, "rb") as f:
      raw = f.read()
    try:
      yield {"text": raw.decode("utf-8"), "source": label, "where": path}
    except UnicodeDecodeError as e:
      yield Skipped("invalid_utf8", f"{path}: not UTF-8 (byte {e.start} of the file: {raw[e.start:e.start + 1]!r})")
    return
  if path.endswith(".parquet"):
    for where, value in _parquet_rows(path):
      yield ({"text": value, "source": label, "where": where} if isinstance(value, str)
             else Skipped("no_text", f"{where}: 'text' is {value!r}, not a string"))
    return
  for where, record in _jsonl(path):
    if isinstance(record, Skipped):
      yield record
      continue
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
      yield Skipped("no_text", f"{where}: expected a JSON object with a string 'text' field")
      continue
    source = record.get("source")
    yield {"text": record["text"], "source": source if isinstance(source, str) and source else label, "where": where}


def _jsonl(path: str) -> Iterator[tuple[str, object]]:
  """("path:line", parsed JSON, or a Skipped naming why the line is not UTF-8 JSON) per non-blank line."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      where = f"{path}:{line_no}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield where, Skipped("invalid_utf8", f"{where}: not UTF-8 (byte {e.start + 1} of the line: "
                                             f"{raw[e.start:e.start + 1]!r})")
        continue
      if not line.strip():
        continue
      try:
        yield where, json.loads(line)
      except json.JSONDecodeError as e:
        yield where, Skipped("malformed_json", f"{where}: not JSON ({e.msg} at column {e.colno})")


def stream(source: str) -> Iterator[dict | Skipped]:
  """Documents `{"text", "source", "where"}` of a data.source, in a fixed order, one at a time, with a
  `Skipped` in place of each record that cannot be read (the caller counts or raises it).

  data.source is a comma-separated list of: "stdlib" (= "docs,code"), "docs" (pydoc topics), "code" (stdlib
  .py files), "synthetic" (synthetic_documents), or a path to a .txt / .jsonl / .parquet file or a directory
  of them. A file's documents are labelled (the "source" the mixture weights) with the path's name without
  extension (a directory's name for all its files), unless a JSONL record has its own string "source" field
  (the cleaned shards of `python -m llm_jax.data.prepare` keep their documents' labels that way).
  """
  for entry in [e.strip() for e in source.split(",") if e.strip()]:
    if entry in ("stdlib", "docs", "code"):
      yield from (d for d in stdlib_documents() if entry in ("stdlib", d["source"]))
    elif entry == SYNTHETIC:
      yield from synthetic_documents()
    else:
      label = entry_label(entry)
      for path in entry_files(entry):
        yield from file_stream(path, label)


def load_documents(source: str) -> list[dict]:
  """All documents of a data.source (see `stream`); the first unreadable record raises, naming file and line
  (`python -m llm_jax.data.prepare` counts and reports such records instead)."""
  docs = []
  for doc in stream(source):
    if isinstance(doc, Skipped):
      raise ValueError(f"{doc} (python -m llm_jax.data.prepare skips and counts such records)")
    docs.append(doc)
  return docs


def is_validation(text: str, val_fraction: float) -> bool:
  digest = hashlib.sha256(text.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split(docs: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
  train, val = [], []
  for doc in docs:
    (val if is_validation(doc["text"], val_fraction) else train).append(doc)
  return train, val


def chunk(text: str, max_chars: int) -> Iterator[str]:
  """Cuts a document at line breaks into pieces of at most max_chars (a longer single line is cut hard).

  Stdlib modules run to 200k characters; cutting them into pieces that are shuffled globally keeps one
  file from filling a whole batch. Pieces are concatenated back (lossless): ''.join(chunk(t, n)) == t.
  """
  start = 0
  while start < len(text):
    end = min(start + max_chars, len(text))
    if end < len(text):
      cut = text.rfind("\n", start, end)
      if cut > start:
        end = cut + 1
    yield text[start:end]
    start = end
