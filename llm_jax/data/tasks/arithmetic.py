"""Multi-digit arithmetic solved with the calculator tool: plain questions, word problems, follow-up turns.

Operands have 2 to 4 digits; operations are + - * (results are integers, so the answer is exact). The
assistant copies the expression into a calculator call and reports the result; a held-out problem is one
whose (a, op, b) hashes into the validation split (tasks.base.in_split).
"""

from __future__ import annotations

import random

from llm_jax.data.tasks.base import Example, draw, tool_turn

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Calculate {a} {word} {b}.",
              "What is {a} {word} {b}?", "Please work out {a} {op} {b}.")
_STORIES = {
    "+": ("A library has {a} books and buys {b} more. How many books does it have now?",
          "Sam walked {a} meters in the morning and {b} meters in the afternoon. How many meters in total?"),
    "-": ("A farmer had {a} apples and sold {b}. How many apples are left?",
          "A tank holds {a} liters. {b} liters are drained. How many liters remain?"),
    "*": ("A box holds {b} pencils. How many pencils are in {a} boxes?",
          "A train travels {b} km every day. How far does it go in {a} days?"),
}
_ANSWERS = ("The answer is {r}.", "{a} {op} {b} = {r}.", "It is {r}.", "{r}")
_FOLLOWUPS = ("Now multiply that by {c}.", "And if you add {c} to it?", "What is that minus {c}?")
_FOLLOW_OPS = ("*", "+", "-")


def _sample(rng: random.Random) -> tuple:
  op = rng.choice(list(OPS))
  digits = (rng.randint(2, 4), rng.randint(2, 3 if op == "*" else 4))
  a, b = (rng.randint(10 ** (d - 1), 10 ** d - 1) for d in digits)
  return a, op, b


def _key(a, op, b) -> str:
  return f"{a}{op}{b}"


def _question(rng: random.Random, a: int, op: str, b: int) -> str:
  if rng.random() < 0.3:
    return rng.choice(_STORIES[op]).format(a=a, b=b)
  return rng.choice(_QUESTIONS).format(a=a, b=b, op=op, word=_WORDS[op])


def make(rng: random.Random, split: str) -> Example:
  a, op, b = draw(rng, split, _sample, _key)
  result = str(OPS[op](a, b))
  answer = rng.choice(_ANSWERS).format(a=a, op=op, b=b, r=result)
  return Example([{"role": "user", "content": _question(rng, a, op, b)},
                  tool_turn("calculator", f"{a}{op}{b}", result, answer)], result, "arithmetic")


def make_followup(rng: random.Random, split: str) -> Example:
  """Two turns: a problem, then an operation on its answer ("now multiply that by 7")."""
  first = make(rng, split)
  previous = int(first.answer)
  i = rng.randrange(len(_FOLLOWUPS))
  c = rng.randint(2, 99)
  op = _FOLLOW_OPS[i]
  result = str(OPS[op](previous, c))
  conversation = first.conversation + [
      {"role": "user", "content": _FOLLOWUPS[i].format(c=c)},
      tool_turn("calculator", f"{previous}{op}{c}", result, rng.choice(_ANSWERS).format(a=previous, op=op, b=c,
                                                                                        r=result))]
  return Example(conversation, result, "arithmetic_followup")
