"""RLHF pieces: GAE, PPO's loss terms and rewards on hand-computed examples, the Bradley-Terry and DPO losses,
and the one jitted ppo_step (rollout, scoring, GAE, epochs of minibatches), compiled once for a whole run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax import sharding
from llm_jax.model import ModelConfig, Transformer, heads
from llm_jax.rl import ppo, preference
from llm_jax.training import state as state_lib


def test_gae_matches_a_hand_computed_example():
  # One answer of 3 tokens (a 4th slot is padding), gamma 0.9, lambda 0.8.
  rewards = jnp.array([[0.0, 0.5, 1.0, 7.0]])
  values = jnp.array([[0.2, 0.4, 0.6, 9.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
  d2 = 1.0 + 0.9 * 0.0 - 0.6  # the value after the last token is 0: padding's 9.0 is not used
  d1 = 0.5 + 0.9 * 0.6 - 0.4
  d0 = 0.0 + 0.9 * 0.4 - 0.2
  a2 = d2
  a1 = d1 + 0.9 * 0.8 * a2
  a0 = d0 + 0.9 * 0.8 * a1
  np.testing.assert_allclose(adv, [[a0, a1, a2, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0]], rtol=1e-6)
  # gamma = lambda = 1: the advantage is the return to go minus the value.
  adv, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
  np.testing.assert_allclose(adv, [[1.5 - 0.2, 1.5 - 0.4, 1.0 - 0.6, 0.0]], rtol=1e-6)


def test_token_rewards_put_the_score_on_the_last_answer_token_and_the_kl_penalty_on_each():
  kl = jnp.array([[0.1, 0.2, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  r = ppo.token_rewards(jnp.array([2.0, -1.0, 5.0]), kl, mask, kl_coef=0.5)
  np.testing.assert_allclose(r, [[-0.05, -0.1, -0.15 + 2.0, 0], [-0.25 - 1.0, 0, 0, 0], [0, 0, 0, 0]], rtol=1e-6)


def test_whiten_uses_only_masked_entries():
  x = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  w = ppo.whiten(x, mask)
  vals = np.array([1.0, 2.0, 3.0])
  expect = (vals - vals.mean()) / vals.std()
  np.testing.assert_allclose(w[mask > 0], expect, rtol=1e-5)
  assert float(jnp.abs(w[mask == 0]).max()) == 0.0


def test_value_loss_takes_the_larger_of_the_clipped_and_unclipped_errors():
  # old 1.0, clip 0.2. New 2.0 -> clipped 1.2; return 3.0: errors 1.0 and 3.24: the clipped one is larger.
  loss, clipped = ppo.value_loss(jnp.array([2.0]), jnp.array([1.0]), jnp.array([3.0]), vf_clip=0.2)
  np.testing.assert_allclose(loss, [0.5 * 1.8 ** 2], rtol=1e-6)
  assert bool(clipped[0])
  # Return 2.5: unclipped error 0.25 < clipped 1.69: still the larger (clipped) one, no gain from moving further.
  loss, _ = ppo.value_loss(jnp.array([2.0]), jnp.array([1.0]), jnp.array([2.5]), vf_clip=0.2)
  np.testing.assert_allclose(loss, [0.5 * 1.3 ** 2], rtol=1e-6)
  # Inside the clip range: the plain squared error.
  loss, clipped = ppo.value_loss(jnp.array([1.1]), jnp.array([1.0]), jnp.array([0.1]), vf_clip=0.2)
  np.testing.assert_allclose(loss, [0.5], rtol=1e-5)
  assert not bool(clipped[0])


def test_policy_term_is_the_clipped_surrogate():
  from llm_jax.rl.grpo import clipped_loss  # pylint: disable=import-outside-toplevel  (PPO's policy term)
  ratio = jnp.array([1.5, 1.5, 0.5, 0.5, 1.1])
  adv = jnp.array([1.0, -1.0, 1.0, -1.0, 2.0])
  loss, clipped = clipped_loss(ratio, adv, 0.2, 0.2)
  # A > 0: the gain stops at ratio 1.2; A < 0: the loss keeps growing above 1 + clip (min picks the worse),
  # and below 1 - clip the gain from lowering the ratio stops at 0.8.
  np.testing.assert_allclose(loss, [-1.2, 1.5, -0.5, 0.8, -2.2], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [True, False, False, True, False])


def test_adaptive_kl_moves_the_coefficient_towards_the_target():
  kl = ppo.AdaptiveKL(0.1, target=1.0, horizon=100)
  assert kl.update(3.0, n=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped to +0.2
  kl = ppo.AdaptiveKL(0.1, target=1.0, horizon=100)
  assert kl.update(0.9, n=10) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
  assert ppo.AdaptiveKL(0.1, target=0.0, horizon=100).update(5.0, n=10) == 0.1  # fixed coefficient


class _Fixed:
  """A stand-in model whose apply returns given per-row values (last real token's score / token logits)."""

  def __init__(self, out):
    self.out = out

  def apply(self, variables, tokens, positions=None, segment_ids=None):
    del variables, positions, segment_ids
    return self.out(tokens)


def _pair_batch(rows=2, length=4):
  tokens = np.arange(1, rows * 2 * length + 1, dtype=np.int32).reshape(rows, 2, length) % 5
  return {"tokens": jnp.asarray(tokens), "segment_ids": jnp.ones((rows, 2, length), jnp.int32),
          "weights": jnp.asarray(np.tile([0, 0, 1, 1], (rows, 2, 1)).astype(np.float32))}


def test_bradley_terry_loss_accuracy_and_margin_on_known_scores():
  scores = jnp.array([2.0, 0.5, -1.0, 1.0])  # pair 0: chosen 2.0 vs 0.5 (right), pair 1: -1.0 vs 1.0 (wrong)
  model = _Fixed(lambda tokens: jnp.broadcast_to(scores[:, None], tokens.shape))
  total, (pairs, sums) = preference.reward_loss(model, margin=0.5, center_coef=0.1)(None, _pair_batch(), None)
  expect = (-math.log(1 / (1 + math.exp(-(1.5 - 0.5)))) + 0.1 * 2.5 ** 2
            - math.log(1 / (1 + math.exp(-(-2.0 - 0.5)))) + 0.1 * 0.0 ** 2)
  assert float(total) == pytest.approx(expect, rel=1e-5)
  assert float(pairs) == 2 and float(sums["accuracy"]) == 1 and float(sums["margin"]) == pytest.approx(-0.5)


def test_dpo_loss_is_log2_at_the_reference_and_follows_the_log_ratio():
  vocab = 5

  def logits(tokens):  # log-probs that depend on the row: rows 0, 2 (chosen) favour token 1 more than 1, 3
    row_bias = jnp.array([2.0, 0.0, 1.0, 1.0])[:, None, None]
    return jnp.zeros(tokens.shape + (vocab,)).at[..., 1].set(1.0) * row_bias
  model, batch = _Fixed(logits), _pair_batch()
  ref = preference.sequence_logps(model, None, *preference._rows(batch)).reshape(-1, 2)
  at_ref = dict(batch, ref_logps=ref)
  total, (pairs, sums) = preference.dpo_loss(model, beta=0.1)(None, at_ref, None)
  assert float(total) == pytest.approx(2 * math.log(2), rel=1e-5) and float(sums["accuracy"]) == 0
  # A reference that gives the chosen answers lower log-probs: h = beta * (its log-ratio difference).
  shifted = dict(batch, ref_logps=ref - jnp.array([[1.0, 0.0], [0.0, 2.0]]))
  total, (_, sums) = preference.dpo_loss(model, beta=0.1, label_smoothing=0.1)(None, shifted, None)
  h = np.array([0.1 * 1.0, 0.1 * -2.0])
  expect = np.sum(-0.9 * np.log(1 / (1 + np.exp(-h))) - 0.1 * np.log(1 / (1 + np.exp(h))))
  assert float(total) == pytest.approx(expect, rel=1e-5)
  assert float(sums["accuracy"]) == 1 and float(sums["margin"]) == pytest.approx(-1.0, rel=1e-5)


def test_ppo_step_rolls_out_scores_and_updates_in_one_compiled_program():
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                    max_seq_len=64, scan_layers=True)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  from llm_jax.config import base_config  # pylint: disable=import-outside-toplevel
  config = base_config()
  config.model.update({k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                                      "head_dim", "d_ff", "max_seq_len", "scan_layers")})
  config.data.seq_len = 16
  setup = state_lib.build(config, mesh, ppo.PolicyAndValue(cfg))
  state = setup.init(jax.random.PRNGKey(0))
  ref = jax.tree_util.tree_map(jnp.copy, state.params["policy"])
  rm = jax.tree_util.tree_map(lambda x: x + 0.01, state.params["value"])
  s = ppo.Settings(max_new_tokens=6, temperature=1.0, slots=32, stop_id=3, epochs=2, minibatches=2, grad_accum=1,
                   clip=0.2, vf_clip=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, kl_estimator="k1",
                   missing_eos_penalty=1.0, whiten_advantages=True)
  step = ppo.make_ppo_step(cfg, s, setup.tx, optax.constant_schedule(1e-3), mesh, setup.state_sharding)
  before = ppo.TRACES["ppo_step"]
  prompts = np.array([[0, 0, 5, 6], [7, 8, 9, 10], [0, 11, 12, 13], [0, 0, 0, 14]], np.int32)
  lengths = np.array([2, 4, 3, 1], np.int32)
  old_policy = jax.tree_util.tree_map(np.asarray, state.params["policy"])
  for i in range(3):
    state, m, answers = step(state, rm, ref, prompts, lengths, np.float32(0.05 * (i + 1)), jax.random.PRNGKey(i))
  assert ppo.TRACES["ppo_step"] - before == 1 and step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3 * 2 * 2  # epochs x minibatches optimizer updates per step
  answers = np.asarray(answers)
  assert answers.shape == (4, 6) and ((answers >= 0) | (answers == -1)).all()
  for row in answers:  # NO_TOKEN only after the row stopped
    stops = np.flatnonzero(row == -1)
    assert not len(stops) or (row[stops[0]:] == -1).all()
  assert all(np.isfinite(float(v)) for v in m.values())
  assert 0 < float(m["length"]) <= 6 and 0 <= float(m["clip_frac"]) <= 1
  changed = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params["policy"],
                                   old_policy)
  assert max(jax.tree_util.tree_leaves(changed)) > 0


def test_scalar_model_reads_the_last_real_token_and_starts_from_a_language_model():
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                    max_seq_len=32)
  tokens = jnp.array([[5, 6, 7, 0], [0, 5, 6, 7]])
  segments = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
  np.testing.assert_array_equal(heads.last_real(jnp.array([[1.0, 2, 3, 4], [5, 6, 7, 8]]), segments), [3.0, 8.0])
  lm = Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
  score = heads.ScalarModel(cfg).init(jax.random.PRNGKey(1), tokens)["params"]["score"]
  params = heads.from_lm(lm, score)
  assert "head" not in params["trunk"] and set(params["trunk"]) == set(lm) - {"head"}
  out = heads.ScalarModel(cfg).apply({"params": params}, tokens, None, segments)
  assert out.shape == (2, 4)
  # The same answer, right- or left-padded, gets the same score.
  r = heads.last_real(out, segments)
  assert float(r[0]) == pytest.approx(float(r[1]), rel=1e-4, abs=1e-5)
