"""Continuous batching: many assistant turns share one decode batch; a request takes a free row between
decode chunks and gives it back the moment it finishes, so new requests never wait for a whole batch.

    batcher = Batcher(Assistant(engine, tokenizer), rows=8)   # tools and their limits come from the Assistant
    request = batcher.submit(prompt_ids, max_new_tokens=64, sampling=Sampling(0.7, top_p=0.9), timeout=60)
    for tokens in request.updates(): ...                      # the turn's tokens so far, after every chunk
    request.finish_reason                                     # stop | length | timeout | cancelled | error
    batcher.close()

One thread (the only one touching the engine) loops over slot boundaries, i.e. between chunks of `chunk`
decode steps of the jitted while_loop (engine.decode):
  1. rows whose request ended (cancelled, past its deadline, or finished in the last chunk) are restarted
     (engine.restart: their cache entries are forgotten) and free again;
  2. waiting requests take free rows, first come first served, and tool outputs that are ready are due;
  3. when the shared cache index has no room for what comes next, engine.compact moves every row's
     entries to the front (rows joined at different times leave gaps behind them);
  4. one engine.force appends every new prompt and every due tool output to its row;
  5. one decode chunk runs over all rows, each with its request's own sampling settings (temperature,
     top-k, top-p and min-p are per-row arrays, so nothing recompiles); rows that wrote
     <|assistant_end|> finish, rows that wrote <|tool_call_end|> hand the call to a thread pool and wait
     (the others keep decoding), and rows at their token budget or the model's context finish with
     "length".
Rows decode in lockstep, so a long prompt joining costs the running rows one prefill's latency (chunked
prefill would bound it). Every request shares the batch's random stream: sampled answers are not
reproducible per request. A bounded waiting queue refuses work beyond `max_waiting` (QueueFull), which a
server turns into HTTP 429.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import NO_TOKEN, Sampling, _bucket
from llm_jax.model.transformer import cache_slots


class QueueFull(Exception):
  """The batcher already holds `max_waiting` requests that have no row yet."""


class Request:
  """One assistant turn in flight: the prompt, its limits, and the tokens written so far (forced tool
  outputs included). Read it through updates(); cancel() frees its row at the next slot boundary."""

  def __init__(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling, deadline: float):
    self.prompt, self.max_new_tokens, self.sampling, self.deadline = list(prompt), max_new_tokens, sampling, deadline
    self.tokens: list[int] = []
    self.written = 0  # tokens the model wrote (tool outputs do not count against max_new_tokens)
    self.calls = 0
    self.finish_reason: str | None = None
    self.error: str | None = None
    self.stopped_by_string = False  # set by a server that cut the reply at a stop string
    self._updates: queue.Queue = queue.Queue()
    self._cancelled = False

  def cancel(self):
    """Stop this turn (e.g. the client went away, or a stop string appeared); finish_reason 'cancelled'."""
    self._cancelled = True

  def updates(self, timeout: float | None = None) -> Iterator[list[int]]:
    """The tokens so far, after every chunk that changed them, until the turn ends (then finish_reason is
    set). TimeoutError when nothing arrives for `timeout` seconds."""
    while True:
      try:
        tokens = self._updates.get(timeout=timeout)
      except queue.Empty:
        raise TimeoutError(f"no progress for {timeout} s") from None
      if tokens is None:
        return
      yield tokens

  def _publish(self):
    self._updates.put(list(self.tokens))

  def _finish(self, reason: str, error: str | None = None):
    if self.finish_reason is None:
      self.finish_reason, self.error = reason, error
      self._updates.put(None)


@dataclasses.dataclass
class Stats:
  submitted: int = 0
  refused: int = 0
  finished: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  chunks: int = 0
  tokens: int = 0  # tokens written by the model
  row_steps: int = 0  # decode steps x rows holding a request: occupancy = row_steps / (chunks x chunk x rows)
  compactions: int = 0


class Batcher:

  def __init__(self, assistant: Assistant, rows: int = 8, *, chunk: int = 8, slots: int | None = None,
               max_waiting: int = 64, seed: int = 0):
    """rows: the decode batch. slots: cache slots shared by the rows; the default (twice the model's context
    plus room for a chunk and a prompt) always leaves room for the next prompt after compaction. Fewer slots
    make attention cheaper and compaction more frequent; a prompt that finds no room even after compaction
    ends the batcher with an error."""
    self.assistant, self.engine = assistant, assistant.engine
    self.rows, self.chunk, self.max_waiting = rows, chunk, max_waiting
    self.max_len = self.engine.model.cfg.max_seq_len
    if slots is not None and slots < self.max_len + 2 * chunk:
      raise ValueError(f"slots={slots}: a row may need max_seq_len + 2 x chunk = {self.max_len + 2 * chunk}")
    m = assistant.markers
    self._stop_ids = [m.assistant[1]] + ([m.tool_call[1]] if assistant.tools is not None else [])
    self._state = self.engine.empty(rows, slots or 2 * self.max_len + 2 * chunk + self.engine.prompt_multiple, seed)
    self.slots = cache_slots(self._state.cache)
    self._row: list[Request | None] = [None] * rows
    self._tools: dict[int, concurrent.futures.Future] = {}  # row -> the running call's output tokens
    self._restart = np.zeros(rows, bool)  # rows to clear at the next boundary
    self._waiting: collections.deque[Request] = collections.deque()
    self._wake = threading.Condition()
    self._closed = False
    self.stats = Stats()
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(rows, 8)))
    self._thread = threading.Thread(target=self._run, name="llm_jax-batcher", daemon=True)
    self._thread.start()

  # ------------------------------------------------------------------------------------------------ clients

  def submit(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             timeout: float = 300.0) -> Request:
    """Queues one turn; QueueFull when max_waiting requests already wait, ValueError on a prompt that
    leaves no room in the model's context."""
    if not prompt or len(prompt) >= self.max_len:
      raise ValueError(f"a prompt of {len(prompt)} tokens: it must have 1 to {self.max_len - 1} tokens "
                       f"(the model's max_seq_len is {self.max_len})")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}: it must be at least 1")
    request = Request(prompt, max_new_tokens, sampling, time.monotonic() + timeout)
    with self._wake:
      if self._closed:
        raise RuntimeError("the batcher is closed")
      if len(self._waiting) >= self.max_waiting:
        self.stats.refused += 1
        raise QueueFull(f"{len(self._waiting)} requests are already waiting for a row")
      self.stats.submitted += 1
      self._waiting.append(request)
      self._wake.notify()
    return request

  def load(self) -> dict:
    """Rows in use, requests waiting, and calls running now."""
    with self._wake:
      return {"rows": self.rows, "active": sum(r is not None for r in self._row), "waiting": len(self._waiting),
              "tool_calls": len(self._tools)}

  def close(self):
    """Ends every request (finish_reason 'cancelled') and stops the thread."""
    with self._wake:
      self._closed = True
      self._wake.notify()
    self._thread.join(timeout=60)
    self._pool.shutdown(wait=False, cancel_futures=True)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  # ------------------------------------------------------------------------------------------------ the loop

  def _run(self):
    try:
      while not self._closed:
        self._boundary()
      reason, error = "cancelled", None
    except Exception as e:  # noqa: BLE001 (an engine failure must not leave clients waiting forever)
      reason, error = "error", f"{type(e).__name__}: {e}"
      self._closed = True
    with self._wake:
      ending = [r for r in self._row if r is not None] + list(self._waiting)
      self._waiting.clear()
    for request in ending:
      request._finish(reason, error)

  def _free(self, row: int, reason: str):
    self._row[row]._finish(reason)
    self.stats.finished[reason] += 1
    self._row[row] = None
    self._tools.pop(row, None)
    self._restart[row] = True

  def _boundary(self):
    now = time.monotonic()
    with self._wake:
      for request in [r for r in self._waiting if r._cancelled or now > r.deadline]:
        self._waiting.remove(request)
        reason = "cancelled" if request._cancelled else "timeout"
        request._finish(reason)
        self.stats.finished[reason] += 1
      idle = all(r is None for r in self._row) and not self._waiting
      if idle:
        self._wake.wait(timeout=0.5)
        return
    for row, request in enumerate(self._row):
      if request is not None and (request._cancelled or now > request.deadline):
        self._free(row, "cancelled" if request._cancelled else "timeout")

    forced: dict[int, list[int]] = {}
    for row, future in list(self._tools.items()):
      if future.done():
        del self._tools[row]
        request = self._row[row]
        output = future.result()
        request.tokens += output
        request.calls += 1
        request._publish()
        if len(request.prompt) + len(request.tokens) >= self.max_len:
          self._free(row, "length")
        else:
          forced[row] = output
    with self._wake:
      for row in range(self.rows):
        if self._row[row] is None and self._waiting:
          self._row[row] = self._waiting.popleft()
          self._restart[row] = True
          forced[row] = self._row[row].prompt

    if self._restart.any():
      self._state = self.engine.restart(self._state, self._restart)
      self._restart[:] = False
    # Room for what is forced and one decode chunk after it; a full cache would stop every row.
    need = self.chunk + (_bucket(max(map(len, forced.values())), self.engine.prompt_multiple) if forced else 0)
    if int(self._state.cache["index"]) + need >= self.slots:
      self._state = self.engine.compact(self._state)
      self.stats.compactions += 1
    if forced:
      self._state = self.engine.force(self._state, [forced.get(row, []) for row in range(self.rows)])

    decoding = [row for row, r in enumerate(self._row) if r is not None and row not in self._tools]
    if not decoding:
      if self._tools:  # only tool calls are running
        concurrent.futures.wait(list(self._tools.values()), timeout=0.05,
                                return_when=concurrent.futures.FIRST_COMPLETED)
      return
    self._state, out = self.engine.decode(self._state, self.chunk, self._sampling(), self._stop_ids)
    done = np.asarray(self._state.done)
    self.stats.chunks += 1
    self.stats.row_steps += int(np.sum(out[decoding] != NO_TOKEN))
    m = self.assistant.markers
    for row in decoding:
      request = self._row[row]
      room = min(request.max_new_tokens - request.written, self.max_len - len(request.prompt) - len(request.tokens))
      new = [int(t) for t in out[row] if t != NO_TOKEN][:room]
      request.tokens += new
      request.written += len(new)
      self.stats.tokens += len(new)
      request._publish()
      last = request.tokens[-1] if request.tokens else None
      if new and last == m.assistant[1]:
        self._free(row, "stop")
      elif new and last == m.tool_call[1] and self.assistant.tools is not None:
        call = self.assistant.finished_call(request.tokens)
        if call is None or request.calls >= self.assistant.max_tool_calls:
          self._free(row, "stop")  # a stray end marker, or one call too many: the turn ends here
        else:
          self._tools[row] = self._pool.submit(self.assistant.tool_output, call)
      elif len(new) == room or done[row]:  # the budget, the context or the cache ran out
        self._free(row, "length")

  def _sampling(self) -> Sampling:
    """Each row's request's settings as [rows] arrays (idle rows greedy)."""
    settings = [r.sampling if r is not None else Sampling() for r in self._row]
    return Sampling(temperature=np.array([s.temperature for s in settings], np.float32),
                    top_k=np.array([s.top_k for s in settings], np.int32),
                    top_p=np.array([s.top_p for s in settings], np.float32),
                    min_p=np.array([s.min_p for s in settings], np.float32))
