"""Task accuracy with exact checkers: held-out synthetic problems solved by the assistant, tools on vs off.

    results, transcripts = tasks.evaluate(engine, tokenizer, ["arithmetic", "counting"], problems=100)
    results["arithmetic/tools_on"], results["arithmetic/tools_off"]

Tools on: the host runs the model's calls (llm_jax/inference/assistant.py). Tools off: nothing runs and the
model writes the tool's output itself, so the gap between the two is what the tools are worth to this model.
A problem counts as solved when the task's checker accepts the assistant's final text (after its last tool
output): the last number for numeric answers, the expected text for spelling.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from llm_jax.data import chat
from llm_jax.data.tasks import TASKS
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.assistant import Assistant


def problems_of(name: str, n: int, seed: int = 0):
  """n held-out problems of a task (its validation split), the same for every run with this seed."""
  rng = random.Random(f"{name}/{seed}")
  return [TASKS[name](rng, "val") for _ in range(n)]


def evaluate(engine, tokenizer, names: Sequence[str], problems: int = 100, *, seed: int = 0,
             max_new_tokens: int = 64, tools: Mapping | None = None, max_tool_calls: int = 4,
             ) -> tuple[dict[str, float], list[str]]:
  """({"<task>/tools_on": accuracy, "<task>/tools_off": accuracy, ...}, a few transcripts per task and mode).

  Problems whose prompt leaves fewer than max_new_tokens of the model's max_seq_len are left out and
  counted as "<task>/too_long".
  """
  tools = tools_lib.TOOLS if tools is None else tools
  modes = {"tools_on": Assistant(engine, tokenizer, tools, max_tool_calls=max_tool_calls),
           "tools_off": Assistant(engine, tokenizer, None)}
  results, transcripts = {}, []
  room = engine.model.cfg.max_seq_len - max_new_tokens
  for name in names:
    batch = [p for p in problems_of(name, problems, seed)
             if len(chat.render_for_completion(p.prompt, tokenizer)) <= room]
    if len(batch) < problems:  # a tokenizer with a tiny vocabulary makes long prompts
      results[f"{name}/too_long"] = problems - len(batch)
    if not batch:
      continue
    for mode, assistant in modes.items():
      replies = assistant.respond([p.prompt for p in batch], max_new_tokens)
      solved = [p.check(chat.final_text(parts)) for p, parts in zip(batch, replies)]
      results[f"{name}/{mode}"] = sum(solved) / len(solved)
      for p, parts, ok in list(zip(batch, replies, solved))[:3]:
        transcripts.append(f"--- {name} | {mode} | expected {p.answer!r} | {'right' if ok else 'wrong'}\n"
                           f"user: {p.prompt[-1]['content']}\nassistant: {show(parts)}")
  return results, transcripts


def show(parts: Sequence[dict]) -> str:
  """An assistant turn as readable text: tool calls in brackets, their outputs after an arrow."""
  out = []
  for part in parts:
    if part["type"] == "text":
      out.append(part["text"])
    elif part["type"] == "tool_call":
      out.append(f"[{part['tool']}: {part['input']}]")
    else:
      out.append(f" -> {part['output'].strip()} ")
  return "".join(out)
