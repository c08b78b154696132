"""An OpenAI-compatible chat server over continuous batching, with a web chat page.

    python -m llm_jax.serve --workdir runs/sft_tiny [--host 127.0.0.1] [--port 8000] [--rows 8]

    GET  /                       a single-page chat that streams the reply (tool calls shown inline)
    GET  /health                 {"status": "ok", rows, active, waiting, tool_calls, counters}; 503 once broken
    GET  /v1/models              the one model served (its name: --model_name, default the workdir's name)
    POST /v1/chat/completions    OpenAI's request body; "stream": true answers with server-sent events

Requests join the running decode batch at the next slot boundary (llm_jax/inference/batching.py). Tools run
on the host as in `llm_jax.chat` (calculator, sandboxed Python; --no_tools turns them off) and appear in the
reply's text as `[calculator: 347*29] -> 10063`.

Request fields: messages (roles system, user, assistant, tool; content a string or a list of parts such as
{"type": "text", "text": ...}), model, stream, stream_options.include_usage, max_tokens (or
max_completion_tokens, at most --max_new_tokens; default: that or what the context leaves), temperature (0..2),
top_p, top_k and min_p (vLLM's extensions), stop (up to 4 strings), n (1 only), user. Fields that would change
the answer and are not supported (seed, logprobs, tools, response_format, penalties other than 0, ...) are
refused with 400 and the field's name, never ignored.

Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for a malformed body or a
prompt over --max_prompt_tokens (code context_length_exceeded), 413 for a body over 4 MB, 404 for an unknown
model or path, 429 when --max_waiting requests already wait for a row (with Retry-After), 504 when a request
outlives --request_timeout (a stream ends with an error event instead), 503 once the engine has failed.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
import uuid
from typing import Any

from absl import app, flags, logging

from llm_jax.data import chat
from llm_jax.eval.tasks import show
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.batching import Batcher, QueueFull
from llm_jax.inference.engine import Sampling

MAX_BODY_BYTES = 4 << 20  # a request body larger than this is refused with 413 unread
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
# Fields a client may send that this server honours or that do not change the answer.
_FIELDS = {"messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
           "top_p", "top_k", "min_p", "stop", "n", "user"}
_ZERO_OK = {"frequency_penalty", "presence_penalty"}  # accepted only at their neutral value 0
_FALSE_OK = {"logprobs", "parallel_tool_calls"}  # accepted only when false


class BadRequest(Exception):

  def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
    super().__init__(message)
    self.status, self.param, self.code = status, param, code


def _number(body: dict, key: str, low: float, high: float, default, integer: bool = False):
  value = body.get(key, default)
  if value is None:
    return default
  kinds = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
    raise BadRequest(f"{key}={value!r}: must be {'an integer' if integer else 'a number'} in [{low}, {high}]", key)
  return value


class Server:
  """The HTTP front end: validation and OpenAI's wire format here, scheduling in the Batcher.

      server = Server(assistant, "sft_tiny", port=0)      # port 0: any free port (server.url says which)
      threading.Thread(target=server.serve_forever, daemon=True).start()
      ...
      server.close()
  """

  def __init__(self, assistant: Assistant, model_name: str, *, host: str = "127.0.0.1", port: int = 8000,
               rows: int = 8, chunk: int = 8, max_waiting: int = 64, max_new_tokens: int = 512,
               max_prompt_tokens: int | None = None, request_timeout: float = 120.0):
    self.assistant, self.tokenizer, self.model_name = assistant, assistant.tokenizer, model_name
    self.max_len = assistant.engine.model.cfg.max_seq_len
    self.max_new_tokens, self.request_timeout = max_new_tokens, request_timeout
    self.max_prompt_tokens = min(max_prompt_tokens or self.max_len - 1, self.max_len - 1)
    self.batcher = Batcher(assistant, rows, chunk=chunk, max_waiting=max_waiting)
    self.created = int(time.time())
    with open(PAGE, encoding="utf-8") as f:
      self.page = f.read().encode()
    handler = type("Handler", (_Handler,), {"server_": self})
    self.httpd = _HTTPServer((host, port), handler)

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}"

  def serve_forever(self):
    self.httpd.serve_forever(poll_interval=0.2)

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.batcher.close()

  # ------------------------------------------------------------------------------------------ requests

  def parse(self, body: Any) -> dict:
    """The validated request: prompt tokens, limits, sampling, stream options. BadRequest names the field."""
    if not isinstance(body, dict):
      raise BadRequest("the body must be a JSON object")
    for key, value in body.items():
      if key in _FIELDS or (key in _ZERO_OK and value in (0, None)) or (key in _FALSE_OK and not value):
        continue
      raise BadRequest(f"{key!r} is not supported by this server" +
                       (" (it runs its own tools: calculator, python)" if key in ("tools", "tool_choice", "functions")
                        else ""), key)
    if body.get("model") not in (None, self.model_name):
      raise BadRequest(f"the model {body['model']!r} does not exist; this server serves {self.model_name!r}", "model",
                       status=404, code="model_not_found")
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
      raise BadRequest("n must be 1", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise BadRequest("messages must be a non-empty list", "messages")
    try:
      prompt = chat.render_for_completion(messages, self.tokenizer, self.assistant.markers)
    except chat.ConversationError as e:
      raise BadRequest(f"messages: {e}", "messages") from None
    if len(prompt) > self.max_prompt_tokens:
      raise BadRequest(f"the messages take {len(prompt)} tokens; this server takes prompts of up to "
                       f"{self.max_prompt_tokens} tokens (the model's context is {self.max_len})",
                       "messages", code="context_length_exceeded")
    room = min(self.max_new_tokens, self.max_len - len(prompt))
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_new = _number(body, key, 1, room, room, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s
                                                                                    for s in stop)):
      raise BadRequest("stop must be a non-empty string or a list of up to 4 of them", "stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
      raise BadRequest("stream_options may only hold include_usage", "stream_options")
    sampling = Sampling(temperature=float(_number(body, "temperature", 0, 2, 1.0)),
                        top_k=_number(body, "top_k", 0, 1 << 30, 0, integer=True),
                        top_p=float(_number(body, "top_p", 0, 1, 1.0)), min_p=float(_number(body, "min_p", 0, 1, 0.0)))
    if body.get("top_p") == 0:
      raise BadRequest("top_p must be above 0", "top_p")
    return {"prompt": prompt, "max_new": max_new, "sampling": sampling, "stop": stop or [],
            "stream": bool(body.get("stream")), "usage": bool(options.get("include_usage"))}

  def submit(self, req: dict):
    try:
      return self.batcher.submit(req["prompt"], req["max_new"], req["sampling"], timeout=self.request_timeout)
    except QueueFull as e:
      raise BadRequest(f"the server is busy ({e}); retry later", status=429, code="rate_limit_exceeded") from None
    except RuntimeError as e:
      raise BadRequest(str(e), status=503) from None

  def replies(self, request, stop: list[str]):
    """The reply's text so far, as the batcher writes it, the last one whole: tool calls appear once their
    output is in, stop strings cut the reply (and cancel the request). An engine that makes no progress ends
    the request with finish_reason "error"."""
    parts = []
    hold = max(map(len, stop), default=1) - 1  # an unfinished stop string may be hiding at the end
    try:
      for tokens in request.updates(timeout=self.request_timeout + 30):
        parts = chat.parse_assistant(tokens, self.tokenizer, self.assistant.markers)
        shown = parts[:-1] if parts and parts[-1]["type"] == "tool_call" else parts  # a call still running
        text = show(shown).rstrip("\ufffd")  # a character whose bytes are not all out yet
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:  # finish_reason "stop", even if the turn had just ended at its token limit
          request.stopped_by_string = True
          request.cancel()
          yield text[:cut]
          return
        yield text[:len(text) - hold] if hold else text
    except TimeoutError as e:
      request.cancel()
      request._finish("error", f"the engine made no progress: {e}")  # pylint: disable=protected-access
      return
    yield show(parts)

  def failure(self, request) -> tuple[int, str] | None:
    """(HTTP status, message) of a request that timed out or whose engine failed, else None."""
    if request.finish_reason == "timeout":
      return 504, f"the request took longer than {self.request_timeout} s"
    if request.finish_reason == "error":
      return 503, f"the engine failed: {request.error}"
    return None


def _finish_reason(request) -> str:
  return "length" if request.finish_reason == "length" and not request.stopped_by_string else "stop"


class _HTTPServer(http.server.ThreadingHTTPServer):
  request_queue_size = 1024  # connections the kernel holds before accept(): the default 5 resets bursts
  daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
  server_: Server
  protocol_version = "HTTP/1.1"

  def log_message(self, format, *args):  # noqa: A002 (the base class's name)
    logging.debug("%s " + format, self.address_string(), *args)

  def _send(self, status: int, payload: bytes, content_type: str = "application/json", headers: dict | None = None):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(payload)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(payload)

  def _json(self, status: int, obj: dict, headers: dict | None = None):
    self._send(status, json.dumps(obj).encode(), headers=headers)

  def _error(self, e: BadRequest):
    kind = "rate_limit_error" if e.status == 429 else "invalid_request_error" if e.status < 500 else "server_error"
    self._json(e.status, {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}},
               {"Retry-After": "1"} if e.status == 429 else None)

  def do_GET(self):  # noqa: N802 (http.server's name)
    s = self.server_
    if self.path in ("/", "/index.html"):
      self._send(200, s.page, "text/html; charset=utf-8")
    elif self.path == "/health":
      alive = s.batcher.alive
      stats = s.batcher.stats
      self._json(200 if alive else 503, {"status": "ok" if alive else "engine stopped", **s.batcher.load(),
                                         "submitted": stats.submitted, "refused": stats.refused,
                                         "finished": dict(stats.finished), "tokens": stats.tokens})
    elif self.path == "/v1/models":
      self._json(200, {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": s.created,
                                                   "owned_by": "llm_jax"}]})
    else:
      self._error(BadRequest(f"no such path: GET {self.path}", status=404))

  def do_POST(self):  # noqa: N802
    s = self.server_
    if self.path != "/v1/chat/completions":
      self._error(BadRequest(f"no such path: POST {self.path}", status=404))
      return
    try:
      raw = self.headers.get("Content-Length") or "0"
      if not raw.strip().isdigit():
        self.close_connection = True  # where the body ends is unknown
        raise BadRequest(f"Content-Length {raw!r} is not a byte count")
      length = int(raw)
      if length > MAX_BODY_BYTES:
        self.close_connection = True  # the unread body stays in the socket
        raise BadRequest(f"the body has {length} bytes; the limit is {MAX_BODY_BYTES}", status=413)
      try:
        body = json.loads(self.rfile.read(length) or b"null")
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
      req = s.parse(body)
      request = s.submit(req)
    except BadRequest as e:
      self._error(e)
      return
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": s.model_name}
    if req["stream"]:
      self._stream(request, req, head)
    else:
      self._complete(request, req, head)

  def _usage(self, request, req) -> dict:
    return {"prompt_tokens": len(req["prompt"]), "completion_tokens": request.written,
            "total_tokens": len(req["prompt"]) + request.written}

  def _complete(self, request, req, head):
    text = ""
    for text in self.server_.replies(request, req["stop"]):
      pass
    failure = self.server_.failure(request)
    if failure:
      self._error(BadRequest(failure[1], status=failure[0]))
      return
    self._json(200, {**head, "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": _finish_reason(request)}],
                     "usage": self._usage(request, req)})

  def _stream(self, request, req, head):
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")  # the end of the stream is the end of the connection
    self.end_headers()
    self.close_connection = True

    def event(obj):
      self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
      self.wfile.flush()

    def chunk(delta, finish=None):
      event({**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
      chunk({"role": "assistant", "content": ""})
      sent = ""
      for text in self.server_.replies(request, req["stop"]):
        if text.startswith(sent) and len(text) > len(sent):
          chunk({"content": text[len(sent):]})
          sent = text
      failure = self.server_.failure(request)
      if failure:
        event({"error": {"message": failure[1], "type": "server_error", "param": None,
                         "code": request.finish_reason}})
      else:
        chunk({}, _finish_reason(request))
        if req["usage"]:
          event({**head, "object": "chat.completion.chunk", "choices": [], "usage": self._usage(request, req)})
      self.wfile.write(b"data: [DONE]\n\n")
      self.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):  # the client went away: free its row
      request.cancel()


# ------------------------------------------------------------------------------------------------ load test

def load_test(url: str, model: str, requests: int = 200, max_tokens: int = 16, timeout: float = 300.0,
              prompt: str = "What is 12 * 7?") -> dict:
  """Sends `requests` streaming chat requests at once (one thread each, raw HTTP) and reports how each
  ended: answered (200 and a finished stream), refused (429), failed (anything else) or hung (no end within
  `timeout`); p50/p99 latency and time to first content of the answered; aggregate completion tokens/s."""
  import http.client  # pylint: disable=import-outside-toplevel
  import urllib.parse  # pylint: disable=import-outside-toplevel

  address = urllib.parse.urlsplit(url)
  body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                     "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": 0})
  results: list[dict] = [{} for _ in range(requests)]
  go = threading.Barrier(requests + 1)

  def one(i):
    out = results[i]
    try:
      conn = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
      go.wait()
      start = time.monotonic()
      conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
      response = conn.getresponse()
      out["status"] = response.status
      if response.status != 200:
        response.read()
        return
      for line in response:
        if b'"content": "' in line and b'"content": ""' not in line and "first" not in out:
          out["first"] = time.monotonic() - start
        if line.startswith(b"data: {") and b'"usage"' in line:
          out["tokens"] = json.loads(line[6:])["usage"]["completion_tokens"]
        if line.strip() == b"data: [DONE]":
          out["latency"] = time.monotonic() - start
      conn.close()
    except Exception as e:  # noqa: BLE001 (counted as failed, with its reason)
      out["exception"] = f"{type(e).__name__}: {e}"

  threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(requests)]
  for t in threads:
    t.start()
  go.wait()
  start = time.monotonic()
  deadline = start + timeout + 10
  for t in threads:
    t.join(max(0.0, deadline - time.monotonic()))
  wall = time.monotonic() - start
  answered = [r for r in results if r.get("status") == 200 and "latency" in r and "tokens" in r]
  latencies = sorted(r["latency"] for r in answered)
  firsts = sorted(r["first"] for r in answered if "first" in r)
  pick = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None
  failures = [r for r in results if r not in answered and r.get("status") != 429]
  return {"requests": requests, "answered": len(answered), "refused_429": sum(r.get("status") == 429 for r in results),
          "failed": len(failures), "hung": sum(t.is_alive() for t in threads),
          "failures": [r.get("exception") or f"HTTP {r.get('status')}" for r in failures][:5],
          "p50_latency_s": pick(latencies, 0.5), "p99_latency_s": pick(latencies, 0.99),
          "p50_first_token_s": pick(firsts, 0.5), "p99_first_token_s": pick(firsts, 0.99),
          "completion_tokens": sum(r["tokens"] for r in answered), "wall_s": round(wall, 3),
          "tokens_per_s": round(sum(r["tokens"] for r in answered) / wall, 1)}


# ------------------------------------------------------------------------------------------------ the CLI

def define_flags():
  """The CLI's flags; defined only when this module is the program, so that others (llm_jax.bench) can
  import the server without their flag names colliding."""
  flags.DEFINE_string("workdir", None, "A fine-tuned (stage sft, dpo, ppo or grpo) workdir.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "Port (0: any free port; the server prints the one it got).")
  flags.DEFINE_string("model_name", None, "The model's name in the API (default: the workdir's name).")
  flags.DEFINE_integer("rows", 8, "Requests decoded together (the batch).")
  flags.DEFINE_integer("chunk", 8, "Decode steps between slot boundaries (where requests join and leave).")
  flags.DEFINE_integer("max_waiting", 64, "Requests that may wait for a row; beyond: HTTP 429.")
  flags.DEFINE_integer("max_new_tokens", 512, "The most tokens a reply may have.")
  flags.DEFINE_integer("max_prompt_tokens", None, "The most tokens a request's messages may take (default and "
                       "upper bound: the model's context - 1).")
  flags.DEFINE_float("request_timeout", 120.0, "Seconds a request may take, waiting included.")
  flags.DEFINE_bool("no_tools", False, "Do not run tool calls (the model then writes their output).")
  flags.DEFINE_float("tool_timeout", 5.0, "Seconds per Python tool run.")


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    assistant = Assistant.from_workdir(f.workdir, None if f.no_tools else tools_lib.with_timeout(f.tool_timeout))
  except (FileNotFoundError, KeyError, ValueError) as e:
    sys.exit(f"error: --workdir={f.workdir}: {e}")
  name = f.model_name or os.path.basename(os.path.normpath(f.workdir))
  try:
    server = Server(assistant, name, host=f.host, port=f.port, rows=f.rows, chunk=f.chunk, max_waiting=f.max_waiting,
                    max_new_tokens=f.max_new_tokens, max_prompt_tokens=f.max_prompt_tokens,
                    request_timeout=f.request_timeout)
  except OSError as e:
    sys.exit(f"error: cannot listen on {f.host}:{f.port}: {e}")
  print(f"llm_jax serving {name!r} on {server.url} (tools {'off' if f.no_tools else 'on'}); Ctrl-C stops", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()


if __name__ == "__main__":
  define_flags()
  app.run(main)
