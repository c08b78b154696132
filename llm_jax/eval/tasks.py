"""Task accuracy with exact checkers: held-out synthetic problems solved by the assistant, tools on vs off.

    results, transcripts = tasks.evaluate(engine, tokenizer, ["arithmetic", "counting"], problems=100)
    results["arithmetic/tools_on"], results["arithmetic/tools_off"]

    python -m llm_jax.eval.tasks --workdir runs/sft_tiny [--problems 100] [--tasks arithmetic,counting]

An SFT run does this at its end with its config's settings; the command evaluates any finished run again.

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


def fitting_problems(name: str, n: int, seed: int, tokenizer, room: int) -> tuple[list, int]:
  """(the held-out problems of problems_of whose prompt takes at most `room` tokens, how many did not)."""
  problems = [p for p in problems_of(name, n, seed) if len(chat.render_for_completion(p.prompt, tokenizer)) <= room]
  return problems, n - len(problems)


def evaluate(engine, tokenizer, names: Sequence[str], problems: int = 100, *, seed: int = 0,
             max_new_tokens: int = 64, tools: Mapping | None = None, max_tool_calls: int = 4,
             ) -> tuple[dict[str, float], list[str]]:
  """({"<task>/tools_on": accuracy, "<task>/tools_off": accuracy, ...}, a few transcripts per task and mode).

  "<task>/exact_call" is the share of problems whose first tool call (tools on) is the reference solution's
  (same tool, same input): how often a right answer comes from the right call rather than by chance.

  Problems whose prompt leaves fewer than max_new_tokens of the model's max_seq_len are left out and
  counted as "<task>/too_long".
  """
  tools = tools_lib.TOOLS if tools is None else tools
  modes = {"tools_on": Assistant(engine, tokenizer, tools, max_tool_calls=max_tool_calls),
           "tools_off": Assistant(engine, tokenizer, None)}
  results, transcripts = {}, []
  room = engine.model.cfg.max_seq_len - max_new_tokens
  for name in names:
    batch, too_long = fitting_problems(name, problems, seed, tokenizer, room)
    if too_long:  # a tokenizer with a tiny vocabulary makes long prompts
      results[f"{name}/too_long"] = too_long
    if not batch:
      continue
    for mode, assistant in modes.items():
      replies = assistant.respond([p.prompt for p in batch], max_new_tokens)
      solved = [p.check(chat.final_text(parts)) for p, parts in zip(batch, replies)]
      results[f"{name}/{mode}"] = sum(solved) / len(solved)
      if mode == "tools_on" and _first_call(batch[0].conversation[-1]["content"]):
        exact = [_first_call(parts) == _first_call(p.conversation[-1]["content"]) for p, parts in zip(batch, replies)]
        results[f"{name}/exact_call"] = sum(exact) / len(exact)
      for p, parts, ok in list(zip(batch, replies, solved))[:3]:
        transcripts.append(f"--- {name} | {mode} | expected {p.answer!r} | {'right' if ok else 'wrong'}\n"
                           f"user: {p.prompt[-1]['content']}\nassistant: {show(parts)}")
  return results, transcripts


def _first_call(parts) -> tuple[str, str] | None:
  calls = [(p["tool"], p["input"].strip()) for p in parts if isinstance(p, dict) and p.get("type") == "tool_call"]
  return calls[0] if calls else None


def evaluate_workdir(workdir: str, names: Sequence[str] | None = None, problems: int | None = None,
                     ) -> tuple[dict[str, float], list[str]]:
  """`evaluate` on a fine-tuned workdir's last checkpoint with its config's settings (sft.*, seed)."""
  import llm_jax  # pylint: disable=import-outside-toplevel
  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from llm_jax.inference.engine import Engine  # pylint: disable=import-outside-toplevel
  from llm_jax.model import Transformer  # pylint: disable=import-outside-toplevel
  from llm_jax.training import sft  # pylint: disable=import-outside-toplevel

  config, params, tok = llm_jax.load(workdir)
  engine = Engine(Transformer(config_lib.model_config(config)), params)
  names = sft.checked_tasks(config) if names is None else names
  return evaluate(engine, tok, names, config.sft.eval_problems if problems is None else problems,
                  seed=config.seed, max_new_tokens=config.sft.max_new_tokens, tools=sft.tools_for(config),
                  max_tool_calls=config.sft.max_tool_calls)


def main(argv=None):
  import argparse  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description="Held-out tool tasks, tools on vs off, for a fine-tuned workdir.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tasks", default=None, help="comma-separated; default: the checked tasks of sft.mixture")
  parser.add_argument("--problems", type=int, default=None, help="per task; default: the run's sft.eval_problems")
  args = parser.parse_args(argv)
  names = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
  for name in names or ():
    if name not in TASKS:
      parser.error(f"--tasks: unknown task {name!r}; tasks: {', '.join(TASKS)}")
  results, transcripts = evaluate_workdir(args.workdir, names, args.problems)
  print("\n".join(transcripts))
  print(json.dumps(results))


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


if __name__ == "__main__":
  main()
