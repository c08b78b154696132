"""Learning from preference pairs: the reward model (`config.stage='reward'`) and DPO (`config.stage='dpo'`).

    python -m llm_jax.train --config configs/reward_tiny.py   # init_from: a fine-tuned run -> runs/reward_tiny
    python -m llm_jax.train --config configs/dpo_tiny.py

Data: `config.pref.data` (llm_jax/data/preferences.py): the synthetic "compare" pairs, labelled by a hidden
gold judge (llm_jax/data/tasks/compare.py), and/or JSONL files of {prompt, chosen, rejected} /
Anthropic-HH pairs. Each pair becomes two rows, prompt + chosen and prompt + rejected, rendered by the chat
renderer (data/chat.py); the weights mark the tokens the assistant writes in the answer (tool outputs and
the prompt's own turns are not the answer's). A batch holds `data.batch_size` pairs as [pairs, 2, T]
arrays, so gradient accumulation and data parallelism split pairs, never a pair.

Reward model (model/heads.py): init_from's trunk plus a scalar head read at the last token of each row:

    loss = -log sigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2

DPO (Rafailov et al. 2023), with pi the policy and ref the frozen init_from model, log-probs summed over the
answer's tokens:

    h    = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))
    loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)          # eps: label_smoothing (cDPO)

Logged: loss, accuracy (share of pairs ranked right: r_chosen > r_rejected, or h > 0) and margin (mean
r_chosen - r_rejected, or h / beta); eval/ the same on `pref.eval_pairs` held-out pairs. DPO also answers
`pref.eval_prompts` held-out prompts at every evaluation (llm_jax/rl/rewards.py): eval/gold (the hidden
judge's mean score), eval/kl (KL to init_from per answer), eval/correct, eval/length.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.data import chat, preferences
from llm_jax.inference.engine import _bucket
from llm_jax.model import heads
from llm_jax.rl import stage
from llm_jax.training import checkpoint, metrics as metrics_lib, optim
from llm_jax.training import state as state_lib
from llm_jax.training.step import make_train_step


# ---------------------------------------------------------------------------------------------------------------
# Pairs as arrays

def answer_rows(prompt: list[dict], answers: list, tok, markers: chat.Markers) -> list[tuple[list[int], list[int]]]:
  """(ids, weights) of prompt + each answer (assistant content): weights 1 on the tokens the assistant writes
  in that answer (its text, tool calls and end token), 0 on the prompt and on tool outputs."""
  head = chat.render_for_completion(prompt, tok, markers)
  out = []
  for answer in answers:
    rendered = chat.render(list(prompt) + [{"role": "assistant", "content": answer}], tok, markers=markers)
    if rendered.ids[:len(head)] != head:
      raise ValueError("the rendered answer does not start with the rendered prompt")
    out.append((rendered.ids, [0] * len(head) + rendered.mask[len(head):]))
  return out


def pair_arrays(rows: list[tuple], length: int) -> dict:
  """[pairs, 2, length] int32 tokens / segment_ids and float32 weights (right-padded) from answer_rows pairs."""
  n = len(rows)
  out = {"tokens": np.zeros((n, 2, length), np.int32), "segment_ids": np.zeros((n, 2, length), np.int32),
         "weights": np.zeros((n, 2, length), np.float32)}
  for i, pair in enumerate(rows):
    for j, (ids, weights) in enumerate(pair):
      out["tokens"][i, j, :len(ids)] = ids
      out["segment_ids"][i, j, :len(ids)] = 1
      out["weights"][i, j, :len(ids)] = weights
  return out


def render_pairs(pairs: list[dict], tok, max_len: int) -> tuple[list[tuple], int]:
  """(rows of the pairs that fit in max_len tokens, how many did not)."""
  markers = chat.Markers.of(tok)
  rows, too_long = [], 0
  for pair in pairs:
    both = answer_rows(pair["prompt"], [pair["chosen"], pair["rejected"]], tok, markers)
    if max(len(ids) for ids, _ in both) > max_len:
      too_long += 1
    else:
      rows.append(tuple(both))
  return rows, too_long


def _rows(batch: dict) -> tuple:
  """[pairs, 2, T] -> [2 * pairs, T] (chosen and rejected of pair i at rows 2i and 2i + 1)."""
  return tuple(batch[k].reshape(-1, batch[k].shape[-1]) for k in ("tokens", "segment_ids", "weights"))


def sequence_logps(model, params, tokens_BT, segment_ids_BT, weights_BT):
  """[B] sum over the weighted tokens of log p(token | the tokens before it)."""
  logits = model.apply({"params": params}, tokens_BT[:, :-1], None, segment_ids_BT[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp = jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(logp * weights_BT[:, 1:], axis=1)


def _pair_weights(batch):
  """[pairs] float32: batch["pair_weights"] ([pairs, 1]; 0 for repeats that fill a last evaluation batch), else 1."""
  if "pair_weights" in batch:
    return batch["pair_weights"].astype(jnp.float32)[:, 0]
  return jnp.ones(batch["tokens"].shape[0], jnp.float32)


# ---------------------------------------------------------------------------------------------------------------
# Losses: loss_fn(params, batch, rng) -> (sum, (pairs, sums)) for training/step.py

def reward_loss(model, margin: float = 0.0, center_coef: float = 0.0):
  """Bradley-Terry loss of a ScalarModel on a batch of pairs (module docstring)."""
  def loss_fn(params, batch, rng):
    del rng
    tokens, segment_ids, _ = _rows(batch)
    scores = heads.last_real(model.apply({"params": params}, tokens, None, segment_ids), segment_ids)
    scores = scores.reshape(-1, 2)
    diff = scores[:, 0] - scores[:, 1]
    loss = -jax.nn.log_sigmoid(diff - margin) + center_coef * jnp.sum(scores, axis=1) ** 2
    w = _pair_weights(batch)
    return jnp.sum(w * loss), (jnp.sum(w), {"count": jnp.sum(w), "accuracy": jnp.sum(w * (diff > 0)),
                                            "margin": jnp.sum(w * diff), "reward_chosen": jnp.sum(w * scores[:, 0]),
                                            "reward_rejected": jnp.sum(w * scores[:, 1])})
  return loss_fn


def dpo_loss(model, beta: float, label_smoothing: float = 0.0):
  """DPO loss; the batch carries `ref_logps` [pairs, 2] (the reference model's sequence_logps)."""
  def loss_fn(params, batch, rng):
    del rng
    logps = sequence_logps(model, params, *_rows(batch)).reshape(-1, 2)
    ratios = logps - batch["ref_logps"]
    h = beta * (ratios[:, 0] - ratios[:, 1])
    loss = -(1 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
    w = _pair_weights(batch)
    return jnp.sum(w * loss), (jnp.sum(w), {"count": jnp.sum(w), "accuracy": jnp.sum(w * (h > 0)),
                                            "margin": jnp.sum(w * h) / beta, "logp_chosen": jnp.sum(w * logps[:, 0]),
                                            "logp_rejected": jnp.sum(w * logps[:, 1])})
  return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# The stages

def run(config, workdir: str, train_lib) -> dict:
  """Trains a reward model (stage reward) or a DPO policy (stage dpo) into workdir; returns the summary."""
  with stage.start(config, workdir, train_lib):
    return _run(config, workdir, train_lib)


def _run(config, workdir: str, train_lib) -> dict:
  say = train_lib._print  # pylint: disable=protected-access
  is_reward = config.stage == "reward"
  tok, mesh = stage.prepare(config, workdir, train_lib)
  t_start = time.time()
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  done = stage.finished(mngr, config, workdir, say)  # before any pair is read or rendered
  if done:
    return done
  start_step = mngr.latest_step() or 0
  lm_setup = state_lib.build(config, mesh)
  model_cfg = lm_setup.model_config
  try:
    train_pairs = preferences.load(config.pref.data, config.pref.train_pairs, config.seed, "train")
    eval_pairs = preferences.load(config.pref.data, config.pref.eval_pairs, config.seed, "val")
  except ValueError as e:
    raise config_lib.ConfigError(f"config.pref.data={config.pref.data!r}: {e}") from None
  train_rows, dropped = render_pairs(train_pairs, tok, model_cfg.max_seq_len)
  eval_rows, eval_dropped = render_pairs(eval_pairs, tok, model_cfg.max_seq_len)
  if not train_rows or not eval_rows:
    raise config_lib.ConfigError(f"config.pref.data={config.pref.data!r}: no pair fits in model.max_seq_len="
                                 f"{model_cfg.max_seq_len} ({len(train_rows)} training, {len(eval_rows)} held out)")
  length = _bucket(max(len(ids) for pair in train_rows + eval_rows for ids, _ in pair), 16)
  train_data, eval_data = pair_arrays(train_rows, length), pair_arrays(eval_rows, length)
  say(f"pairs: {len(train_rows)} training, {len(eval_rows)} held out, rows of {length} tokens"
      + (f"; {dropped} training and {eval_dropped} held-out pairs longer than max_seq_len left out"
         if dropped or eval_dropped else ""))

  setup = state_lib.build(config, mesh, heads.ScalarModel(model_cfg)) if is_reward else lm_setup
  # init_from's weights: DPO's reference always; a reward model's trunk only when it starts (not on resume).
  lm_params = train_lib.init_params(config.init_from, lm_setup) if not (is_reward and start_step) else None
  rng = jax.random.PRNGKey(config.seed)
  ref_params = None if is_reward else lm_params
  if start_step:
    state = checkpoint.restore(mngr, setup.abstract_state)
    say(f"resuming from {workdir}/checkpoints/{start_step}")
  else:
    if is_reward:
      fresh = setup.init(rng)
      params = heads.from_lm(lm_params, fresh.params["score"])
      del fresh
    else:
      params = lm_params
    state = jax.jit(lambda p, r: state_lib.TrainState.create(p, setup.tx, r),
                    out_shardings=setup.state_sharding)(params, rng)
    say(f"initialised from {config.init_from}")
  train_lib._truncate_metrics(workdir, start_step)  # pylint: disable=protected-access

  model = setup.model
  if is_reward:
    loss_fn = reward_loss(model, config.reward.margin, config.reward.center_coef)
  else:
    loss_fn = dpo_loss(model, config.dpo.beta, config.dpo.label_smoothing)
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = make_train_step(loss_fn, setup.tx, optim.schedule(config.train), grad_accum=config.train.grad_accum,
                               state_sharding=setup.state_sharding, batch_sharding=batch_sharding)

  def eval_fn(params, batch):
    with sharding.activation_rules(mesh):
      _, (_, sums) = loss_fn(params, batch, None)
    return sums
  eval_sums = jax.jit(eval_fn, in_shardings=(setup.params_sharding, batch_sharding))

  def ref_fn(params, batch):
    with sharding.activation_rules(mesh):
      return sequence_logps(model, params, *_rows(batch)).reshape(-1, 2)
  ref_logps = jax.jit(ref_fn, in_shardings=(setup.params_sharding, batch_sharding))

  pairs_per_step = config.data.batch_size

  def on_device(arrays: dict, idx, **extra) -> dict:
    rows = {**{k: v[idx] for k, v in arrays.items()}, **extra}
    batch = sharding.rows_to_global(rows, list(range(len(idx))), len(idx), mesh)
    if not is_reward:
      batch["ref_logps"] = ref_logps(ref_params, batch)
    return batch

  gold_eval = None
  if not is_reward:
    from llm_jax.rl import rewards  # pylint: disable=import-outside-toplevel
    gold_eval = rewards.GoldEval(config, setup, mesh, tok, ref_params)
  writer = metrics_lib.Writer(workdir)

  def evaluate(step: int, params) -> dict:
    t0 = time.time()
    n = len(eval_rows)
    totals: dict = {}
    for i in range(0, n, pairs_per_step):  # whole batches (one compiled shape); repeats fill the last one
      positions = np.arange(i, i + pairs_per_step)
      batch = on_device(eval_data, positions % n, pair_weights=(positions < n).astype(np.float32)[:, None])
      for k, v in jax.device_get(eval_sums(params, batch)).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.pop("count"), 1.0)
    result = {k: v / count for k, v in totals.items()}
    if gold_eval is not None:
      result.update(gold_eval(params, seed=config.seed))
    return stage.log_eval(writer, say, step, result, t0)

  last = evaluate(0, state.params) if start_step == 0 else {}
  say(f"{config.stage}: {config.train.steps} steps x {pairs_per_step} pairs"
      + (f"; margin {config.reward.margin}, center_coef {config.reward.center_coef}" if is_reward else
         f"; beta {config.dpo.beta}, label_smoothing {config.dpo.label_smoothing}"))
  n = len(train_rows)
  epoch_order = functools.lru_cache(maxsize=2)(lambda epoch: np.random.default_rng([config.seed, epoch]).permutation(n))
  bar = tqdm(total=config.train.steps, initial=start_step, disable=not config.train.progress, desc=config.stage,
             unit="step", dynamic_ncols=True)
  for step in range(start_step, config.train.steps):
    # Pair i of the stream: a fresh seeded permutation of the pairs every epoch (resumes need no iterator).
    positions = np.arange(step * pairs_per_step, (step + 1) * pairs_per_step)
    idx = np.array([epoch_order(p // n)[p % n] for p in positions])
    state, m = train_step(state, on_device(train_data, idx), jax.random.fold_in(state.rng, step))
    if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
      m = {k: float(v) for k, v in jax.device_get(m).items() if k != "tokens"}
      writer.write(step + 1, m)
      bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
    bar.update(1)
    if (step + 1) % config.train.eval_every == 0 or step + 1 == config.train.steps:
      last = evaluate(step + 1, state.params)
    if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
      checkpoint.save(mngr, step + 1, state, None, force=True)
  bar.close()
  if gold_eval is not None:
    gold_eval.write_samples(workdir, state.params, seed=config.seed, say=say)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return stage.summarize(say, config.train.steps, last, t_start)
