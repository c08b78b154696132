"""The tools a chat model calls during SFT, RL and chat: the host runs a tool when the model emits a tool call and
feeds the returned text back into the context. Every tool takes one string and returns the text the model sees;
failures come back as text starting with "error:", never as exceptions.

    tools.run_tool("calculator", "347*29")                      # -> "10063"
    tools.run_tool("python", 'print("strawberry".count("r"))')  # -> "3\n"
    search = tools.Retriever.from_path("docs/")                 # BM25 over local .txt files or a .jsonl file
    tools.run_tool("search", "rope scaling", {**tools.TOOLS, "search": search})

`run_python` runs model-written code in an operating-system sandbox: llm_jax/inference/sandbox.py.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import re
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from llm_jax.data import sources
from llm_jax.inference.sandbox import available_sandboxes, run_python, sandbox_kind  # noqa: F401 (the tools' API)

# --------------------------------------------------------------------------------------------------------------------
# calculator

MAX_EXPRESSION_CHARS = 200
MAX_DIGITS = 10_000
_MAX_BITS = int(MAX_DIGITS * math.log2(10))
_ONLY_ARITHMETIC = "only numbers and + - * / // % ** ( ) are allowed"
_BINARY_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}


class _CalcError(Exception):
  pass


def _checked(value):
  if isinstance(value, complex):  # e.g. (-8) ** (1/3)
    raise _CalcError("the result is not a real number")
  if isinstance(value, float) and not math.isfinite(value):
    raise _CalcError("result too large")
  if isinstance(value, int) and value.bit_length() > _MAX_BITS:
    raise _CalcError(f"numbers are limited to {MAX_DIGITS} digits")
  return value


def _power(base, exponent):
  # Refuse before computing: 2**10**10 would otherwise run for minutes. log2 works on ints of any size.
  if abs(exponent) > MAX_DIGITS * 4:
    raise _CalcError(f"exponent too large (limit {MAX_DIGITS * 4})")
  if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
    if math.log2(abs(base)) * exponent > _MAX_BITS:
      raise _CalcError(f"numbers are limited to {MAX_DIGITS} digits")
  return base ** exponent


def _evaluate(node):
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, complex or str
    return _checked(node.value)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    value = _evaluate(node.operand)
    return value if isinstance(node.op, ast.UAdd) else -value
  if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY_OPS or isinstance(node.op, ast.Pow)):
    left, right = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Pow):
      return _checked(_power(left, right))
    return _checked(_BINARY_OPS[type(node.op)](left, right))
  raise _CalcError(_ONLY_ARITHMETIC)


def _int_text(value: int) -> str:
  try:
    return str(value)
  except ValueError:  # above sys.get_int_max_str_digits(): convert in 1000-digit chunks
    sign, value = ("-", -value) if value < 0 else ("", value)
    chunks = []
    while value:
      value, chunk = divmod(value, 10 ** 1000)
      chunks.append(chunk)
    return sign + str(chunks[-1]) + "".join(f"{c:01000d}" for c in reversed(chunks[:-1]))


def _format_number(value) -> str:
  if isinstance(value, float):
    if value.is_integer() and abs(value) < 1e16:  # beyond 1e16 a float's integer digits are not all meaningful
      return str(int(value))
    return f"{value:.10g}"
  return _int_text(value)


_CALCULATOR = "<calculator>"
# Model-written input such as `1if` makes the parser warn on stderr before it fails or parses; the answer is
# the tool output, so such warnings are silenced (for this file name only).
warnings.filterwarnings("ignore", category=SyntaxWarning, module=_CALCULATOR)


def calculator(expression: str) -> str:
  """Evaluates arithmetic on Python int/float literals (e.g. `2.5e3`) with unary + -, binary + - * / // % ** and
  parentheses. Integers are exact; results are printed as plain integers when integral (`6/3` -> `2`), otherwise
  with up to 10 significant digits (`1/3` -> `0.3333333333`). Input is stripped and limited to 200 characters;
  numbers to 10,000 digits. Anything else (names, calls, strings, comparisons, `x` or `×`, thousands separators)
  is refused with an "error: ..." text; this function never raises."""
  if not isinstance(expression, str):
    return "error: the expression must be a string"
  expression = expression.strip()
  if not expression:
    return "error: empty expression"
  if len(expression) > MAX_EXPRESSION_CHARS:
    return f"error: expression longer than {MAX_EXPRESSION_CHARS} characters"
  try:
    tree = ast.parse(expression, filename=_CALCULATOR, mode="eval")
  except (SyntaxError, ValueError):
    return "error: syntax error in the expression"
  except Exception as e:  # e.g. RecursionError from the parser; tool output, never a crash
    return f"error: could not parse the expression ({type(e).__name__})"
  try:
    return _format_number(_evaluate(tree.body))
  except _CalcError as e:
    return f"error: {e}"
  except ZeroDivisionError:
    return "error: division by zero"
  except OverflowError:
    return "error: result too large"
  except Exception as e:
    return f"error: could not evaluate the expression ({type(e).__name__}: {e})"


# --------------------------------------------------------------------------------------------------------------------
# retrieval

_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
  return _WORD.findall(text.lower())


class Retriever:
  """Okapi BM25 over a local document store, with idf = log(1 + (N - n + 0.5) / (n + 0.5)). Documents are strings
  or dicts with "text" and optional "title" (indexed too) and "id"."""

  def __init__(self, docs: Sequence[str] | Sequence[dict], k1: float = 1.5, b: float = 0.75):
    self.docs: list[dict] = []
    for i, doc in enumerate(docs):
      if isinstance(doc, str):
        doc = {"text": doc}
      if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        raise ValueError(f"document {i}: expected a string or a dict with a string 'text', got {doc!r:.80}")
      self.docs.append(doc)
    self.k1, self.b = k1, b
    postings: dict[str, tuple[list[int], list[int]]] = {}
    lengths = []
    for i, doc in enumerate(self.docs):
      tokens = _tokens(str(doc.get("title", "")) + " " + doc["text"])
      lengths.append(len(tokens))
      counts: dict[str, int] = {}
      for token in tokens:
        counts[token] = counts.get(token, 0) + 1
      for token, count in counts.items():
        ids, tfs = postings.setdefault(token, ([], []))
        ids.append(i)
        tfs.append(count)
    self._lengths = np.asarray(lengths, np.float64)
    avg = self._lengths.mean() if len(lengths) else 1.0
    self._norm = k1 * (1 - b + b * self._lengths / max(avg, 1e-9))
    n_docs = len(self.docs)
    self._postings = {t: (np.asarray(ids), np.asarray(tfs, np.float64),
                          math.log(1 + (n_docs - len(ids) + 0.5) / (len(ids) + 0.5)))
                      for t, (ids, tfs) in postings.items()}

  def search(self, query: str, k: int = 3) -> list[tuple[int, float]]:
    """(document index, score) of the best `k` documents, best first (ties by index); only scores > 0."""
    scores = np.zeros(len(self.docs))
    for term in set(_tokens(query)):
      if term in self._postings:
        ids, tfs, idf = self._postings[term]
        scores[ids] += idf * tfs * (self.k1 + 1) / (tfs + self._norm[ids])
    hits = np.flatnonzero(scores > 0)
    order = hits[np.lexsort((hits, -scores[hits]))][:max(k, 0)]
    return [(int(i), float(scores[i])) for i in order]

  def __call__(self, query: str, k: int = 3, max_chars: int = 300) -> str:
    """What the model sees: the top-k documents, numbered, each cut to `max_chars` characters."""
    parts = []
    for rank, (i, _) in enumerate(self.search(query, k), 1):
      doc = self.docs[i]
      header = " ".join(str(doc[key]) for key in ("title", "id") if doc.get(key) not in (None, ""))
      text = " ".join(doc["text"].split())
      text = text if len(text) <= max_chars else text[:max_chars].rstrip() + "..."
      parts.append(f"[{rank}] {header}\n{text}" if header else f"[{rank}] {text}")
    return "\n\n".join(parts) if parts else "no results"

  @classmethod
  def from_path(cls, path, **kwargs) -> Retriever:
    """A directory of .txt files (title: the file name, id: the path relative to the directory) or a .jsonl file
    with one {"text": ..., ["title"], ["id"]} object per line. Errors name the file (and line)."""
    path = os.fspath(path)
    docs = []
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.endswith(".txt"))
      if not names:
        raise ValueError(f"{path}: no .txt files in this directory")
      for name in names:
        file = os.path.join(path, name)
        try:
          with open(file, encoding="utf-8") as f:
            docs.append({"text": f.read(), "title": name[:-4], "id": name})
        except UnicodeDecodeError as e:
          raise ValueError(f"{file}: not UTF-8 text ({e})") from None
    elif path.endswith(".jsonl"):
      for where, doc in sources.jsonl_records(path):
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
          raise ValueError(f"{where}: expected an object with a string 'text' field")
        docs.append(doc)
    elif os.path.exists(path):
      raise ValueError(f"{path}: expected a directory of .txt files or a .jsonl file")
    else:
      raise FileNotFoundError(f"{path}: no such file or directory")
    return cls(docs, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# dispatch

TOOLS: dict[str, Callable[[str], str]] = {"calculator": calculator, "python": run_python}


def with_timeout(timeout: float) -> dict[str, Callable[[str], str]]:
  """TOOLS with each Python run limited to `timeout` seconds of wall clock."""
  return {**TOOLS, "python": functools.partial(run_python, timeout=timeout)}


def run_tool(name: str, argument: str, tools: Mapping[str, Callable[[str], str]] | None = None) -> str:
  """Calls tool `name` (from `tools`, default TOOLS) on `argument`. An unknown name or an exception inside the tool
  becomes an "error: ..." text: tool errors are tool output, never a crash of the host."""
  tools = TOOLS if tools is None else tools
  tool = tools.get(name)
  if tool is None:
    return f"error: unknown tool {name!r} (available: {', '.join(tools)})"
  try:
    result = tool(argument)
  except Exception as e:
    return f"error: {type(e).__name__}: {e}"
  return result if isinstance(result, str) else str(result)
