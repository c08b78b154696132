"""Document sources: the built-in corpus (CPython's own standard library) and local text files.

A document is a dict `{"text": str, "source": str}`. The built-in corpus needs no download: every Python
install carries `pydoc_data.topics` (the language reference as English prose, source "docs") and the
standard library's `.py` files (code and docstrings, source "code"; `test/` trees and site-packages are
skipped). The train/validation split is by a hash of each document's text, so it does not depend on file
order, machine or Python hash seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from typing import Iterator

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def stdlib_documents() -> list[dict]:
  """pydoc topics then stdlib sources, in a fixed (sorted) order."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  docs = [{"text": text, "source": "docs"} for _, text in sorted(pydoc_data.topics.topics.items())]
  root = sysconfig.get_paths()["stdlib"]
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith(".py"):
        with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
          text = f.read()
        if text.strip():
          docs.append({"text": text, "source": "code"})
  return docs


def jsonl_records(path: str, error: type[Exception] = ValueError) -> Iterator[tuple[str, object]]:
  """("path:line", parsed JSON) for each non-blank line of a JSONL file; a line that is not JSON raises
  `error` naming the file, line and column."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
      yield where, record


def file_documents(path: str) -> list[dict]:
  """Documents from a .txt file (one document), a .jsonl file (field "text"), or a directory of them."""
  paths = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith((".txt", ".jsonl")))
  if not paths:
    raise ValueError(f"data.source={path!r}: no .txt or .jsonl files found")
  docs = []
  for p in paths:
    if p.endswith(".jsonl"):
      for where, record in jsonl_records(p):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
          raise ValueError(f"{where}: expected a JSON object with a string 'text' field")
        docs.append({"text": record["text"], "source": os.path.basename(p)})
    else:
      with open(p, encoding="utf-8", errors="replace") as f:
        docs.append({"text": f.read(), "source": os.path.basename(p)})
  return docs


def load_documents(source: str) -> list[dict]:
  return stdlib_documents() if source == "stdlib" else file_documents(source)


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
