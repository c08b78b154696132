"""What every synthetic task shares: the Example record, the held-out split by hash, tool-call turns."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Callable


@dataclasses.dataclass
class Example:
  conversation: list[dict]  # full, for SFT
  answer: str  # the expected final answer
  task: str = ""
  # How check() compares: "number" (the last number in the text equals the answer), "first_number" (the first
  # number does: "47 is larger than 23."), or "text" (the text contains the answer).
  kind: str = "number"

  @property
  def prompt(self) -> list[dict]:
    """The conversation up to (and including) its last user message."""
    last = max(i for i, m in enumerate(self.conversation) if m["role"] == "user")
    return self.conversation[:last + 1]

  def check(self, text: str) -> bool:
    if self.kind in ("number", "first_number"):
      numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
      return bool(numbers) and numbers[0 if self.kind == "first_number" else -1] == self.answer
    return self.answer in text


def in_split(key: str, split: str, val_percent: int = 20) -> bool:
  """Whether `key` belongs to `split` ("train" or "val"): a stable hash puts val_percent% in val."""
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  h = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
  return (h < val_percent) == (split == "val")


def draw(rng: random.Random, split: str, sample: Callable[[random.Random], tuple], key: Callable[..., str],
         tries: int = 10_000):
  """Samples until the problem falls in `split` (rejection on the split hash); an error after `tries` samples
  (a generator whose values all hash to the other split would otherwise loop forever)."""
  for _ in range(tries):
    problem = sample(rng)
    if in_split(key(*problem), split):
      return problem
  raise ValueError(f"draw: none of {tries} samples from {getattr(sample, '__name__', sample)!r} fell in the "
                   f"{split!r} split (does the generator have values on both sides of the split hash?)")


def tool_turn(tool: str, argument: str, output: str, answer: str) -> dict:
  """An assistant turn that calls a tool, reads its output and answers."""
  return {"role": "assistant", "content": [
      {"type": "tool_call", "tool": tool, "input": argument},
      {"type": "tool_output", "output": output},
      {"type": "text", "text": answer}]}
