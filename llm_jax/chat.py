"""Terminal chat with a fine-tuned workdir: streaming replies, visible tool calls, history.

    python -m llm_jax.chat --workdir runs/sft_tiny [--temperature 0.7] [--no_tools] [--system "..."] [--memory PATH]

Each line you type is a user message; the assistant's turn streams back, its tool calls shown as
`[calculator: 347*29] -> 10063` (the host runs them: llm_jax/inference/tools.py, Python in a sandbox).
Long-term memory (llm_jax/inference/memory.py): the model's `remember` and `recall` tools store and look up
notes in the SQLite file --memory (default `<workdir>/memory.sqlite`; `--memory=` turns memory off), so
what was said in one session can be recalled in a later one.
Commands: /reset (forget the conversation), /memory (list the stored notes), /forget N (delete note #N),
/exit (or end of input). When the history no longer fits the model's context, the oldest exchanges are
dropped and a note says so.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from llm_jax.data import chat
from llm_jax.eval.tasks import show
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import Sampling
from llm_jax.inference.memory import Memory

_WORKDIR = flags.DEFINE_string("workdir", None, "A fine-tuned (stage sft) workdir.", required=True)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling (1: off).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens per reply.")
_SYSTEM = flags.DEFINE_string("system", "", "A system message to start every conversation with.")
_NO_TOOLS = flags.DEFINE_bool("no_tools", False, "Do not run tool calls (the model then writes their output).")
_TOOL_TIMEOUT = flags.DEFINE_float("tool_timeout", 5.0, "Seconds per Python tool run.")
_MEMORY = flags.DEFINE_string("memory", None, "SQLite file of the remember/recall tools and of /memory, /forget "
                              "(default: <workdir>/memory.sqlite; empty: no memory).")


def fit_history(history: list[dict], tokenizer, budget: int) -> tuple[list[dict], int]:
  """The history with its oldest exchanges dropped until its prompt has `budget` tokens or fewer; returns
  (history, messages dropped). The system message and the last user message always stay."""
  head = history[:1] if history and history[0]["role"] == "system" else []
  body, dropped = history[len(head):], 0
  while len(chat.render_for_completion(head + body, tokenizer)) > budget:
    users = [i for i, m in enumerate(body) if m["role"] == "user"]
    if len(users) < 2:
      break  # only the newest question is left: the caller reports it as too long
    dropped += users[1]
    body = body[users[1]:]
  return head + body, dropped


def memory_command(memory: Memory | None, line: str) -> str | None:
  """The reply to `/memory` (the notes, oldest first) or `/forget N` (delete note #N); None for other lines."""
  words = line.split()
  if not words or words[0] not in ("/memory", "/forget"):
    return None
  if memory is None:
    return '(memory is off: --memory="")'
  try:
    if words == ["/memory"]:
      notes = memory.notes()
      return "\n".join(f"#{n.id} ({n.created} UTC) {n.text}" for n in notes) if notes else "(no notes)"
    if words[0] == "/forget" and len(words) == 2 and words[1].isdigit():
      note_id = int(words[1])
      return f"(forgot note #{note_id})" if memory.forget(note_id) else f"(no note #{note_id}; /memory lists them)"
  except ValueError as e:  # the file went bad after it was opened
    return f"(error: {e})"
  return "(/memory lists the notes; /forget N deletes note #N)"


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    tools = None if _NO_TOOLS.value else tools_lib.with_timeout(_TOOL_TIMEOUT.value)
    assistant = Assistant.from_workdir(_WORKDIR.value, tools)
  except (FileNotFoundError, KeyError, ValueError) as e:  # not a workdir, or a tokenizer without chat tokens
    sys.exit(f"error: --workdir={_WORKDIR.value}: {e}")
  # Opened once the workdir proved to be one, so that a mistyped --workdir is not created by the memory file.
  memory_path = os.path.join(_WORKDIR.value, "memory.sqlite") if _MEMORY.value is None else _MEMORY.value
  try:
    memory = Memory(memory_path) if memory_path else None
  except ValueError as e:
    sys.exit(f"error: --memory: {e}")  # the error names the file
  if memory is not None and tools is not None:
    assistant.tools = {**tools, **memory.tools()}
  tok, model = assistant.tokenizer, assistant.engine.model
  sampling = Sampling(_TEMPERATURE.value, top_p=_TOP_P.value)
  start = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
  history = list(start)
  budget = model.cfg.max_seq_len - min(_MAX_NEW.value, model.cfg.max_seq_len // 2)
  print(f"llm_jax chat with {_WORKDIR.value} (tools {'off' if tools is None else 'on'}, memory "
        f"{memory_path or 'off'}). /reset, /memory, /forget N, /exit", flush=True)
  turn = 0
  while True:
    sys.stdout.write("you> ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line or line.strip() == "/exit":
      print()
      return
    line = line.rstrip("\n")
    if line.strip() == "/reset":
      history = list(start)
      print("(conversation reset)", flush=True)
      continue
    reply = memory_command(memory, line)
    if reply is not None:
      print(reply, flush=True)
      continue
    if not line.strip():
      continue
    history, dropped = fit_history(history + [{"role": "user", "content": line}], tok, budget)
    if dropped:
      print(f"(dropped the {dropped} oldest messages to fit the model's {model.cfg.max_seq_len}-token context)")
    if len(chat.render_for_completion(history, tok)) > budget:
      print(f"(that message is too long for the model's {model.cfg.max_seq_len}-token context)", flush=True)
      history = history[:-1]
      continue
    sys.stdout.write("assistant> ")
    shown, parts = "", []
    for parts in assistant.stream(history, _MAX_NEW.value, sampling, seed=turn):
      text = show(parts)
      sys.stdout.write(text[len(shown):] if text.startswith(shown) else "\n" + text)
      sys.stdout.flush()
      shown = text
    print(flush=True)
    history.append({"role": "assistant", "content": parts or [{"type": "text", "text": ""}]})
    turn += 1


if __name__ == "__main__":
  app.run(main)
