"""The assistant's turn: the engine decodes, the host runs tool calls and forces their outputs back in.

    assistant = Assistant(engine, tokenizer)                       # tools: calculator + sandboxed python
    parts = assistant.respond([conversation, ...])                 # one list of parts per conversation
    for parts in assistant.stream(conversation): ...               # the turn so far, after every chunk

A small state machine around the jitted decode loop (llm_jax/inference/engine.py), as in nanochat's engine:
each row decodes until it writes <|tool_call_end|> or <|assistant_end|>. Rows that stopped on a call get
`<|tool_output_start|> output <|tool_output_end|>` forced into their cache (Engine.force) and decode on;
the others stay stopped. Tools run on the host, in parallel across rows; a tool error is text the model
reads (llm_jax/inference/tools.py), never an exception. With `tools=None` nothing is executed and nothing
stops on a call: the model writes the "tool output" itself — the tools-off baseline of the tool-use
evaluation (what the model knows without its tools).

Per row at most `max_tool_calls` calls are run and each output is cut to `max_output_tokens` tokens; a
turn ends at <|assistant_end|>, after the row wrote max_new_tokens tokens (tool outputs not counted), or
when its context reaches the model's max_seq_len.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from llm_jax.data import chat
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.engine import NO_TOKEN, Engine, Sampling, _bucket
from llm_jax.model.transformer import cache_slots


class Assistant:

  def __init__(self, engine: Engine, tokenizer, tools: Mapping[str, Callable[[str], str]] | None = tools_lib.TOOLS,
               *, max_tool_calls: int = 4, max_output_tokens: int = 48):
    self.engine, self.tokenizer, self.tools = engine, tokenizer, tools
    self.markers = chat.Markers.of(tokenizer)
    self.max_tool_calls, self.max_output_tokens = max_tool_calls, max_output_tokens

  @classmethod
  def from_workdir(cls, workdir: str, tools: Mapping[str, Callable[[str], str]] | None = tools_lib.TOOLS,
                   **kwargs) -> "Assistant":
    """The assistant of a fine-tuned workdir (llm_jax.load: its weights and tokenizer), as the chat CLI and
    the server run it. FileNotFoundError / ValueError / KeyError for a path that is no such workdir."""
    import llm_jax  # pylint: disable=import-outside-toplevel (the package's loader, at call time)
    from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    from llm_jax.model import Transformer  # pylint: disable=import-outside-toplevel

    config, params, tok = llm_jax.load(workdir)
    return cls(Engine(Transformer(config_lib.model_config(config)), params), tok, tools, **kwargs)

  def tool_output(self, call: dict) -> list[int]:
    """The tokens forced in after a call: <|tool_output_start|> the tool's text (cut) <|tool_output_end|>."""
    output = tools_lib.run_tool(call["tool"], call["input"], self.tools)
    ids = self.tokenizer.encode(output)[:self.max_output_tokens]
    return [self.markers.tool_output[0], *ids, self.markers.tool_output[1]]

  def finished_call(self, tokens: list[int]) -> dict | None:
    """The tool call that `tokens` end with (closed by <|tool_call_end|>), or None; a stray end marker
    without its start is no call, and the turn ends there."""
    if not tokens or tokens[-1] != self.markers.tool_call[1]:
      return None
    parts = chat.parse_assistant(tokens, self.tokenizer, self.markers)
    return parts[-1] if parts and parts[-1]["type"] == "tool_call" else None

  def run(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
          seed: int = 0, chunk: int | None = None) -> Iterator[list[list[int]]]:
    """Yields every row's tokens so far (after <|assistant_start|>, forced tool outputs included) after each
    `chunk` decode steps (None: only when a tool call or the end of the turn stops decoding).

    Each row writes at most max_new_tokens tokens of its own (tool outputs do not count). Rows decode in
    lockstep over one cache, so a row still writing when the others stopped on tool calls uses up shared
    slots; then the rows with calls continue from a fresh cache of their context so far.
    """
    m, max_len = self.markers, self.engine.model.cfg.max_seq_len
    stop = [m.assistant[1]] + ([m.tool_call[1]] if self.tools is not None else [])
    forced_slots = _bucket(self.max_output_tokens + 2, self.engine.prompt_multiple)
    extra = forced_slots * self.max_tool_calls if self.tools is not None else 0
    if max(len(p) for p in prompts) >= max_len:
      raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room in the model's "
                       f"max_seq_len={max_len}")
    tokens = [[] for _ in prompts]
    written, calls = [0] * len(prompts), [0] * len(prompts)  # tokens each row wrote; tool calls run
    rows, state, left, starts = list(range(len(prompts))), None, 0, 0  # the state's rows, its decode budget
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
      while True:
        if state is None:  # a fresh cache holding each row's prompt and turn so far
          contexts = [list(prompts[r]) + tokens[r] for r in rows]
          left = min(max(max_new_tokens - written[r] for r in rows), max_len - max(map(len, contexts)))
          if left <= 0:
            break
          state = self.engine.start(contexts, left, seed + starts, extra_slots=extra)
          starts += 1
        index = int(state.cache["index"])
        state, out = self.engine.decode(state, min(chunk or left, left), sampling, stop)
        left -= int(state.cache["index"]) - index
        for r, new in zip(rows, out):
          new = [int(t) for t in new if t != NO_TOKEN][:max_new_tokens - written[r]]
          tokens[r] += new
          written[r] += len(new)
        done = np.asarray(state.done)
        if not done.all() and left > 0:  # a chunk ended mid-turn
          yield tokens
          continue
        pending = {r: call for r in rows if calls[r] < self.max_tool_calls and written[r] < max_new_tokens
                   and (call := self.finished_call(tokens[r])) is not None}
        if not pending:
          break
        outputs = dict(zip(pending, pool.map(self.tool_output, pending.values())))
        for r, ids in outputs.items():
          tokens[r] += ids
          calls[r] += 1
        yield tokens
        free = cache_slots(state.cache) - int(state.cache["index"])
        if done.all() and free > forced_slots:  # every row stopped by itself: force the outputs in place
          state = self.engine.force(state, [outputs.get(r, []) for r in rows])
          left = min(max(max_new_tokens - written[r] for r in pending), free - forced_slots)
        else:  # a row wrote to its budget and took the slots: the callers go on in a fresh cache
          rows, state = list(pending), None
    yield tokens

  def respond(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 128,
              sampling: Sampling = Sampling(), seed: int = 0) -> list[list[dict]]:
    """The assistant's next turn (its parts: text, tool calls, tool outputs) for each conversation."""
    prompts = [chat.render_for_completion(c, self.tokenizer, self.markers) for c in conversations]
    for tokens in self.run(prompts, max_new_tokens, sampling, seed):
      pass
    return [chat.parse_assistant(row, self.tokenizer, self.markers) for row in tokens]

  def stream(self, conversation: Sequence[dict], max_new_tokens: int = 256, sampling: Sampling = Sampling(),
             seed: int = 0, chunk: int = 4) -> Iterator[list[dict]]:
    """The parts of the assistant's turn so far, every `chunk` tokens and after every tool call."""
    prompt = chat.render_for_completion(conversation, self.tokenizer, self.markers)
    for tokens in self.run([prompt], max_new_tokens, sampling, seed, chunk=chunk):
      yield chat.parse_assistant(tokens[0], self.tokenizer, self.markers)
