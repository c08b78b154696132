"""The train state and the one pure train step: `step(state, batch, rng) -> (state, metrics)`.

`make_train_step` closes over the model, optimizer and loss and returns the jitted step with in/out
shardings and the state donated. Gradient accumulation is a `lax.scan` over micro-batches inside the
step: per-micro-batch gradients of the *summed* loss are added up and divided once by the total number of
target tokens, so accumulating A micro-batches gives the same update as one batch A times larger.

A loss function has the signature `loss_fn(params, batch, rng) -> (sum_of_losses, num_tokens)`; the
next-token loss for pretraining is `next_token_loss`, distillation's is `training.distill.distill_loss`; later
stages plug in their own. One may return `(sum_of_losses, (num_tokens, sums))` instead, `sums` a dict of
further sums over the batch with a "count" entry: the step then also reports each `sums[k] / count` (e.g.
GRPO's KL and clip fraction per policy token, rl/grpo.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from llm_jax import sharding
from llm_jax.eval import bpb
from llm_jax.model.pipeline import split_microbatches
from llm_jax.training.state import TrainState

Batch = dict


def target_weights(batch: Batch):
  """[B, T] float32: which targets count. SFT batches carry `weights` (the assistant's tokens: data/chat.py);
  pretraining counts every target that is not padding (segment id > 0)."""
  if "weights" in batch:
    return batch["weights"].astype(jnp.float32) * (batch["segment_ids"] > 0)
  return (batch["segment_ids"] > 0).astype(jnp.float32)


def next_token_loss(model) -> Callable:
  """Cross-entropy of `targets` given `inputs`, summed over the targets that count (`target_weights`)."""
  def loss_fn(params, batch: Batch, rng):
    del rng  # pretraining uses no dropout
    logits_BTV = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    weights_BT = target_weights(batch)
    nats_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    return jnp.sum(nats_BT * weights_BT), jnp.sum(weights_BT)
  return loss_fn


def _split(batch: Batch, n: int) -> Batch:
  """Micro-batches strided like the pipeline's (rows i, i+n, ...), so each data-parallel device keeps its rows."""
  return jax.tree_util.tree_map(lambda x: split_microbatches(x, n), batch)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, loss_fn: Callable,
               tx: optax.GradientTransformation, lr_fn: Callable, grad_accum: int = 1):
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  split_aux = lambda aux: aux if isinstance(aux, tuple) else (aux, {})  # num_tokens [, extra sums]

  def micro(carry, xs):
    grads_sum, loss_sum, tokens_sum, sums = carry
    micro_batch, micro_rng = xs
    (loss, aux), grads = grad_fn(state.params, micro_batch, micro_rng)
    tokens, extra = split_aux(aux)
    grads_sum = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), grads_sum, grads)
    sums = jax.tree_util.tree_map(lambda a, b: a + b.astype(jnp.float32), sums, extra)
    return (grads_sum, loss_sum + loss, tokens_sum + tokens, sums), None

  # Gradients are summed in float32 whatever the parameters' dtype, then cast back to it, so that the
  # optimizer state keeps its dtype from step to step (and the donated state's buffers can be reused).
  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  rngs = jax.random.split(rng, grad_accum)
  micro_batches = _split(batch, grad_accum)
  _, aux_shape = jax.eval_shape(loss_fn, state.params, jax.tree_util.tree_map(lambda x: x[0], micro_batches), rng)
  sums0 = jax.tree_util.tree_map(lambda x: jnp.zeros((), jnp.float32), split_aux(aux_shape)[1])
  (grads, loss_sum, tokens, sums), _ = jax.lax.scan(
      micro, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), sums0), (micro_batches, rngs))
  tokens = jnp.maximum(tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g, p: (g / tokens).astype(p.dtype), grads, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss_sum / tokens, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step),
             "tokens": tokens}
  if sums:
    count = jnp.maximum(sums.pop("count"), 1.0)
    metrics.update({k: v / count for k, v in sums.items()})
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(loss_fn: Callable, tx, lr_fn, *, grad_accum: int, state_sharding, batch_sharding):
  """The jitted `step(state, batch, rng) -> (state, metrics)`.

  A `loss_fn` that is a `jax.tree_util.Partial` binding arrays (the distillation loss binds the teacher's
  parameters) becomes an argument of the compiled step, so those arrays keep their shardings and are not
  baked into the program as constants; the step returned then is a plain function of (state, batch, rng).
  """
  def step(state, batch, rng, loss):
    with sharding.activation_rules(batch_sharding.mesh):
      return train_step(state, batch, rng, loss_fn=loss, tx=tx, lr_fn=lr_fn, grad_accum=grad_accum)
  if isinstance(loss_fn, jax.tree_util.Partial):
    jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding, None, None),
                     out_shardings=(state_sharding, None), donate_argnums=0)
    return lambda state, batch, rng: jitted(state, batch, rng, loss_fn)
  return jax.jit(functools.partial(step, loss=loss_fn), in_shardings=(state_sharding, batch_sharding, None),
                 out_shardings=(state_sharding, None), donate_argnums=0)


def make_eval_step(model, token_bytes_V, *, params_sharding, batch_sharding):
  """Jitted (params, batch) -> sums of {"nats", "bytes", "tokens"} over target tokens that stand for text."""
  def eval_step(params, batch: Batch):
    with sharding.activation_rules(batch_sharding.mesh):
      logits_BTV = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    weights_BT = target_weights(batch)
    nats, num_bytes, tokens = bpb.token_nats_and_bytes(logits_BTV, batch["targets"], weights_BT, token_bytes_V)
    return {"nats": nats, "bytes": num_bytes, "tokens": tokens}
  return jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding))
