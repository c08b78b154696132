"""Preference pairs (a prompt, a chosen and a rejected answer) from JSONL files and the synthetic compare task.

A pair, once read, is `{"prompt": [messages], "chosen": content, "rejected": content}`: the prompt is the
conversation up to the answer (its last message is a user message) and each answer is the content of one
assistant message (text, or typed parts: llm_jax/data/chat.py). One JSON object per line, in any of:

    {"prompt": "text" | [messages], "chosen": "text" | [parts] | message | [message], "rejected": ...}
        a text prompt is one user message; a message (or TRL's one-message list) must be an assistant's
    {"chosen": [messages], "rejected": [messages]}
        TRL's implicit prompt: both lists share every message but the last, which is the assistant's answer
    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
        Anthropic HH transcripts: the turns before the last Assistant turn are the prompt (Human -> user,
        Assistant -> assistant, texts stripped) and must be the same in both; the last Assistant turn is the answer

Every pair is validated (chat.normalize of the prompt with each answer); a bad one raises PreferenceError
naming the file and line. Blank lines are skipped; a file without pairs is an error.
"""

from __future__ import annotations

import json
import random
import re

from llm_jax.data import chat, sources
from llm_jax.data.tasks import base, compare

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PreferenceError(ValueError):
  """A preference record cannot be read; the message names the file and line and says why."""


def _message(m) -> dict:
  if not isinstance(m, dict) or "role" not in m or "content" not in m:
    raise PreferenceError(f"a message is a dict with 'role' and 'content', got {m!r:.80}")
  return {"role": m["role"], "content": m["content"]}


def _messages(value, name: str) -> list[dict]:
  if not isinstance(value, list) or not value:
    raise PreferenceError(f"{name!r} must be a non-empty list of messages")
  return [_message(m) for m in value]


def _answer(value, name: str):
  """The content of an answer given as text or typed parts, as an assistant message, or as a list of exactly one
  message."""
  if isinstance(value, str):
    return value
  if isinstance(value, list) and value and all(isinstance(p, dict) and "role" not in p for p in value):
    return value  # typed parts (chat.normalize checks them)
  if isinstance(value, list):
    if len(value) != 1:
      raise PreferenceError(f"{name!r} as a list must be exactly one assistant message, got {len(value)} messages")
    value = value[0]
  if isinstance(value, dict):
    message = _message(value)
    if message["role"] != "assistant":
      raise PreferenceError(f"{name!r} must be an assistant message, got role {message['role']!r}")
    return message["content"]
  raise PreferenceError(f"{name!r} must be text, an assistant message or a list of one, got "
                        f"{type(value).__name__}")


def _split_prompt(chosen: list[dict], rejected: list[dict], form: str) -> tuple[list[dict], object, object]:
  """The shared prompt and the two answers of two conversations that differ only in their last message."""
  for name, conversation in (("chosen", chosen), ("rejected", rejected)):
    if conversation[-1]["role"] != "assistant":
      raise PreferenceError(f"{form}: the last message of {name!r} must be the assistant's answer, got role "
                            f"{conversation[-1]['role']!r}")
  if chosen[:-1] != rejected[:-1]:
    differ = next((i for i, (c, r) in enumerate(zip(chosen[:-1], rejected[:-1])) if c != r),
                  min(len(chosen), len(rejected)) - 1)
    raise PreferenceError(f"{form}: chosen and rejected have different prompts (message {differ} differs)")
  return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _hh_turns(text: str, name: str) -> list[dict]:
  pieces = _HH_TURN.split(text)
  if pieces[0].strip() or len(pieces) < 3:
    raise PreferenceError(f"{name!r}: an HH transcript is '\\n\\nHuman: ...\\n\\nAssistant: ...' turns")
  return [{"role": _HH_ROLES[role], "content": body.strip()} for role, body in zip(pieces[1::2], pieces[2::2])]


def _text_of(content) -> str:
  if isinstance(content, str):
    return content
  return "".join(p.get("text", "") if isinstance(p, dict) else "" for p in content)


def _is_empty(content) -> bool:
  """No visible text and nothing but text parts (an answer that only calls a tool is not empty)."""
  if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content):
    return False
  return not _text_of(content).strip()


def parse(record) -> dict:
  """One record (any of the module docstring's forms) -> {"prompt", "chosen", "rejected"}; raises
  PreferenceError (without a file position) when it is not a valid pair."""
  if not isinstance(record, dict):
    raise PreferenceError(f"a record is a JSON object with 'chosen' and 'rejected', got {type(record).__name__}")
  for key in ("chosen", "rejected"):
    if key not in record:
      raise PreferenceError(f"missing key {key!r}")
  chosen, rejected = record["chosen"], record["rejected"]
  if "prompt" in record:
    prompt = record["prompt"]
    if isinstance(prompt, str):
      prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
      prompt = _messages(prompt, "prompt")
    else:
      raise PreferenceError(f"'prompt' must be text or a list of messages, got {type(prompt).__name__}")
    chosen, rejected = _answer(chosen, "chosen"), _answer(rejected, "rejected")
  elif isinstance(chosen, list) and isinstance(rejected, list):
    prompt, chosen, rejected = _split_prompt(_messages(chosen, "chosen"), _messages(rejected, "rejected"),
                                             "implicit prompt")
  elif isinstance(chosen, str) and isinstance(rejected, str):
    prompt, chosen, rejected = _split_prompt(_hh_turns(chosen, "chosen"), _hh_turns(rejected, "rejected"),
                                             "HH transcript")
  else:
    raise PreferenceError("without a 'prompt', 'chosen' and 'rejected' are both message lists (TRL) or both "
                          "'\\n\\nHuman: ...\\n\\nAssistant: ...' transcripts (Anthropic HH)")
  try:
    chat.normalize(prompt)
  except chat.ConversationError as e:
    raise PreferenceError(f"prompt: {e}") from None
  if prompt[-1]["role"] != "user":
    raise PreferenceError(f"the prompt must end with a user message, not {prompt[-1]['role']!r}")
  normalized = {}
  for name, answer in (("chosen", chosen), ("rejected", rejected)):
    try:
      normalized[name] = chat.normalize(prompt + [{"role": "assistant", "content": answer}])[-1]
    except chat.ConversationError as e:
      raise PreferenceError(f"{name}: {e}") from None
    if _is_empty(answer):
      raise PreferenceError(f"the {name} answer is empty")
  if normalized["chosen"] == normalized["rejected"]:
    raise PreferenceError("chosen and rejected are the same answer")
  return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def read_pairs(path: str) -> list[dict]:
  """The pairs of a JSONL file, normalised (module docstring); errors name the file and line."""
  out = []
  for where, record in sources.jsonl_records(path, PreferenceError):
    try:
      out.append(parse(record))
    except PreferenceError as e:
      raise PreferenceError(f"{where}: {e}") from None
  if not out:
    raise PreferenceError(f"{path}: no preference pairs (the file is empty)")
  return out


def load(spec: str, n: int, seed: int, split: str) -> list[dict]:
  """n pairs of `split` from a comma-separated list of entries: "compare" (compare.pairs, gold-labelled: its pairs
  also carry "gold_chosen" / "gold_rejected") or .jsonl paths (read_pairs; a file's pairs are split 90/10 into
  train / val by a hash of the prompt). The entries share n evenly (the first ones take the remainder); a
  file's pairs are drawn in a seeded order, cycled when it has fewer; the result is shuffled by the seed."""
  entries = [e.strip() for e in spec.split(",") if e.strip()]
  if not entries:
    raise ValueError("a preference spec names at least one entry: 'compare' or .jsonl paths")
  rng = random.Random(seed)
  out = []
  for i, entry in enumerate(entries):
    count = n // len(entries) + (i < n % len(entries))
    if entry == "compare":
      out += compare.pairs(count, seed + i, split)
    elif entry.endswith(".jsonl"):
      held = [p for p in read_pairs(entry) if base.in_split(json.dumps(p["prompt"]), split, val_percent=10)]
      if not held:
        raise PreferenceError(f"{entry}: no preference pairs in the {split!r} split (10% of prompts go to val)")
      order = rng.sample(held, len(held))
      out += [order[j % len(order)] for j in range(count)]
    else:
      raise ValueError(f"unknown preference source {entry!r}: 'compare' or a path to a .jsonl file")
  rng.shuffle(out)
  return out
