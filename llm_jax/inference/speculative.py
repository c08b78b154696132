"""Speculative decoding: a small draft model proposes `gamma` tokens, the target checks them in one pass.

    outs, stats = speculative.generate(target_engine, draft_engine, prompts, max_new_tokens=64, gamma=4)

Each round (one jitted `lax.while_loop` iteration) the draft feeds the last emitted token x and samples
d_1..d_gamma one at a time; the target then runs [x, d_1, ..., d_gamma] as one chunk, which gives its
distributions p_1..p_{gamma+1} for every proposed position at the cost of one forward pass.
- Greedy (temperature 0): d_i is accepted while it equals argmax p_i; the first mismatch is replaced by
  argmax p_i, and if all match argmax p_{gamma+1} is added. The output is token for token that of plain
  greedy decoding with the target alone.
- Sampled: d_i ~ q_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); the first rejected one is
  replaced by a draw from normalize(max(0, p_i - q_i)), and if all are accepted one more token is drawn
  from p_{gamma+1} (Leviathan et al. 2023; Chen et al. 2023). The output is distributed exactly as sampling
  from the target (with the same temperature / top-k / top-p / min-p filters applied to p and q).
Rows accept different numbers of tokens; both caches roll back the rejected ones by marking their slots
invalid (model/transformer.py), so every round uses gamma + 1 slots per row. The conv mixer's rolling
state cannot roll back, so hybrid ("C") models are refused.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.inference import engine as engine_lib
from llm_jax.inference.engine import NO_TOKEN, Sampling


def rollback(cache: dict, drop_B) -> dict:
  """Forgets the last drop_B[b] tokens of row b: their slots become invalid, the row's position steps back."""
  slots = jnp.arange(cache["valid"].shape[1])[None, :]
  dropped = (slots >= cache["index"] - drop_B[:, None]) & (slots < cache["index"])
  return {**cache, "valid": cache["valid"] & ~dropped, "pos": cache["pos"] - drop_B}


def _probs(logits, sampling: Sampling):
  return jax.nn.softmax(engine_lib.filtered_logits(logits, sampling), axis=-1)


def _accept(p_BGV, q_BGV, draft_BG, key, sampling: Sampling):
  """(number of accepted draft tokens [B], the token that follows them [B]) for p over gamma+1 positions."""
  gamma = draft_BG.shape[1]
  rows = jnp.arange(draft_BG.shape[0])
  accept_key, next_key = jax.random.split(key)

  def greedy():
    accepted_B = jnp.sum(jnp.cumprod(draft_BG == jnp.argmax(p_BGV[:, :gamma], axis=-1), axis=1), axis=1)
    return accepted_B, jnp.argmax(p_BGV[rows, accepted_B], axis=-1)

  def sampled():
    p_d = jnp.take_along_axis(p_BGV[:, :gamma], draft_BG[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q_BGV, draft_BG[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(accept_key, draft_BG.shape)
    accepted_B = jnp.sum(jnp.cumprod(u * q_d < p_d, axis=1), axis=1)
    q_pad = jnp.concatenate([q_BGV, jnp.zeros_like(q_BGV[:, :1])], axis=1)  # nothing to subtract after all
    residual_BV = jnp.maximum(p_BGV[rows, accepted_B] - q_pad[rows, accepted_B], 0)
    residual_BV = jnp.where(jnp.sum(residual_BV, -1, keepdims=True) > 0, residual_BV, p_BGV[rows, accepted_B])
    return accepted_B, jax.random.categorical(next_key, jnp.log(residual_BV))

  accepted_B, next_B = jax.lax.cond(sampling.temperature > 0, sampled, greedy)
  return accepted_B.astype(jnp.int32), next_B.astype(jnp.int32)


def decode(target, target_params, draft, draft_params, t_cache, d_cache, last_B, rng, sampling: Sampling,
           stop_ids, steps: int, gamma: int):
  """([B, steps] tokens, NO_TOKEN after a row stops; {"rounds", "accepted", "proposed"} draft tokens).

  t_cache / d_cache hold every token but the last (last_B), which each round feeds first.
  """
  batch = last_B.shape[0]
  stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
  def room(cache):  # a round writes gamma + 1 slots
    return cache["index"] + gamma + 1 <= engine_lib.cache_slots(cache)

  def cond(carry):
    t_cache, d_cache, _, _, n_B, done_B = carry[:6]
    return jnp.any(~done_B & (n_B < steps)) & room(t_cache) & room(d_cache)

  def body(carry):
    t_cache, d_cache, last_B, out_BN, n_B, done_B, rng, rounds, accepted_total, proposed_total = carry
    rng, draft_key, accept_key = jax.random.split(rng, 3)
    real_B1 = (~done_B)[:, None].astype(jnp.int32)

    def propose(i, c):
      d_cache, token_B, draft_BG, q_BGV = c
      logits, d_cache = draft.apply({"params": draft_params}, token_B[:, None], segment_ids_BT=real_B1,
                                    cache=d_cache, last_only=True)
      new_B = engine_lib.sample_tokens(logits, jax.random.fold_in(draft_key, i), sampling)
      keep = i < gamma  # the last feed only stores d_gamma in the cache
      draft_BG = jnp.where(keep, draft_BG.at[:, jnp.minimum(i, gamma - 1)].set(new_B), draft_BG)
      q_BGV = jnp.where(keep, q_BGV.at[:, jnp.minimum(i, gamma - 1)].set(_probs(logits, sampling)), q_BGV)
      return d_cache, jnp.where(keep, new_B, token_B), draft_BG, q_BGV

    vocab = draft.cfg.vocab_size
    init = (d_cache, last_B, jnp.zeros((batch, gamma), jnp.int32), jnp.zeros((batch, gamma, vocab), jnp.float32))
    d_cache, _, draft_BG, q_BGV = jax.lax.fori_loop(0, gamma + 1, propose, init)

    chunk_BG = jnp.concatenate([last_B[:, None], draft_BG], axis=1)
    logits_BGV, t_cache = target.apply({"params": target_params}, chunk_BG,
                                       segment_ids_BT=jnp.broadcast_to(real_B1, chunk_BG.shape), cache=t_cache)
    accepted_B, next_B = _accept(_probs(logits_BGV, sampling), q_BGV, draft_BG, accept_key, sampling)
    drop_B = jnp.where(done_B, 0, gamma - accepted_B)
    t_cache, d_cache = rollback(t_cache, drop_B), rollback(d_cache, drop_B)

    # Emitted this round: d_1..d_a, then next; cut after the first stop token.
    emitted_BG = jnp.concatenate([draft_BG, jnp.zeros_like(next_B[:, None])], axis=1)
    emitted_BG = emitted_BG.at[jnp.arange(batch), accepted_B].set(next_B)
    count_B = accepted_B + 1
    is_stop_BG = jnp.any(emitted_BG[..., None] == stop_ids, axis=-1) & (jnp.arange(gamma + 1) < count_B[:, None])
    stopped_B = jnp.any(is_stop_BG, axis=1)
    count_B = jnp.where(stopped_B, jnp.argmax(is_stop_BG, axis=1) + 1, count_B)
    count_B = jnp.where(done_B, 0, count_B)
    columns_BG = n_B[:, None] + jnp.arange(gamma + 1)[None, :]
    columns_BG = jnp.where(jnp.arange(gamma + 1)[None, :] < count_B[:, None], columns_BG, out_BN.shape[1])
    out_BN = out_BN.at[jnp.arange(batch)[:, None], columns_BG].set(emitted_BG, mode="drop")
    n_B = n_B + count_B
    accepted_total = accepted_total + jnp.where(done_B, 0, accepted_B)
    proposed_total = proposed_total + jnp.where(done_B, 0, gamma)
    last_B = jnp.where(count_B > 0, next_B, last_B)
    done_B = done_B | stopped_B | (n_B >= steps)
    return (t_cache, d_cache, last_B, out_BN, n_B, done_B, rng, rounds + 1, accepted_total, proposed_total)

  out_BN = jnp.full((batch, steps + gamma + 1), NO_TOKEN, jnp.int32)
  zeros = jnp.zeros((batch,), jnp.int32)
  carry = (t_cache, d_cache, last_B, out_BN, zeros, jnp.zeros((batch,), bool), rng, jnp.int32(0), zeros, zeros)
  carry = jax.lax.while_loop(cond, body, carry)
  return carry[3][:, :steps], {"rounds": carry[7], "accepted": jnp.sum(carry[8]), "proposed": jnp.sum(carry[9])}


def generate(target_engine: engine_lib.Engine, draft_engine: engine_lib.Engine, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, gamma: int = 4, sampling: Sampling = Sampling(), stop_ids: Sequence[int] = (),
             seed: int = 0):
  """(each row's tokens, {"rounds", "acceptance"}); the engines' models must share the vocabulary."""
  target, draft = target_engine.model, draft_engine.model
  for name, model in (("target", target), ("draft", draft)):
    if "C" in model.cfg.layer_pattern:
      raise ValueError(f"speculative decoding needs attention-only models; the {name} has layer_pattern="
                       f"{model.cfg.layer_pattern!r} (a conv state cannot roll back)")
  if target.cfg.vocab_size != draft.cfg.vocab_size:
    raise ValueError(f"target and draft vocabularies differ: {target.cfg.vocab_size} vs {draft.cfg.vocab_size}")
  if gamma < 1:
    raise ValueError(f"gamma={gamma}: must be >= 1")
  engine_lib.check_prompts(prompts)
  context = [list(p[:-1]) for p in prompts]
  last = np.array([p[-1] for p in prompts], np.int32)
  # Every round takes gamma + 1 slots whatever it accepts: room for max_new_tokens rounds is reserved.
  slots = max_new_tokens * (gamma + 1)
  t_state = target_engine.start(context, max_new_tokens + 1, seed, extra_slots=slots)
  d_state = draft_engine.start(context, max_new_tokens + 1, seed, extra_slots=slots)
  on_cpu = jax.devices()[0].platform == "cpu"
  out, stats = _jitted(target, draft, on_cpu, max_new_tokens, gamma)(
      target_engine.params, draft_engine.params, t_state.cache, d_state.cache, last, jax.random.PRNGKey(seed),
      sampling, np.asarray(list(stop_ids) or [NO_TOKEN], np.int32))
  tokens = [[int(t) for t in row if t != NO_TOKEN] for row in np.asarray(out)]
  return tokens, {"rounds": int(stats["rounds"]),
                  "acceptance": int(stats["accepted"]) / max(int(stats["proposed"]), 1)}


@functools.lru_cache(maxsize=16)
def _jitted(target, draft, on_cpu: bool, steps: int, gamma: int):
  def fn(t_params, d_params, t_cache, d_cache, last_B, rng, sampling, stop_ids):
    return decode(target, t_params, draft, d_params, t_cache, d_cache, last_B, rng, sampling, stop_ids,
                  steps=steps, gamma=gamma)
  return jax.jit(fn, compiler_options=engine_lib.CPU_COMPILER_OPTIONS if on_cpu else None)
