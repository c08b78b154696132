"""Conversations -> token ids + loss mask: the one renderer that SFT, RL, evaluation and chat share.

A conversation is a list of messages `{"role": ..., "content": ...}` with role `system | user | assistant |
tool`. Content is text, or (assistant) a list of typed parts:

    {"type": "text", "text": "..."}
    {"type": "tool_call", "tool": "calculator", "input": "347*29"}
    {"type": "tool_output", "output": "10063"}

A `tool` message (content: text) is the output of the call just before it; OpenAI-style transcripts that
put tool results in their own messages therefore need no conversion. `normalize` merges each run of
assistant and tool messages into one assistant turn of parts, which is what the model sees:

    <|bos|> [<|system_start|> text <|system_end|>]
    <|user_start|> text <|user_end|>
    <|assistant_start|> text <|tool_call_start|> tool \n input <|tool_call_end|>
                        <|tool_output_start|> output <|tool_output_end|> text <|assistant_end|>
    <|user_start|> ...

Loss mask: 1 exactly on the tokens the assistant writes — its text, its tool calls (start marker, tool name,
input, end marker) and its <|assistant_end|>. Everything else is 0: the bos, system and user turns, the
<|assistant_start|> (the prompt supplies it: `render_for_completion`), and tool outputs with their markers
(the host injects them; a model trained on them would learn to make results up).

Inference stops on <|tool_call_end|> (the host runs the tool and forces <|tool_output_start|> output
<|tool_output_end|>, llm_jax/inference/assistant.py) and on <|assistant_end|>.

Truncation never cuts a message: `render(..., max_tokens=N)` drops whole exchanges (a user message and the
assistant turn answering it) from the front, after the system message, until the rest fits, and reports
how many messages it dropped; a conversation whose last exchange alone does not fit gives None. Callers
count both (the SFT pipeline prints them).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

from llm_jax.data import pipeline, sources

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "tool_call", "tool_output")


class ConversationError(ValueError):
  """A conversation does not follow the schema; the message says which message and why."""


@dataclasses.dataclass(frozen=True)
class Markers:
  """The control token ids of a tokenizer (llm_jax/tokenizer.py CONTROL_TOKENS)."""
  bos: int
  system: tuple[int, int]
  user: tuple[int, int]
  assistant: tuple[int, int]
  tool_call: tuple[int, int]
  tool_output: tuple[int, int]

  @classmethod
  def of(cls, tokenizer) -> "Markers":
    special = tokenizer.special

    def pair(name):
      ids = special.get(f"<|{name}_start|>"), special.get(f"<|{name}_end|>")
      if None in ids:
        raise ValueError(f"the tokenizer has no <|{name}_start|> / <|{name}_end|> tokens: chat needs a tokenizer "
                         "trained by llm_jax.tokenizer.train (its control tokens)")
      return ids
    return cls(pipeline.start_ids(tokenizer)[0], pair("system"), pair("user"), pair("assistant"), pair("tool_call"),
               pair("tool_output"))


def _parts(content, where: str) -> list[dict]:
  if isinstance(content, str):
    return [{"type": "text", "text": content}]
  if not isinstance(content, list) or not content:
    raise ConversationError(f"{where}: content must be a string or a non-empty list of parts")
  out = []
  for j, part in enumerate(content):
    at = f"{where} part {j}"
    if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
      raise ConversationError(f"{at}: a part is a dict with type one of {PART_TYPES}, got {part!r:.80}")
    need = {"text": ("text",), "tool_call": ("tool", "input"), "tool_output": ("output",)}[part["type"]]
    for key in need:
      if not isinstance(part.get(key), str):
        raise ConversationError(f"{at}: a {part['type']} part needs a string {key!r}")
    if part["type"] == "tool_call" and (not part["tool"] or "\n" in part["tool"]):
      raise ConversationError(f"{at}: a tool name must be non-empty and on one line, got {part['tool']!r}")
    out.append({"type": part["type"], **{k: part[k] for k in need}})
  return out


def normalize(conversation: Sequence[dict]) -> list[dict]:
  """The canonical form: [system,] user, assistant, user, assistant, ... with assistant content as parts.

  Tool messages join the assistant turn before them. Raises ConversationError naming the message.
  """
  if not isinstance(conversation, (list, tuple)) or not conversation:
    raise ConversationError("a conversation is a non-empty list of messages")
  turns: list[dict] = []
  for i, message in enumerate(conversation):
    where = f"message {i}"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
      raise ConversationError(f"{where}: a message is a dict with role one of {ROLES}, got {message!r:.80}")
    role = message["role"]
    if "content" not in message:
      raise ConversationError(f"{where} ({role}): no 'content'")
    if role == "tool":
      if not isinstance(message["content"], str):
        raise ConversationError(f"{where} (tool): content must be the tool's output text")
      parts = [{"type": "tool_output", "output": message["content"]}]
    else:
      parts = _parts(message["content"], f"{where} ({role})")
    if role in ("system", "user") and any(p["type"] != "text" for p in parts):
      raise ConversationError(f"{where} ({role}): only assistant turns hold tool calls and outputs")
    if role == "system" and i != 0:
      raise ConversationError(f"{where}: a system message may only come first")
    if role in ("assistant", "tool"):
      if not turns or turns[-1]["role"] not in ("user", "assistant"):
        raise ConversationError(f"{where} ({role}): must follow a user message")
      if turns[-1]["role"] == "assistant":
        turns[-1]["content"] += parts
      else:
        turns.append({"role": "assistant", "content": parts})
    else:
      if role == "user" and turns and turns[-1]["role"] == "user":
        raise ConversationError(f"{where} (user): two user messages in a row; join them or answer the first")
      turns.append({"role": role, "content": parts})
  for i, turn in enumerate(turns):
    if turn["role"] != "assistant":
      continue
    previous = None
    for part in turn["content"]:
      if part["type"] == "tool_output" and previous != "tool_call":
        raise ConversationError(f"assistant turn {i}: a tool output must directly follow a tool call")
      previous = part["type"]
  return turns


def _text(turn: dict) -> str:
  return "".join(p["text"] for p in turn["content"])


def _render_turns(turns: list[dict], tokenizer, m: Markers) -> tuple[list[int], list[int]]:
  ids, mask = [], []

  def add(tokens, trained: int):
    ids.extend(tokens)
    mask.extend([trained] * len(tokens))

  for turn in turns:
    role = turn["role"]
    if role != "assistant":
      start, end = m.system if role == "system" else m.user
      add([start, *tokenizer.encode(_text(turn)), end], 0)
      continue
    add([m.assistant[0]], 0)
    for part in turn["content"]:
      if part["type"] == "text":
        add(tokenizer.encode(part["text"]), 1)
      elif part["type"] == "tool_call":
        add([m.tool_call[0], *tokenizer.encode(part["tool"] + "\n" + part["input"]), m.tool_call[1]], 1)
      else:
        add([m.tool_output[0], *tokenizer.encode(part["output"]), m.tool_output[1]], 0)
    add([m.assistant[1]], 1)
  return ids, mask


@dataclasses.dataclass
class Rendered:
  ids: list[int]
  mask: list[int]  # 1 where the assistant writes the token (trained), else 0
  dropped: int = 0  # messages dropped from the front to fit max_tokens


def render(conversation: Sequence[dict], tokenizer, max_tokens: int | None = None,
           markers: Markers | None = None) -> Rendered | None:
  """bos + the conversation's tokens and loss mask (module docstring); None if even its last exchange does
  not fit in max_tokens."""
  m = markers or Markers.of(tokenizer)
  turns = normalize(conversation)
  head = turns[:1] if turns[0]["role"] == "system" else []
  body = turns[len(head):]
  starts = [i for i, t in enumerate(body) if t["role"] == "user"] or [0]
  for dropped_to in starts:  # the shortest suffix of whole exchanges is tried last
    ids, mask = _render_turns(head + body[dropped_to:], tokenizer, m)
    if max_tokens is None or len(ids) + 1 <= max_tokens:
      return Rendered([m.bos] + ids, [0] + mask, dropped=dropped_to)
  return None


def render_for_completion(conversation: Sequence[dict], tokenizer, markers: Markers | None = None) -> list[int]:
  """The prompt for the assistant's next turn: the conversation (ending with a user message), then
  <|assistant_start|>."""
  m = markers or Markers.of(tokenizer)
  turns = normalize(conversation)
  if turns[-1]["role"] != "user":
    raise ConversationError("render_for_completion: the conversation must end with a user message")
  ids, _ = _render_turns(turns, tokenizer, m)
  return [m.bos] + ids + [m.assistant[0]]


def parse_assistant(ids: Sequence[int], tokenizer, markers: Markers | None = None) -> list[dict]:
  """The parts of an assistant turn from its tokens (after <|assistant_start|>, up to <|assistant_end|> or
  the end). A call the model left unterminated comes back as a tool_call part all the same."""
  m = markers or Markers.of(tokenizer)
  parts: list[dict] = []
  current: list[int] = []
  kind = "text"

  def close():
    nonlocal current
    text = tokenizer.decode(current)
    if kind == "text" and text:
      parts.append({"type": "text", "text": text})
    elif kind == "tool_call":
      tool, _, argument = text.partition("\n")
      parts.append({"type": "tool_call", "tool": tool, "input": argument})
    elif kind == "tool_output":
      parts.append({"type": "tool_output", "output": text})
    current = []

  for token in ids:
    token = int(token)
    if token == m.assistant[1]:
      break
    if token in (m.tool_call[0], m.tool_output[0]):
      close()
      kind = "tool_call" if token == m.tool_call[0] else "tool_output"
    elif token in (m.tool_call[1], m.tool_output[1]):
      close()
      kind = "text"
    else:
      current.append(token)
  close()
  return parts


def parse(ids: Sequence[int], tokenizer, markers: Markers | None = None) -> list[dict]:
  """The normalized conversation of rendered ids (the inverse of `render`, for text that round-trips)."""
  m = markers or Markers.of(tokenizer)
  ids = [int(i) for i in ids]
  if ids and ids[0] == m.bos:
    ids = ids[1:]
  roles = {m.system[0]: ("system", m.system[1]), m.user[0]: ("user", m.user[1]),
           m.assistant[0]: ("assistant", m.assistant[1])}
  turns, i = [], 0
  while i < len(ids):
    if ids[i] not in roles:
      raise ConversationError(f"token {i} (id {ids[i]}) does not start a turn")
    role, end = roles[ids[i]]
    j = ids.index(end, i + 1) if end in ids[i + 1:] else len(ids)
    if role == "assistant":
      turns.append({"role": role, "content": parse_assistant(ids[i + 1:j], tokenizer, m)})
    else:
      turns.append({"role": role, "content": [{"type": "text", "text": tokenizer.decode(ids[i + 1:j])}]})
    i = j + 1
  return turns


def final_text(parts: Sequence[dict]) -> str:
  """The text the assistant wrote after its last tool output (its answer)."""
  last = max((i for i, p in enumerate(parts) if p["type"] == "tool_output"), default=-1)
  return "".join(p["text"] for p in parts[last + 1:] if p["type"] == "text")


def read_jsonl(path: str) -> Iterator[list[dict]]:
  """Conversations of a JSONL file: one per line, either a list of messages or {"messages": [...]}.

  Each is validated; an error names the file and line. Blank lines are skipped.
  """
  for where, record in sources.jsonl_records(path, ConversationError):
    messages = record.get("messages") if isinstance(record, dict) else record
    try:
      normalize(messages)
    except ConversationError as e:
      raise ConversationError(f"{where}: {e}") from None
    yield messages
