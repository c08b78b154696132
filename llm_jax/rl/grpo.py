"""Reasoning RL with verifiable rewards (`config.stage='grpo'`): GRPO, Dr.GRPO and DAPO — the DeepSeek-R1 recipe.

    python -m llm_jax.train --config configs/grpo_tiny.py     # init_from: a fine-tuned run (runs/sft_tiny)

Every step draws `grpo.prompts` training problems from the `grpo.tasks` mixture (llm_jax/data/tasks: exact
checkers, held-out splits), samples `grpo.group` answers to each from the policy at `grpo.temperature` with
the assistant (the jitted decode loop of llm_jax/inference/engine.py; the host runs the calculator and
Python calls and forces their outputs in; llm_jax/rl/rollout.py), scores them, and takes
`grpo.minibatches` optimizer steps on the rollouts (the jitted train step of training/step.py with the loss
below).

Reward of an answer: 1 when the task's checker accepts its final text, plus `format_reward` when the turn
ends with <|assistant_end|> (not cut off at max_new_tokens), plus DAPO's overlong penalty (0 down to -1
over the last `overlong_buffer` tokens before max_new_tokens; 0 turns it off).

Advantage, per group of answers to one prompt: A = r - mean(r), divided by std(r) + 1e-4 unless
std_normalize=False (Dr.GRPO: the division up-weights groups of almost equal rewards). Every token of an
answer gets its answer's A. Tool outputs are forced by the host, not sampled: they get no loss.

Loss per policy token, with logp_old the rollout policy's and logp_ref the starting (reference) model's:

    ratio = exp(logp - logp_old)
    pg    = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    kl    = exp(logp_ref - logp) - (logp_ref - logp) - 1     # the k3 estimator of KL(policy || ref), >= 0
    loss  = pg + beta * kl

aggregated by `loss_agg`: "token" (the sum over every policy token of the minibatch / their number: each
token weighs the same), "sequence" (mean per answer, then over answers: the original GRPO, whose long wrong
answers are penalised less per token), "constant" (sum / (answers x max_new_tokens): Dr.GRPO's
length-unbiased form). The rollouts are split into `minibatches` updates: the first is on-policy (ratio 1),
later ones are off-policy by the earlier updates, which is where clipping acts.

Variants (`VARIANTS`, config switches; experiments/reasoning_rl.py compares them):
  grpo     std_normalize, loss_agg token, clip 0.2 / 0.2, beta 0.04
  dr_grpo  no std normalisation, loss_agg constant, beta 0
  dapo     clip-higher 0.2 / 0.28, dynamic sampling (only groups with mixed outcomes train; up to
           dynamic_rounds batches of prompts are drawn to fill the step), overlong penalty, beta 0

Logged per step: reward, accuracy (share of right answers), finished, length (policy tokens per answer), kl,
entropy, clip_frac (share of tokens whose clipped term is the active one), groups_kept, rollout_s. Every
`train.eval_every` steps and at the end, on `grpo.eval_problems` held-out problems per task: greedy accuracy
and pass@k (unbiased, from `eval_samples` answers at grpo.temperature), written as eval/<task>/...

One process only (rollouts run on the host); a mesh of its devices shards the model as in pretraining.
"""

from __future__ import annotations

import random
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.data import chat, tasks
from llm_jax.inference import tools as tools_lib
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import Engine, Sampling
from llm_jax.rl import stage
from llm_jax.rl.rollout import draw_problems, evaluate_policy, make_batch, rollout
from llm_jax.training import checkpoint, metrics as metrics_lib, optim
from llm_jax.training import state as state_lib
from llm_jax.training.step import make_train_step

LOSS_AGGREGATIONS = ("token", "sequence", "constant")
VARIANTS = {
    "grpo": {"std_normalize": True, "loss_agg": "token", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.04,
             "dynamic_sampling": False, "overlong_buffer": 0},
    "dr_grpo": {"std_normalize": False, "loss_agg": "constant", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.0,
                "dynamic_sampling": False, "overlong_buffer": 0},
    "dapo": {"std_normalize": True, "loss_agg": "token", "clip_low": 0.2, "clip_high": 0.28, "beta": 0.0,
             "dynamic_sampling": True, "overlong_buffer": 16},
}


# ---------------------------------------------------------------------------------------------------------------
# The pieces of the objective (pure; tests/test_grpo.py checks them on small examples)

def group_advantages(rewards_PG, std_normalize: bool = True, eps: float = 1e-4):
  """[P, G] rewards (G answers to each of P prompts) -> [P, G] advantages: r - mean, / (std + eps) if asked."""
  rewards_PG = jnp.asarray(rewards_PG, jnp.float32)
  adv = rewards_PG - rewards_PG.mean(axis=-1, keepdims=True)
  if std_normalize:
    adv = adv / (rewards_PG.std(axis=-1, keepdims=True) + eps)
  return adv


def kl_k3(logp, ref_logp):
  """Per-token k3 estimate of KL(policy || reference) from log-probs of sampled tokens: unbiased, >= 0."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def clipped_loss(ratio, adv, clip_low: float, clip_high: float):
  """-min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A) per token, and where the clipped term is the min."""
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
  return -jnp.minimum(unclipped, clipped), clipped < unclipped


def token_logps(model, params, batch):
  """([B, T] log-probs of the targets, [B, T] entropy of each next-token distribution) under params."""
  logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
  logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp = jnp.take_along_axis(logp_all, batch["targets"][..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


def policy_loss(model, *, clip_low: float, clip_high: float, beta: float, loss_agg: str, max_new_tokens: int):
  """loss_fn(params, batch, rng) -> (sum, (denominator, sums)) for training/step.py.

  batch ([B, T] each): inputs, targets, positions, segment_ids, weights (1 on the policy's tokens), advantages,
  old_logp [B, T] (absent: on-policy, logp_old = stop_gradient(logp)) and ref_logp [B, T] (needed if beta).
  """
  if loss_agg not in LOSS_AGGREGATIONS:
    raise ValueError(f"loss_agg must be one of {LOSS_AGGREGATIONS}, got {loss_agg!r}")

  def loss_fn(params, batch, rng):
    del rng
    logp, entropy = token_logps(model, params, batch)
    w = batch["weights"].astype(jnp.float32)
    old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    ratio = jnp.exp(logp - old)
    pg, clipped = clipped_loss(ratio, batch["advantages"], clip_low, clip_high)
    kl = kl_k3(logp, batch["ref_logp"]) if "ref_logp" in batch else jnp.zeros_like(logp)
    per_token = pg + beta * kl
    answers = jnp.sum(jnp.any(w > 0, axis=1))
    if loss_agg == "token":
      total, denominator = jnp.sum(per_token * w), jnp.sum(w)
    elif loss_agg == "sequence":
      total = jnp.sum(jnp.sum(per_token * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0))
      denominator = answers
    else:
      total, denominator = jnp.sum(per_token * w), answers * max_new_tokens
    sums = {"count": jnp.sum(w), "kl": jnp.sum(kl * w), "clip_frac": jnp.sum(clipped * w),
            "entropy": jnp.sum(entropy * w)}
    return total, (denominator.astype(jnp.float32), sums)
  return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# The stage

def run(config, workdir: str, train_lib) -> dict:
  """Trains config.init_from's model with GRPO (or a variant) into workdir; returns the final summary.

  train_lib: the llm_jax.train module that dispatched here (its workdir lock, resume check, tokenizer and
  init_from helpers; under `python -m llm_jax.train` that module is __main__, so it is passed, not imported).
  """
  with stage.start(config, workdir, train_lib):  # one process: the rollouts run on the host
    return _run(config, workdir, train_lib)


def _run(config, workdir: str, train_lib) -> dict:
  g = config.grpo
  say = train_lib._print  # pylint: disable=protected-access
  tok, mesh = stage.prepare(config, workdir, train_lib, pipeline=True)  # init_from's tokenizer
  t_start = time.time()
  weights = tasks.parse_weights(g.tasks)
  # The optimizer's schedule counts its updates: grpo.minibatches per step.
  updates_config = config.copy_and_resolve_references()
  updates_config.train.steps = config.train.steps * g.minibatches
  updates_config.train.warmup_steps = config.train.warmup_steps * g.minibatches
  setup = state_lib.build(updates_config, mesh)
  rows = g.prompts * g.group
  if rows % g.minibatches or (rows // g.minibatches) % config.train.grad_accum:
    raise config_lib.ConfigError(f"grpo.prompts x grpo.group = {rows} answers per step must split into "
                                 f"grpo.minibatches={g.minibatches} x train.grad_accum={config.train.grad_accum}")
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  done = stage.finished(mngr, config, workdir, say)
  if done:
    return done
  start = mngr.latest_step() or 0

  ref_params = train_lib.init_params(config.init_from, setup)
  if start:
    state = checkpoint.restore(mngr, setup.abstract_state)
    say(f"resuming from {workdir}/checkpoints/{start}")
  else:
    state = jax.jit(lambda p, r: state_lib.TrainState.create(p, setup.tx, r),
                    out_shardings=setup.state_sharding)(ref_params, jax.random.PRNGKey(config.seed))
    say(f"initialised from {config.init_from}")
  train_lib._truncate_metrics(workdir, start)  # pylint: disable=protected-access

  model = setup.model
  replicated = sharding.replicated(mesh)
  engine = Engine(model, jax.device_put(state.params, replicated))
  assistant = Assistant(engine, tok, tools_lib.with_timeout(config.sft.tool_timeout),
                        max_tool_calls=config.sft.max_tool_calls)
  sampling = Sampling(temperature=g.temperature)
  room = setup.model_config.max_seq_len - g.max_new_tokens
  fits = lambda problem: len(chat.render_for_completion(problem.prompt, tok, assistant.markers)) <= room
  loss_fn = policy_loss(model, clip_low=g.clip_low, clip_high=g.clip_high, beta=g.beta, loss_agg=g.loss_agg,
                        max_new_tokens=g.max_new_tokens)
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = make_train_step(loss_fn, setup.tx, optim.schedule(updates_config.train),
                               grad_accum=config.train.grad_accum, state_sharding=setup.state_sharding,
                               batch_sharding=batch_sharding)

  def logps_fn(params, batch):
    with sharding.activation_rules(mesh):
      return token_logps(model, params, batch)[0]
  logps = jax.jit(logps_fn, in_shardings=(setup.params_sharding, batch_sharding))
  writer = metrics_lib.Writer(workdir)
  names = [n for n in weights if n in tasks.CHECKED]
  eval_settings = dict(problems=g.eval_problems, samples=g.eval_samples, sampling=sampling,
                       max_new_tokens=g.max_new_tokens, seed=config.seed)

  def evaluate(step: int) -> dict:
    t0 = time.time()
    return stage.log_eval(writer, say, step, evaluate_policy(assistant, names, **eval_settings), t0)

  last = evaluate(0) if start == 0 else {}
  say(f"grpo: {config.train.steps} steps x {g.prompts} prompts x {g.group} answers from {g.tasks!r}; "
      f"{g.minibatches} updates per step; loss_agg {g.loss_agg}, std_normalize {g.std_normalize}, clip "
      f"{g.clip_low}/{g.clip_high}, beta {g.beta}, dynamic_sampling {g.dynamic_sampling}, overlong_buffer "
      f"{g.overlong_buffer}")
  bar = tqdm(total=config.train.steps, initial=start, disable=not config.train.progress, desc="grpo", unit="step",
             dynamic_ncols=True)
  step = start
  while step < config.train.steps:
    t0 = time.time()
    kept, sampled, rounds = [], [], 0
    while len(kept) < g.prompts and rounds < (g.dynamic_rounds if g.dynamic_sampling else 1):
      rng = random.Random(f"{config.seed}/{step}/{rounds}")
      try:
        problems = draw_problems(weights, g.prompts, rng, fits)
      except ValueError as e:
        raise config_lib.ConfigError(f"grpo.tasks={g.tasks!r}: {e} the model's max_seq_len="
                                     f"{setup.model_config.max_seq_len} with grpo.max_new_tokens={g.max_new_tokens}"
                                     ) from None
      answers = rollout(assistant, problems, g.group, max_new_tokens=g.max_new_tokens, sampling=sampling,
                        seed=config.seed * 1_000_003 + step * 101 + rounds, format_reward=g.format_reward,
                        overlong_buffer=g.overlong_buffer)
      sampled += answers
      rounds += 1
      for i in range(g.prompts):
        group = answers[i * g.group:(i + 1) * g.group]
        if not g.dynamic_sampling or len({a["correct"] for a in group}) > 1:
          kept.append(group)
    kept = kept[:g.prompts]
    groups_kept = len(kept)
    while len(kept) < g.prompts:  # dynamic sampling found too few mixed groups: the rest have no weight
      kept.append([dict(a, mask=[0] * len(a["mask"])) for a in sampled[:g.group]])
    rewards = np.asarray([[a["reward"] for a in group] for group in kept], np.float32)
    advantages = np.asarray(group_advantages(rewards, g.std_normalize)).reshape(-1)
    answers = [a for group in kept for a in group]
    rollout_s = time.time() - t0
    batch = make_batch(answers, advantages)
    on_device = sharding.rows_to_global(batch, list(range(rows)), rows, mesh)
    on_device["ref_logp"] = logps(ref_params, on_device)
    if g.minibatches > 1:
      on_device["old_logp"] = logps(state.params, on_device)
    order = np.random.default_rng(config.seed + step).permutation(rows)
    step_metrics = []
    for part in np.array_split(order, g.minibatches):
      minibatch = jax.tree_util.tree_map(lambda x, idx=np.sort(part): x[idx], on_device)
      state, m = train_step(state, minibatch, jax.random.fold_in(state.rng, step))
      step_metrics.append(m)
    engine.set_params(jax.device_put(state.params, replicated))
    step += 1
    m = {k: float(np.mean([float(x[k]) for x in step_metrics])) for k in step_metrics[0] if k != "tokens"}
    m.update(reward=float(np.mean([a["reward"] for a in sampled])),
             accuracy=float(np.mean([a["correct"] for a in sampled])),
             finished=float(np.mean([a["finished"] for a in sampled])),
             length=float(np.mean([sum(a["mask"]) for a in sampled])),
             groups_kept=groups_kept / g.prompts, rollouts=len(sampled), rollout_s=rollout_s,
             step_s=time.time() - t0)
    writer.write(step, m)
    bar.update(1)
    bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m['accuracy']:.2f}", kl=f"{m['kl']:.3f}")
    if step % config.train.eval_every == 0 or step == config.train.steps:
      last = evaluate(step)
    if step % config.train.checkpoint_every == 0 or step == config.train.steps:
      checkpoint.save(mngr, step, state, None, force=True)
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return stage.summarize(say, step, last, t_start)

