"""GRPO's pieces on small examples (group advantages, clipping, the k3 KL estimator, pass@k, loss aggregation,
the mask of sampled tokens), the countdown checker, and one train step at lr 0 vs lr > 0."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.config import base_config
from llm_jax.sharding import make_mesh
from llm_jax.data import chat
from llm_jax.data.tasks import countdown
from llm_jax.model import ModelConfig, Transformer
from llm_jax.rl import grpo, rollout
from llm_jax.training import optim
from llm_jax.training.state import TrainState
from llm_jax.training.step import make_train_step


def test_group_advantages_normalise_within_each_group():
  rewards = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]]
  adv = np.asarray(grpo.group_advantages(rewards))
  np.testing.assert_allclose(adv[0], [1, -1, -1, 1], atol=1e-3)  # mean 0.5, std 0.5
  np.testing.assert_allclose(adv[1], 0.0)  # all equal: no signal, not a division by zero
  std = np.std([0, 0, 0, 3])
  np.testing.assert_allclose(adv[2], (np.array([0, 0, 0, 3]) - 0.75) / (std + 1e-4), rtol=1e-5)
  dr = np.asarray(grpo.group_advantages(rewards, std_normalize=False))  # Dr.GRPO: centred only
  np.testing.assert_allclose(dr[0], [0.5, -0.5, -0.5, 0.5])
  np.testing.assert_allclose(dr[2], [-0.75, -0.75, -0.75, 2.25])
  np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-4)


@pytest.mark.parametrize("ratio,adv,clip_high,loss,clipped", [
    (1.5, 1.0, 0.2, -1.2, True),     # a gain beyond 1 + eps is not rewarded further
    (1.5, -1.0, 0.2, 1.5, False),    # ...but a loss is never clipped away
    (0.5, 1.0, 0.2, -0.5, False),
    (0.5, -1.0, 0.2, 0.8, True),     # pushing down a bad token stops at 1 - eps
    (1.25, 1.0, 0.2, -1.2, True),
    (1.25, 1.0, 0.28, -1.25, False),  # DAPO's clip-higher leaves room for rare tokens to grow
    (1.0, 2.0, 0.2, -2.0, False),
])
def test_clipped_loss(ratio, adv, clip_high, loss, clipped):
  value, was_clipped = grpo.clipped_loss(jnp.float32(ratio), jnp.float32(adv), 0.2, clip_high)
  assert float(value) == pytest.approx(loss, abs=1e-6)
  assert bool(was_clipped) == clipped


def test_k3_kl_values_and_unbiased_estimate():
  assert float(grpo.kl_k3(jnp.log(0.3), jnp.log(0.3))) == 0.0
  assert float(grpo.kl_k3(jnp.log(0.5), jnp.log(0.25))) == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)
  assert float(jnp.min(grpo.kl_k3(jnp.linspace(-5, 0, 50), jnp.linspace(0, -5, 50)))) >= 0.0
  # Its mean over tokens sampled from the policy p is KL(p || q).
  p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
  x = np.random.default_rng(0).choice(3, size=200_000, p=p)
  estimate = float(jnp.mean(grpo.kl_k3(jnp.log(p[x]), jnp.log(q[x]))))
  assert estimate == pytest.approx(float(np.sum(p * np.log(p / q))), rel=0.02)


def test_pass_at_k_matches_the_combinatorial_formula():
  for n in (1, 4, 8):
    for c in range(n + 1):
      for k in range(1, n + 1):
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert rollout.pass_at_k(n, c, k) == pytest.approx(exact)
  assert rollout.pass_at_k(4, 1, 1) == 0.25 and rollout.pass_at_k(4, 1, 2) == 0.5
  with pytest.raises(ValueError, match="pass@5"):
    rollout.pass_at_k(4, 1, 5)


def test_overlong_penalty():
  assert rollout.overlong_penalty(40, 48, 0) == 0.0
  assert rollout.overlong_penalty(32, 48, 16) == 0.0
  assert rollout.overlong_penalty(40, 48, 16) == -0.5
  assert rollout.overlong_penalty(48, 48, 16) == -1.0


def test_written_mask_leaves_out_forced_tool_outputs():
  m = chat.Markers(bos=1, system=(2, 3), user=(4, 5), assistant=(6, 7), tool_call=(8, 9), tool_output=(10, 11))
  # text, call start, call, call end, [forced: output start, 42, 43, output end], text, end
  tokens = [20, 8, 21, 9, 10, 42, 43, 11, 22, 7]
  assert rollout.written_mask(tokens, m) == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
  # An output marker the model wrote itself (not right after a call end) is its own token.
  assert rollout.written_mask([20, 10, 21, 11, 7], m) == [1, 1, 1, 1, 1]


def _micro():
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32,
                    max_seq_len=32)
  model = Transformer(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


def _batch(lengths=(3, 6), t=8, adv=(1.0, -0.5)):
  rng = np.random.default_rng(0)
  b = len(lengths)
  weights = np.zeros((b, t), np.float32)
  for i, n in enumerate(lengths):
    weights[i, t - n:] = 1.0  # the answer: the last n targets
  ids = lambda: rng.integers(0, 64, (b, t)).astype(np.int32)
  return {"inputs": ids(), "targets": ids(),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "segment_ids": np.ones((b, t), np.int32),
          "weights": weights, "advantages": np.repeat(np.asarray(adv, np.float32)[:, None], t, axis=1)}


@pytest.mark.parametrize("agg,expected", [
    ("token", -(1.0 * 3 - 0.5 * 6) / 9),     # each token weighs the same
    ("sequence", -(1.0 - 0.5) / 2),          # each answer weighs the same
    ("constant", -(1.0 * 3 - 0.5 * 6) / (2 * 10)),  # Dr.GRPO: / (answers x max_new_tokens)
])
def test_on_policy_loss_aggregations(agg, expected):
  model, params = _micro()
  loss_fn = grpo.policy_loss(model, clip_low=0.2, clip_high=0.2, beta=0.0, loss_agg=agg, max_new_tokens=10)
  total, (denominator, sums) = loss_fn(params, _batch(), None)  # on-policy: ratio 1, loss = -A per token
  assert float(total / denominator) == pytest.approx(expected, rel=1e-5)
  assert float(sums["count"]) == 9 and float(sums["clip_frac"]) == 0.0


def test_off_policy_ratio_and_kl_to_the_reference():
  model, params = _micro()
  batch = _batch()
  logp, _ = grpo.token_logps(model, params, batch)
  loss_fn = grpo.policy_loss(model, clip_low=0.2, clip_high=0.2, beta=0.5, loss_agg="token", max_new_tokens=10)
  # The rollout policy gave every token 2x this probability: ratio 0.5 < 0.8 everywhere.
  off = dict(batch, old_logp=logp + math.log(2.0), ref_logp=logp)
  total, (denominator, sums) = loss_fn(params, off, None)
  w = batch["weights"]
  # A > 0 (row 0): -min(0.5, 0.8) A = -0.5; A < 0 (row 1): -min(-0.25, -0.4) = 0.4 (clipped); KL(ref = policy) = 0.
  assert float(total / denominator) == pytest.approx((-0.5 * 3 + 0.4 * 6) / 9, rel=1e-5)
  assert float(sums["clip_frac"]) == 6 and float(sums["kl"]) == pytest.approx(0.0, abs=1e-6)
  shifted = dict(batch, ref_logp=logp - 1.0)  # on-policy, reference 1 nat below: k3 = e^-1 + 1 - 1 per token
  total, (denominator, sums) = loss_fn(params, shifted, None)
  assert float(sums["kl"] / sums["count"]) == pytest.approx(math.exp(-1.0), rel=1e-5)
  assert float(total / denominator) == pytest.approx(-(3 - 0.5 * 6) / 9 + 0.5 * math.exp(-1.0), rel=1e-5)
  assert np.all(np.asarray(w).sum(axis=1) == [3, 6])


@pytest.mark.parametrize("lr", [0.0, 1e-2])
def test_a_train_step_at_lr_zero_leaves_the_policy_unchanged(lr):
  model, params = _micro()
  train = base_config().train
  train.lr, train.warmup_steps, train.steps, train.weight_decay = lr, 0, 10, 0.0
  tx = optim.make(train)
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  loss_fn = grpo.policy_loss(model, clip_low=0.2, clip_high=0.2, beta=0.04, loss_agg="token", max_new_tokens=10)
  batch = _batch()
  batch["ref_logp"] = np.asarray(grpo.token_logps(model, params, batch)[0]) - 0.1
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state_sharding = jax.tree_util.tree_map(lambda _: sharding, state)
  step = make_train_step(loss_fn, tx, optim.schedule(train), grad_accum=1, state_sharding=state_sharding,
                         batch_sharding=sharding)
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, metrics = step(state, batch, jax.random.PRNGKey(1))
  assert float(metrics["grad_norm"]) > 0 and "kl" in metrics and "clip_frac" in metrics
  changed = any(not np.array_equal(a, np.asarray(b))
                for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)))
  assert changed == (lr > 0)


def test_countdown_checker_accepts_any_valid_expression_and_nothing_else():
  assert countdown.solves("(12+7)*3 = 57", (7, 12, 3), 57)
  assert countdown.solves("One way: 3*(7+12) = 57.", (7, 12, 3, 9), 57)
  assert not countdown.solves("(12+12)*3 = 72", (7, 12, 3), 72)  # 12 used twice
  assert not countdown.solves("57", (7, 12, 3), 57)  # no operation
  assert not countdown.solves("(12+7)*3 = 58", (7, 12, 3), 58)  # the value is 57
  assert not countdown.solves("(12+7)*4", (7, 12, 3, 4), 57)
  rng = random.Random(0)
  for split in ("train", "val"):
    for _ in range(50):
      example = countdown.make(rng, split)
      assert example.check(chat.final_text(example.conversation[-1]["content"]))
      assert example.task == "countdown" and int(example.answer) not in example.numbers
