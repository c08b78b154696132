"""Text in, text out: prompts are encoded (starting with BOS, like training pieces), decoded by the KV-cache
engine (llm_jax/inference/engine.py) and stopped at EOS, which is left out of the text.

    texts = sample.generate(model, params, tokenizer, ["def "], max_new_tokens=64, temperature=0.8, top_p=0.95)
    for pieces in sample.stream(model, params, tokenizer, ["def "], max_new_tokens=64): print(pieces[0], end="")
"""

from __future__ import annotations

from typing import Iterator

from llm_jax.data import pipeline
from llm_jax.inference import engine as engine_lib


def _setup(model, params, tokenizer, prompts, engine):
  engine = engine or engine_lib.Engine(model, params)
  start = pipeline.start_ids(tokenizer)
  stop = [tokenizer.eos_id] if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 else []
  return engine, [start + tokenizer.encode(p) for p in prompts], stop


def _text(tokenizer, ids: list[int], stop: list[int]) -> str:
  return tokenizer.decode([t for t in ids if t not in stop])


def generate(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int = 0,
             engine: engine_lib.Engine | None = None) -> list[str]:
  """Continuations (the text after each prompt); temperature 0 is greedy. Pass an `engine` to reuse its
  compiled functions (and its mesh / quantization) across calls."""
  engine, encoded, stop = _setup(model, params, tokenizer, prompts, engine)
  sampling = engine_lib.Sampling(temperature, top_k, top_p, min_p)
  outs = engine.generate(encoded, max_new_tokens, sampling, stop_ids=stop, seed=seed)
  return [_text(tokenizer, out, stop) for out in outs]


def stream(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int = 0, chunk: int = 8,
           engine: engine_lib.Engine | None = None) -> Iterator[list[str]]:
  """Yields each row's new text every `chunk` tokens (decoded from all its tokens so far, so multi-token
  characters come out whole)."""
  engine, encoded, stop = _setup(model, params, tokenizer, prompts, engine)
  sampling = engine_lib.Sampling(temperature, top_k, top_p, min_p)
  tokens, shown = [[] for _ in prompts], ["" for _ in prompts]
  for new in engine.stream(encoded, max_new_tokens, sampling, stop_ids=stop, seed=seed, chunk=chunk):
    pieces = []
    for row, ids in enumerate(new):
      tokens[row] += ids
      text = _text(tokenizer, tokens[row], stop)
      pieces.append(text[len(shown[row]):] if text.startswith(shown[row]) else text)
      shown[row] = text
    yield pieces
