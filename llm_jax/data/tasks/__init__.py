"""Synthetic chat tasks, generated from a seed: SFT data, held-out evaluation problems, and (later) RL prompts.

A task is a function `make(rng: random.Random, split: str) -> Example`. `split` is "train" or "val"; each
task decides membership by a hash of what the problem is about (the numbers, the word), so a held-out
problem never appears in training, whatever the seed or the number of examples drawn.

    from llm_jax.data import tasks
    example = tasks.TASKS["arithmetic"](random.Random(0), "val")
    example.conversation   # the full conversation, with the assistant's tool calls and answer (for SFT)
    example.prompt         # the conversation up to the last user message (for evaluation / RL)
    example.check(answer_text) -> bool

Registered tasks: identity (who/what the assistant is), arithmetic (multi-digit + - * as questions and word
problems, solved with the calculator tool), arithmetic_followup (a second turn that builds on the first
answer), counting (how many times a letter occurs in a word, solved with the Python tool), spelling (a word
letter by letter, with the Python tool), repeat (say a quoted text back, no tool: copying practice for counting
and spelling), countdown (reach a target from given numbers with + - *, checked by value: any valid expression
counts; the reasoning-RL task of llm_jax/rl/grpo.py), compare (which of two numbers is larger, answered without
tools in styles of mixed quality, with a hidden rule-based gold judge and gold-labelled preference pairs: the
RLHF task), memory (the user states a personal fact and the assistant stores it with the `remember` tool,
or asks for one and the assistant looks it up with `recall` and answers from the note it reads:
llm_jax/inference/memory.py; not in the default SFT mixture). `mixture` draws from several by weight.
Also here, not a task of the mixture: people.py, the grounding study's world of fictional people
(experiments/grounding.py).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from llm_jax.data.tasks import arithmetic, compare, countdown, identity, memory, spelling
from llm_jax.data.tasks.base import Example, in_split  # noqa: F401  (re-exported: tasks.in_split)

TASKS: dict[str, Callable[[random.Random, str], Example]] = {
    "identity": identity.make,
    "arithmetic": arithmetic.make,
    "arithmetic_followup": arithmetic.make_followup,
    "counting": spelling.make_counting,
    "spelling": spelling.make_spelling,
    "repeat": spelling.make_repeat,
    "countdown": countdown.make,
    "compare": compare.make,
    "memory": memory.make,
}
# Tasks whose answers can be checked: the evaluation of tool use (llm_jax/eval/tasks.py).
CHECKED = ("arithmetic", "arithmetic_followup", "counting", "spelling", "countdown", "compare")


def parse_weights(spec: str) -> dict[str, float]:
  """"arithmetic:4,counting:2,path/to/chats.jsonl:1" -> {name or path: weight}; a missing weight is 1."""
  out = {}
  for entry in filter(None, (e.strip() for e in spec.split(","))):
    name, _, weight = entry.rpartition(":") if ":" in entry else (entry, "", "1")
    try:
      out[name] = float(weight)
    except ValueError:
      raise ValueError(f"{entry!r}: the weight after ':' must be a number") from None
    if out[name] <= 0:
      raise ValueError(f"{entry!r}: weights must be positive")
  return out


def mixture(weights: dict[str, float], n: int, seed: int, split: str = "train",
            files: dict[str, Sequence[list[dict]]] | None = None) -> list[list[dict]]:
  """n conversations drawn by weight from TASKS (by name) and from `files` (path -> conversations, cycled
  in a seeded order)."""
  files = files or {}
  unknown = [k for k in weights if k not in TASKS and k not in files]
  if unknown:
    raise ValueError(f"unknown tasks {unknown}; tasks are {sorted(TASKS)} or .jsonl files")
  rng = random.Random(seed)
  names = list(weights)
  orders = {k: rng.sample(range(len(v)), len(v)) for k, v in files.items()}
  used = {k: 0 for k in files}
  out = []
  for name in rng.choices(names, [weights[k] for k in names], k=n):
    if name in files:
      out.append(files[name][orders[name][used[name] % len(orders[name])]])
      used[name] += 1
    else:
      out.append(TASKS[name](rng, split).conversation)
  return out
