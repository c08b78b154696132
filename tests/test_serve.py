"""Serving: continuous batching gives each request what it would get alone; the OpenAI-compatible HTTP API
(through the `openai` client and raw HTTP, streaming and not, its errors); a bounded load test of 200
concurrent requests; and the web chat page driven in headless Chromium. A micro model with random weights
(the server's plumbing does not need a trained one; tests/test_sft.py serves a fine-tuned one with a tool
call)."""

import http.client
import json
import os
import shutil
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from llm_jax.data import chat
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.batching import Batcher, QueueFull
from llm_jax.inference.engine import Engine, Sampling
from llm_jax.model import ModelConfig, Transformer
from llm_jax.serve import Server, load_test

QUESTIONS = ["hi", "What is the capital of France?", "def f(x):", "Tell me about lists and dicts in Python.",
             "ok", "How many r's are in strawberry?"]


def _assistant(tok, tools=None, max_seq_len=64, seed=0, slot_multiple=64):
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=max_seq_len)
  model = Transformer(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"])
  return Assistant(Engine(model, params, slot_multiple=slot_multiple), tok, tools)


def _prompt(tok, question):
  return chat.render_for_completion([{"role": "user", "content": question}], tok)


def test_continuous_batching_matches_one_request_at_a_time(small_tokenizer):
  tok = small_tokenizer
  assistant = _assistant(tok, slot_multiple=8)
  end = assistant.markers.assistant[1]
  # A cache just big enough for the longest row plus a prompt and a chunk: rows fill it in a few chunks, so
  # compaction runs while rows are mid-answer.
  batcher = Batcher(assistant, rows=2, chunk=4, slots=64 + 16 + 8)
  budgets = [12, 20, 7, 16, 9, 20]
  try:
    requests = []
    for i, (question, budget) in enumerate(zip(QUESTIONS, budgets)):
      requests.append(batcher.submit(_prompt(tok, question), budget, Sampling()))
      time.sleep(0.03 * (i % 3))  # some join while others are decoding
    for request in requests:
      for _ in request.updates(timeout=120):
        pass
  finally:
    batcher.close()
  for question, budget, request in zip(QUESTIONS, budgets, requests):
    alone = assistant.engine.generate([_prompt(tok, question)], budget, stop_ids=[end])[0]
    assert request.tokens == alone, question
    assert request.finish_reason == ("stop" if alone[-1:] == [end] else "length")
  # 6 requests through 2 rows: rows were reused and their leftover slots reclaimed. The requests take ~180
  # slots (16-token prompt buckets + answers) of an 88-slot cache, so it was compacted at least twice, with
  # rows mid-answer (a compaction that lost entries fails the comparison above).
  assert batcher.stats.finished["stop"] + batcher.stats.finished["length"] == 6
  assert batcher.stats.compactions >= 2


def test_queue_bound_cancel_timeout_and_bad_requests(small_tokenizer):
  tok = small_tokenizer
  batcher = Batcher(_assistant(tok), rows=1, chunk=2, max_waiting=1)
  prompt = _prompt(tok, "hi")
  try:
    first = batcher.submit(prompt, 40)
    while batcher.load()["active"] == 0:
      time.sleep(0.01)
    second = batcher.submit(prompt, 3)  # waits for the one row
    with pytest.raises(QueueFull):
      batcher.submit(prompt, 3)
    assert batcher.stats.refused == 1
    first.cancel()
    for _ in second.updates(timeout=120):
      pass
    assert first.finish_reason == "cancelled" and len(first.tokens) < 40
    assert second.finish_reason in ("stop", "length") and second.written <= 3
    late = batcher.submit(prompt, 3, timeout=0.0)
    assert list(late.updates(timeout=60)) == [] and late.finish_reason == "timeout"
    with pytest.raises(ValueError, match="max_seq_len is 64"):
      batcher.submit(list(range(64)), 3)
    with pytest.raises(ValueError, match="at least 1"):
      batcher.submit(prompt, 0)
  finally:
    batcher.close()
  with pytest.raises(RuntimeError, match="closed"):
    batcher.submit(prompt, 3)


@pytest.fixture(scope="module")
def server(small_tokenizer):
  server = Server(_assistant(small_tokenizer, max_seq_len=128), "micro", port=0, rows=8, max_waiting=48,
                  max_new_tokens=32, request_timeout=60)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.close()
  thread.join(timeout=30)


def _post(server, body, raw: bytes | None = None):
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=120)
  conn.request("POST", "/v1/chat/completions", raw if raw is not None else json.dumps(body),
               {"Content-Type": "application/json"})
  response = conn.getresponse()
  return response.status, json.loads(response.read())


def test_openai_client_streams_and_completes(server):
  openai = pytest.importorskip("openai")
  client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
  assert [m.id for m in client.models.list().data] == ["micro"]
  messages = [{"role": "user", "content": "What is 2 + 3?"}]
  whole = client.chat.completions.create(model="micro", messages=messages, max_tokens=12, temperature=0)
  assert whole.choices[0].finish_reason in ("stop", "length")
  assert 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
  pieces, finish, usage = [], None, None
  for event in client.chat.completions.create(model="micro", messages=messages, max_tokens=12, temperature=0,
                                              stream=True, stream_options={"include_usage": True}):
    if event.choices:
      pieces.append(event.choices[0].delta.content or "")
      finish = event.choices[0].finish_reason or finish
    usage = event.usage or usage
  # Greedy: the stream adds up to the same answer, in more than one piece.
  assert "".join(pieces) == whole.choices[0].message.content
  assert sum(1 for p in pieces if p) > 1 and finish == whole.choices[0].finish_reason
  assert usage.completion_tokens == whole.usage.completion_tokens
  with pytest.raises(openai.NotFoundError, match="serves 'micro'"):
    client.chat.completions.create(model="gpt-4o", messages=messages)
  with pytest.raises(openai.BadRequestError, match="seed"):
    client.chat.completions.create(model="micro", messages=messages, seed=1)


def test_stop_strings_limits_and_malformed_requests(server):
  body = {"model": "micro", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}
  status, whole = _post(server, body)
  assert status == 200
  text = whole["choices"][0]["message"]["content"]
  stop = text[len(text) // 2:len(text) // 2 + 2]
  assert len(stop) == 2 and stop not in text[:len(text) // 2]
  status, cut = _post(server, {**body, "stop": [stop]})
  assert status == 200 and cut["choices"][0]["message"]["content"] == text[:text.index(stop)]
  assert cut["choices"][0]["finish_reason"] == "stop"
  # A stop string in the last chunk, as the turn reaches max_tokens: still "stop".
  assert whole["choices"][0]["finish_reason"] == "length" and text.index(text[-2:]) == len(text) - 2
  status, end = _post(server, {**body, "stop": [text[-2:]]})
  assert (end["choices"][0]["message"]["content"], end["choices"][0]["finish_reason"]) == (text[:-2], "stop")
  # Typed parts in OpenAI's shape are accepted as content.
  status, parts = _post(server, {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
  assert status == 200 and parts["choices"][0]["message"]["content"] == text

  def error(status, body=None, raw=None):
    got, answer = _post(server, body, raw)
    assert got == status, answer
    return answer["error"]

  assert "not valid JSON" in error(400, raw=b"{nope")["message"]
  assert error(400, [1, 2])["message"] == "the body must be a JSON object"
  assert error(400, {**body, "logit_bias": {"5": 1}})["param"] == "logit_bias"
  assert error(400, {**body, "temperature": 3})["param"] == "temperature"
  assert error(400, {**body, "max_tokens": 33})["param"] == "max_tokens"  # over the server's 32
  assert error(400, {**body, "n": 2})["param"] == "n"
  assert "two user messages in a row" in error(400, {**body, "messages": [{"role": "user", "content": "a"}] * 2})[
      "message"]
  assert "message 0" in error(400, {**body, "messages": [{"role": "robot", "content": "a"}]})["message"]
  long = {**body, "messages": [{"role": "user", "content": "word " * 400}]}
  assert error(400, long)["code"] == "context_length_exceeded"
  assert error(404, {**body, "model": "other"})["code"] == "model_not_found"
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.putrequest("POST", "/v1/chat/completions")
  conn.putheader("Content-Length", str(64 << 20))  # refused before a byte of the body is read
  conn.endheaders()
  response = conn.getresponse()
  assert response.status == 413 and "limit is" in json.loads(response.read())["error"]["message"]
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.putrequest("POST", "/v1/chat/completions")
  conn.putheader("Content-Length", "-5")  # would read to the end of the connection, i.e. hang
  conn.endheaders()
  response = conn.getresponse()
  assert response.status == 400 and "byte count" in json.loads(response.read())["error"]["message"]
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.request("GET", "/nowhere")
  assert conn.getresponse().status == 404


def test_load_200_concurrent_requests_are_answered_or_refused(server):
  result = load_test(server.url, "micro", requests=200, max_tokens=16, timeout=240)
  print(json.dumps(result))  # the figures (pytest -s shows them; the issue note quotes a run)
  assert result["hung"] == 0 and result["failed"] == 0, result
  assert result["answered"] + result["refused_429"] == 200
  # 48 waiting places (rows take waiting requests at slot boundaries): the burst overflows the queue, and
  # everything admitted is answered.
  assert result["refused_429"] > 0 and result["answered"] >= 48
  assert result["p99_latency_s"] >= result["p50_latency_s"] > 0 and result["tokens_per_s"] > 0
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.request("GET", "/health")
  health = json.loads(conn.getresponse().read())
  assert health["status"] == "ok" and health["active"] == 0 and health["waiting"] == 0
  assert health["refused"] >= result["refused_429"]


def _browser():
  """A headless Chromium driven through Selenium and Debian's chromedriver; skipped only where they are not
  installed, unless LLM_JAX_REQUIRE_BROWSER is set (CI installs them and sets it)."""
  chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
  driver = shutil.which("chromedriver")
  try:
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
  except ImportError:
    webdriver = None
  if not (chromium and driver and webdriver):
    if os.environ.get("LLM_JAX_REQUIRE_BROWSER"):
      pytest.fail(f"chromium={chromium} chromedriver={driver} selenium={webdriver is not None}: install them")
    pytest.skip("needs chromium, chromedriver and selenium (Debian: apt install chromium chromium-driver)")
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage"):
    options.add_argument(flag)
  return webdriver.Chrome(service=Service(driver), options=options)


def test_web_page_streams_a_reply_in_headless_chromium(server):
  browser = _browser()
  try:
    browser.get(server.url + "/")
    wait = lambda condition, seconds=60: _until(lambda: browser.execute_script(condition), seconds)
    wait("return document.getElementById('model').textContent === 'micro'")
    browser.find_element("id", "max_tokens").clear()
    browser.find_element("id", "max_tokens").send_keys("24")
    browser.find_element("id", "prompt").send_keys("hi")
    browser.find_element("id", "send").click()
    wait("const d = document.querySelector('.msg.assistant'); return d && d.dataset.done === 'true'")
    reply = browser.execute_script("const d = document.querySelector('.msg.assistant');"
                                   "return [d.textContent, d.dataset.chunks, d.dataset.finish, d.className]")
    # Tool calls in a reply (as the server writes them) are set apart.
    tools = browser.execute_script("const d = document.createElement('div');"
                                   "render(d, 'Let me see. [calculator: 2+3] -> 5 It is 5.');"
                                   "return [...d.querySelectorAll('.tool')].map(s => s.textContent)")
  finally:
    browser.quit()
  text, chunks, finish, css = reply
  assert css == "msg assistant", text  # not turned into an error bubble
  # The page shows the same greedy answer the API gives, and it arrived in several streamed pieces.
  status, whole = _post(server, {"model": "micro", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24,
                                 "temperature": 0})
  assert status == 200 and text == whole["choices"][0]["message"]["content"] and text
  assert int(chunks) > 1 and finish == whole["choices"][0]["finish_reason"]
  assert tools == ["[calculator: 2+3] -> 5 "]


def _until(condition, seconds: float):
  deadline = time.monotonic() + seconds
  while not condition():
    if time.monotonic() > deadline:
      raise TimeoutError(f"not true within {seconds} s")
    time.sleep(0.1)
