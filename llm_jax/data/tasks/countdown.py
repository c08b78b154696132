"""A countdown-style puzzle with a verifiable answer: reach a target from given numbers with + - *.

    user: Use the numbers 7, 12 and 3 (each at most once) with + - * to make 57.
    assistant: [calculator: (12+7)*3] -> 57 (12+7)*3 = 57

Three or four numbers from 2 to 25; the target is a random expression over two or three of them (positive,
so some numbers are distractors). The checker accepts any arithmetic expression in the final text (after the
last tool output) that uses only the given numbers, each at most as often as given, and equals the target:
other solutions than the reference one count. A held-out problem is one whose (numbers, target) hashes into
the validation split (tasks.base.in_split).
"""

from __future__ import annotations

import collections
import random
import re

from llm_jax.data.tasks.base import Example, draw, tool_turn

_QUESTIONS = ("Use the numbers {nums} (each at most once) with + - * to make {t}.",
              "Countdown: reach {t} from {nums}; + - * and each number at most once.",
              "Make {t} out of {nums} using + - * (each number once at most).")
_ANSWERS = ("{e} = {t}", "{e} = {t}.", "One way: {e} = {t}.")
_EXPRESSION = re.compile(r"[\d(][\d\s+\-*()]*[\d)]")


def _evaluate(expression: str) -> int | None:
  from llm_jax.inference.tools import calculator  # pylint: disable=import-outside-toplevel  (AST-restricted)
  out = calculator(expression)
  return int(out) if re.fullmatch(r"-?\d+", out) else None


def solves(text: str, numbers: tuple[int, ...], target: int) -> bool:
  """Whether `text` holds an expression of + - * and parentheses over `numbers` (each used at most as often as
  given; at least one operation) whose value is `target`."""
  allowed = collections.Counter(numbers)
  for match in _EXPRESSION.finditer(text):
    expression = match.group()
    if not re.search(r"[+\-*]", expression):
      continue
    used = collections.Counter(int(n) for n in re.findall(r"\d+", expression))
    if all(used[n] <= allowed[n] for n in used) and _evaluate(expression) == target:
      return True
  return False


def _sample(rng: random.Random) -> tuple:
  while True:
    numbers = [rng.randint(2, 25) for _ in range(rng.choice((3, 4)))]
    a, b, c = rng.sample(numbers, 3)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    expression = f"{a}{op1}{b}" if rng.random() < 0.4 else f"({a}{op1}{b}){op2}{c}"
    target = _evaluate(expression)
    if target is not None and 0 < target <= 999 and target not in numbers:
      return tuple(numbers), target, expression


def _key(numbers, target, expression) -> str:
  del expression
  return f"{sorted(numbers)}->{target}"


class _Countdown(Example):
  """An Example whose check is `solves`: any valid expression, not only the reference one."""

  def __init__(self, conversation, numbers, target):
    super().__init__(conversation, str(target), "countdown", kind="countdown")
    self.numbers = numbers

  def check(self, text: str) -> bool:
    return solves(text, self.numbers, int(self.answer))


def make(rng: random.Random, split: str) -> Example:
  numbers, target, expression = draw(rng, split, _sample, _key)
  nums = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
  return _Countdown([{"role": "user", "content": rng.choice(_QUESTIONS).format(nums=nums, t=target)},
                     tool_turn("calculator", expression, str(target),
                               rng.choice(_ANSWERS).format(e=expression, t=target))], numbers, target)
