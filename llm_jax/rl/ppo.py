"""RLHF with PPO against a learned reward model (`config.stage='ppo'`), the whole iteration one jitted step.

    python -m llm_jax.train --config configs/ppo_tiny.py   # init_from: a fine-tuned run; ppo.reward_model: a
                                                          # stage-reward run (llm_jax/rl/preference.py)

`ppo_step(state, rm_params, ref_params, prompts, lengths, kl_coef, rng)` is one `jax.jit` program:

1. Rollout: the engine's prefill and `lax.while_loop` decode (llm_jax/inference/engine.py) sample
   data.batch_size answers of up to pref.max_new_tokens tokens at pref.temperature to left-padded prompts
   (no tools: nothing leaves the device).
2. Scoring: the reward model (model/heads.py) reads the last token of prompt + answer; an answer cut off
   before <|assistant_end|> loses ppo.missing_eos_penalty. The frozen reference (init_from) and the rollout
   policy give each answer token's log-probability; the value model gives V per answer token.
3. Rewards per token: r_t = -kl_coef * kl_t, plus the score at the answer's last token, with
   kl_t = logp - logp_ref ("k1") or exp(logp_ref - logp) - (logp_ref - logp) - 1 ("k3").
4. Advantages: GAE(gamma, lambda) by a reverse `lax.scan` over the answer's tokens,
   delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0), A_t = delta_t + gamma lambda A_{t+1},
   returns = A + V; A whitened over the batch's answer tokens (ppo.whiten_advantages).
5. Update: ppo.epochs passes, each a fresh permutation of the rollouts cut into ppo.minibatches, a `lax.scan`
   of optimizer steps (training/step.py's train_step, grad_accum micro-batches inside) on, per answer token,

       pg = -min(ratio A, clip(ratio, 1 - clip, 1 + clip) A),    ratio = exp(logp - logp_rollout)
       vf = 0.5 max((V - R)^2, (V_old + clip(V - V_old, -vf_clip, vf_clip) - R)^2)
       loss = pg + vf_coef vf, averaged over the answer tokens.

The state's parameters are {"policy": the language model, "value": a ScalarModel started from the reward
model (TRL's default; its head already ranks answers)}; one AdamW updates both. kl_coef is an argument, so
the adaptive controller (Ziegler et al. 2019: kl_coef *= 1 + clip(KL / ppo.kl_target - 1, -0.2, 0.2) x
batch / ppo.kl_horizon, on the host after each step) never recompiles the step.

Logged per step: score (reward model), reward (score - kl_coef KL), kl (per answer), entropy, clip_frac,
pg_loss, vf_loss, value (mean V), length (answer tokens), finished, kl_coef, gold (the hidden judge on the
rollouts: llm_jax/rl/rewards.py); every train.eval_every steps eval/ gold, correct, kl, proxy, length on held-out
prompts. One process; its devices shard the models through config.mesh.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.data import chat, tasks
from llm_jax.inference import engine as engine_lib
from llm_jax.model import ModelConfig, Transformer, heads
from llm_jax.model.transformer import unstack_layers
from llm_jax.rl import rewards, stage
from llm_jax.rl.grpo import clipped_loss, kl_k3
from llm_jax.rl.rollout import draw_problems, read_answer
from llm_jax.training import checkpoint, metrics as metrics_lib, optim
from llm_jax.training import state as state_lib
from llm_jax.training.step import train_step


# ---------------------------------------------------------------------------------------------------------------
# The pieces (pure; tests/test_ppo.py checks them on small examples)

def gae(rewards_BN, values_BN, mask_BN, gamma: float, lam: float):
  """(advantages, returns) [B, N] by generalised advantage estimation over each row's masked prefix."""
  values_BN = values_BN * mask_BN
  next_BN = jnp.concatenate([values_BN[:, 1:], jnp.zeros_like(values_BN[:, :1])], axis=1)
  deltas_BN = (rewards_BN + gamma * next_BN - values_BN) * mask_BN

  def back(carry_B, x):
    delta_B, m_B = x
    adv_B = (delta_B + gamma * lam * carry_B) * m_B
    return adv_B, adv_B
  _, adv_NB = jax.lax.scan(back, jnp.zeros(rewards_BN.shape[0]), (deltas_BN.T, mask_BN.T), reverse=True)
  adv_BN = adv_NB.T
  return adv_BN, (adv_BN + values_BN) * mask_BN


def whiten(x_BN, mask_BN, eps: float = 1e-8):
  """(x - mean) / std over the masked entries (masked-out entries become 0)."""
  n = jnp.maximum(jnp.sum(mask_BN), 1.0)
  mean = jnp.sum(x_BN * mask_BN) / n
  var = jnp.sum(jnp.square(x_BN - mean) * mask_BN) / n
  return (x_BN - mean) * jax.lax.rsqrt(var + eps) * mask_BN


def value_loss(values, old_values, returns, vf_clip: float):
  """0.5 max((V - R)^2, (clipped V - R)^2) per token, and whether the clipped term is the larger."""
  clipped = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
  a, b = jnp.square(values - returns), jnp.square(clipped - returns)
  return 0.5 * jnp.maximum(a, b), b > a


def token_rewards(score_B, kl_BN, mask_BN, kl_coef):
  """[B, N]: -kl_coef * kl at every answer token, plus the score at each answer's last token."""
  last_B = jnp.sum(mask_BN, axis=1).astype(jnp.int32) - 1
  at_last = (jnp.arange(mask_BN.shape[1])[None, :] == last_B[:, None]) & (last_B[:, None] >= 0)
  return (-kl_coef * kl_BN + score_B[:, None] * at_last) * mask_BN


class PolicyAndValue(nn.Module):
  """The parameters PPO trains, {"policy": a Transformer's, "value": a ScalarModel's} (for state_lib.build)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT):
    return Transformer(self.cfg, name="policy")(tokens_BT), heads.ScalarModel(self.cfg, name="value")(tokens_BT)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The static settings of ppo_step (from config.ppo and config.pref)."""
  max_new_tokens: int
  temperature: float
  slots: int
  stop_id: int
  epochs: int
  minibatches: int
  grad_accum: int
  clip: float
  vf_clip: float
  vf_coef: float
  gamma: float
  lam: float
  kl_estimator: str
  missing_eos_penalty: float
  whiten_advantages: bool

  @classmethod
  def of(cls, config, slots: int, stop_id: int) -> "Settings":
    o = config.ppo
    return cls(config.pref.max_new_tokens, config.pref.temperature, slots, stop_id, o.epochs, o.minibatches,
               config.train.grad_accum, o.clip, o.vf_clip, o.vf_coef, o.gamma, o.lam, o.kl_estimator,
               o.missing_eos_penalty, o.whiten_advantages)


def _answer_slice(x_BT, n: int):
  """The outputs at the positions that predict the N answer tokens of a [B, P + N - 1] forward pass."""
  return x_BT[:, x_BT.shape[1] - n:]


def _logps(model, params, inputs_BT, targets_BT, positions_BT, segment_ids_BT):
  logits = model.apply({"params": params}, inputs_BT, positions_BT, segment_ids_BT)
  logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp = jnp.take_along_axis(logp_all, targets_BT[..., None], axis=-1)[..., 0]
  return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def ppo_loss(cfg: ModelConfig, s: Settings):
  """loss_fn(params, batch, rng) -> (sum, (answer tokens, sums)) for training/step.py's train_step."""
  lm, scalar = Transformer(cfg), heads.ScalarModel(cfg)  # the value model is a ScalarModel

  def loss_fn(params, batch, rng):
    del rng
    n, mask = s.max_new_tokens, batch["mask"]
    args = (batch["inputs"], batch["targets"], batch["positions"], batch["segment_ids"])
    logp, entropy = (_answer_slice(x, n) for x in _logps(lm, params["policy"], *args))
    values = _answer_slice(scalar.apply({"params": params["value"]}, batch["inputs"], batch["positions"],
                                        batch["segment_ids"]), n)
    ratio = jnp.exp(logp - batch["logp"])
    pg, clipped = clipped_loss(ratio, batch["advantages"], s.clip, s.clip)
    vf, vf_clipped = value_loss(values, batch["values"], batch["returns"], s.vf_clip)
    per_token = pg + s.vf_coef * vf
    sums = {"count": jnp.sum(mask), "pg_loss": jnp.sum(pg * mask), "vf_loss": jnp.sum(vf * mask),
            "clip_frac": jnp.sum(clipped * mask), "vf_clip_frac": jnp.sum(vf_clipped * mask),
            "entropy": jnp.sum(entropy * mask), "approx_kl": jnp.sum(0.5 * jnp.square(logp - batch["logp"]) * mask)}
    return jnp.sum(per_token * mask), (jnp.sum(mask), sums)
  return loss_fn


def ppo_step(state, rm_params, ref_params, prompts_BP, lengths_B, kl_coef, rng, *, cfg: ModelConfig, s: Settings,
             tx, lr_fn):
  """One PPO iteration (module docstring): (state, metrics, answers [B, N] with NO_TOKEN after a stop)."""
  lm, scalar = Transformer(cfg), heads.ScalarModel(cfg)  # the value and reward models are ScalarModels
  decode_cfg, decode_params = unstack_layers(cfg, state.params["policy"])
  decoder = Transformer(decode_cfg)
  k_roll, k_perm, k_train = jax.random.split(rng, 3)
  # 1. rollout
  dec = engine_lib.prefill(decoder, decode_params, prompts_BP, lengths_B, s.slots, k_roll)
  _, answers_BN = engine_lib.decode(decoder, decode_params, dec, engine_lib.Sampling(temperature=s.temperature),
                                  jnp.asarray([s.stop_id]), steps=s.max_new_tokens)
  # 2. scoring
  b, p = prompts_BP.shape
  n = s.max_new_tokens
  mask_BN = (answers_BN != engine_lib.NO_TOKEN)
  finished_B = jnp.any(answers_BN == s.stop_id, axis=1)
  tokens = jnp.concatenate([prompts_BP, jnp.maximum(answers_BN, 0)], axis=1)
  real = jnp.concatenate([jnp.arange(p)[None, :] >= p - lengths_B[:, None], mask_BN], axis=1)
  segment_ids = real.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  inputs = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], positions=positions[:, :-1],
                segment_ids=segment_ids[:, :-1])
  args = (inputs["inputs"], inputs["targets"], inputs["positions"], inputs["segment_ids"])
  logp_BN, _ = (_answer_slice(x, n) for x in _logps(lm, state.params["policy"], *args))
  ref_BN, _ = (_answer_slice(x, n) for x in _logps(lm, ref_params, *args))
  values_BN = _answer_slice(scalar.apply({"params": state.params["value"]}, inputs["inputs"], inputs["positions"],
                                         inputs["segment_ids"]), n)
  score_B = heads.last_real(scalar.apply({"params": rm_params}, tokens, positions, segment_ids), segment_ids)
  score_B = score_B - s.missing_eos_penalty * (~finished_B)
  mask = mask_BN.astype(jnp.float32)
  kl_BN = (logp_BN - ref_BN if s.kl_estimator == "k1" else kl_k3(logp_BN, ref_BN)) * mask
  # 3., 4. rewards and advantages
  rewards_BN = token_rewards(score_B, kl_BN, mask, kl_coef)
  adv_BN, returns_BN = gae(rewards_BN, values_BN, mask, s.gamma, s.lam)
  if s.whiten_advantages:
    adv_BN = whiten(adv_BN, mask)
  batch = dict(inputs, mask=mask, logp=logp_BN, values=values_BN * mask, advantages=adv_BN, returns=returns_BN)
  batch = jax.tree_util.tree_map(jax.lax.stop_gradient, batch)
  # 5. epochs x minibatches of updates
  loss_fn = ppo_loss(cfg, s)

  def update(state, idx):
    minibatch = jax.tree_util.tree_map(lambda x: x[idx], batch)
    return train_step(state, minibatch, jax.random.fold_in(k_train, state.step), loss_fn=loss_fn, tx=tx,
                      lr_fn=lr_fn, grad_accum=s.grad_accum)

  def epoch(state, key):
    order = jax.random.permutation(key, b).reshape(s.minibatches, b // s.minibatches)
    return jax.lax.scan(update, state, jnp.sort(order, axis=1))
  state, m = jax.lax.scan(epoch, state, jax.random.split(k_perm, s.epochs))
  m = jax.tree_util.tree_map(jnp.mean, m)
  answer_kl = jnp.sum(kl_BN, axis=1)
  m.update(score=jnp.mean(score_B), reward=jnp.mean(score_B - kl_coef * answer_kl), kl=jnp.mean(answer_kl),
           length=jnp.mean(jnp.sum(mask, axis=1)), finished=jnp.mean(finished_B.astype(jnp.float32)),
           value=jnp.sum(values_BN * mask) / jnp.maximum(jnp.sum(mask), 1.0))
  return state, m, answers_BN


TRACES = {"ppo_step": 0}  # times ppo_step was traced (tests assert one compilation for a whole run)


def make_ppo_step(cfg: ModelConfig, s: Settings, tx, lr_fn, mesh, state_sharding):
  """The jitted ppo_step (the state donated), traced inside the mesh's activation rules."""
  def step(state, rm_params, ref_params, prompts_BP, lengths_B, kl_coef, rng):
    TRACES["ppo_step"] += 1
    with sharding.activation_rules(mesh):
      return ppo_step(state, rm_params, ref_params, prompts_BP, lengths_B, kl_coef, rng, cfg=cfg, s=s, tx=tx,
                      lr_fn=lr_fn)
  return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, None, None))


class AdaptiveKL:
  """Ziegler et al.'s controller: kl_coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon."""

  def __init__(self, value: float, target: float, horizon: int):
    self.value, self.target, self.horizon = value, target, horizon

  def update(self, kl: float, n: int) -> float:
    if self.target > 0:
      error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
      self.value *= 1.0 + error * n / self.horizon
    return self.value


# ---------------------------------------------------------------------------------------------------------------
# The stage

def run(config, workdir: str, train_lib) -> dict:
  """Trains config.init_from's model with PPO against ppo.reward_model into workdir; returns the summary."""
  with stage.start(config, workdir, train_lib):
    return _run(config, workdir, train_lib)


def _reward_params(config, mesh, model_cfg: ModelConfig):
  """The reward model's parameters from ppo.reward_model (a stage-reward workdir of the same model shape)."""
  import json  # pylint: disable=import-outside-toplevel
  path = config.ppo.reward_model
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  where = f"ppo.reward_model={path!r}"
  if saved.get("stage") != "reward":
    raise config_lib.ConfigError(f"{where} is a stage {saved.get('stage')!r} run, not a reward model")
  theirs = config_lib.model_config(saved)
  fields = [f.name for f in dataclasses.fields(model_cfg) if f.name not in ("dtype", "param_dtype", "remat")]
  differ = [f"model.{k}: {getattr(theirs, k)!r} there, {getattr(model_cfg, k)!r} here" for k in fields
            if getattr(theirs, k) != getattr(model_cfg, k)]
  if differ:
    raise config_lib.ConfigError(f"{where}: its model differs from the policy's (the value model starts from it):"
                                 "\n  " + "\n  ".join(differ))
  rm_setup = state_lib.build(config, mesh, heads.ScalarModel(model_cfg))
  return checkpoint.restore_params(path, rm_setup.abstract_state.params)


def _run(config, workdir: str, train_lib) -> dict:
  say = train_lib._print  # pylint: disable=protected-access
  o, b, n = config.ppo, config.data.batch_size, config.pref.max_new_tokens
  tok, mesh = stage.prepare(config, workdir, train_lib)
  t_start = time.time()
  markers = chat.Markers.of(tok)
  lm_setup = state_lib.build(config, mesh)
  cfg = lm_setup.model_config
  updates_config = config.copy_and_resolve_references()  # the schedule counts optimizer updates
  per_step = o.epochs * o.minibatches
  updates_config.train.steps = config.train.steps * per_step
  updates_config.train.warmup_steps = config.train.warmup_steps * per_step
  setup = state_lib.build(updates_config, mesh, PolicyAndValue(cfg))
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  done = stage.finished(mngr, config, workdir, say)
  if done:
    return done
  start_step = mngr.latest_step() or 0
  ref_params = train_lib.init_params(config.init_from, lm_setup)
  rm_params = _reward_params(config, mesh, cfg)

  # Prompts: a fixed padded length P (so one compiled step serves the run); longer prompts are drawn again.
  weights = tasks.parse_weights(o.prompts)
  sample = draw_problems(weights, 256, random.Random(config.seed))
  prompt_len = engine_lib._bucket(max(len(chat.render_for_completion(p.prompt, tok, markers)) for p in sample),
                                  16)  # pylint: disable=protected-access
  if prompt_len + n > cfg.max_seq_len:
    raise config_lib.ConfigError(f"prompts of {prompt_len} tokens + pref.max_new_tokens={n} exceed model.max_seq_len="
                                 f"{cfg.max_seq_len}")
  fits = lambda problem: len(chat.render_for_completion(problem.prompt, tok, markers)) <= prompt_len
  settings = Settings.of(config, slots=engine_lib._bucket(prompt_len + n, 16),  # pylint: disable=protected-access
                         stop_id=markers.assistant[1])

  rng = jax.random.PRNGKey(config.seed)
  if start_step:
    state = checkpoint.restore(mngr, setup.abstract_state)
    say(f"resuming from {workdir}/checkpoints/{start_step}")
  else:
    state = jax.jit(lambda p, v, r: state_lib.TrainState.create({"policy": p, "value": v}, setup.tx, r),
                    out_shardings=setup.state_sharding)(ref_params, rm_params, rng)
    say(f"initialised from {config.init_from}; value model from {o.reward_model}")
  previous = [m for m in metrics_lib.read(workdir) if "kl_coef" in m and m["step"] <= start_step]
  kl = AdaptiveKL(previous[-1]["kl_coef"] if previous else o.kl_coef, o.kl_target, o.kl_horizon)
  if previous:  # the coefficient the last step used, moved as that step's KL moved it
    kl.update(previous[-1]["kl"], b)
  train_lib._truncate_metrics(workdir, start_step)  # pylint: disable=protected-access

  step_fn = make_ppo_step(cfg, settings, setup.tx, optim.schedule(updates_config.train), mesh, setup.state_sharding)
  gold_eval = rewards.GoldEval(config, lm_setup, mesh, tok, ref_params, reward=(heads.ScalarModel(cfg), rm_params))
  writer = metrics_lib.Writer(workdir)

  def evaluate(step: int) -> dict:
    t0 = time.time()
    return stage.log_eval(writer, say, step, gold_eval(state.params["policy"], seed=config.seed), t0)

  last = evaluate(0) if start_step == 0 else {}
  say(f"ppo: {config.train.steps} steps x {b} answers of <= {n} tokens (prompts padded to {prompt_len}); "
      f"{o.epochs} epochs x {o.minibatches} minibatches; clip {o.clip}, vf_clip {o.vf_clip}, kl_coef {kl.value:.4g}"
      f" ({o.kl_estimator}" + (f", adaptive to {o.kl_target}/answer)" if o.kl_target else ")"))
  bar = tqdm(total=config.train.steps, initial=start_step, disable=not config.train.progress, desc="ppo",
             unit="step", dynamic_ncols=True)
  for step in range(start_step, config.train.steps):
    t0 = time.time()
    problems = draw_problems(weights, b, random.Random(f"{config.seed}/{step}"), fits)
    rows = [chat.render_for_completion(p.prompt, tok, markers) for p in problems]
    prompts = np.zeros((b, prompt_len), np.int32)
    for i, row in enumerate(rows):
      prompts[i, prompt_len - len(row):] = row
    lengths = np.asarray([len(r) for r in rows], np.int32)
    state, m, answers = step_fn(state, rm_params, ref_params, prompts, lengths, np.float32(kl.value),
                                jax.random.fold_in(rng, step))
    m = {k: float(v) for k, v in jax.device_get(m).items() if k != "tokens"}
    answers = np.asarray(answers)
    m["gold"] = float(np.mean([rewards.judge(p, *read_answer(a, tok, markers)) for p, a in zip(problems, answers)]))
    m["kl_coef"] = kl.value
    kl.update(m["kl"], b)
    m["step_s"] = time.time() - t0
    writer.write(step + 1, m)
    bar.update(1)
    bar.set_postfix(score=f"{m['score']:.2f}", gold=f"{m['gold']:.2f}", kl=f"{m['kl']:.2f}")
    if (step + 1) % config.train.eval_every == 0 or step + 1 == config.train.steps:
      last = evaluate(step + 1)
    if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
      checkpoint.save(mngr, step + 1, state, None, force=True)
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  gold_eval.write_samples(workdir, state.params["policy"], seed=config.seed, say=say)
  return stage.summarize(say, config.train.steps, last, t_start)
