"""A simple sampler without KV cache: re-runs the whole (fixed-size) buffer for every new token.

Quadratic in length and meant for short samples at the end of training; the KV-cache engine is
`llm_jax.inference.engine`'s job. One jitted `lax.fori_loop`, one compile per buffer size; prompts of
different lengths share a batch (each row keeps its own write position). temperature 0 is greedy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.data import pipeline


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _sample(model, params, tokens_BL, lengths_B, rng, temperature, max_new_tokens: int):
  rows = jnp.arange(tokens_BL.shape[0])

  def body(i, carry):
    tokens_BL, lengths_B = carry
    logits_BLV = model.apply({"params": params}, tokens_BL)
    logits_BV = logits_BLV[rows, lengths_B - 1]
    key = jax.random.fold_in(rng, i)
    sampled_B = jax.random.categorical(key, logits_BV / jnp.maximum(temperature, 1e-6))
    next_B = jnp.where(temperature > 0, sampled_B, jnp.argmax(logits_BV, axis=-1))
    return tokens_BL.at[rows, lengths_B].set(next_B.astype(tokens_BL.dtype)), lengths_B + 1

  tokens_BL, _ = jax.lax.fori_loop(0, max_new_tokens, body, (tokens_BL, lengths_B))
  return tokens_BL


def generate(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
             seed: int = 0, max_len: int | None = None) -> list[str]:
  """Continuations (text after each prompt) of `prompts`; each prompt starts with BOS, like training pieces."""
  model = model.clone(pipeline_stages=1)  # decoding runs the plain layer stack (same parameters)
  start = pipeline.start_ids(tokenizer)
  encoded = [start + tokenizer.encode(p) for p in prompts]
  max_len = max_len or model.cfg.max_seq_len
  longest = max(len(e) for e in encoded)
  if longest + max_new_tokens > max_len:
    raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                     f"max_seq_len={max_len}")
  # Slots past a row's length are never read before they are written (causal), so any filler id works.
  buffer = np.zeros((len(prompts), longest + max_new_tokens), np.int32)
  for row, ids in enumerate(encoded):
    buffer[row, :len(ids)] = ids
  lengths = np.array([len(e) for e in encoded], np.int32)
  out = np.asarray(_sample(model, params, jnp.asarray(buffer), jnp.asarray(lengths), jax.random.PRNGKey(seed),
                           jnp.float32(temperature), max_new_tokens))
  texts = []
  for row, n in enumerate(lengths):
    new = [int(t) for t in out[row, n:n + max_new_tokens]]
    if tokenizer.eos_id in new:
      new = new[:new.index(tokenizer.eos_id)]
    texts.append(tokenizer.decode(new))
  return texts
