"""Pipeline parallelism over the `stage` mesh axis: a GPipe schedule written with `jax.shard_map`.

Design. The layer stack is already one array per parameter with a leading `layers` axis (scan_layers), and
`sharding.RULES` splits that axis over `stage`, so with S stages each device group holds a contiguous run
of n_layers/S layers -- the parameters need no re-layout and a checkpoint restores onto any mesh. Only the
stack is pipelined; the embedding, final norm and head run outside it under the ordinary (automatic)
sharding, like in MaxText.

Inside `shard_map`, which is manual over `stage` only (`axis_names={"stage"}`; data / fsdp / tensor stay
automatic, so the blocks' own sharding annotations keep working), the batch is cut into M micro-batches
and the schedule runs M + S - 1 ticks. At tick t, stage s applies its layers to micro-batch t - s: stage 0
reads it from the input, every other stage from what its predecessor produced at tick t - 1, passed on
with one `ppermute` per tick (neighbour to neighbour, point to point). The last stage's outputs are
broadcast back with a `psum`. The backward pass is JAX's transpose of this program: the `ppermute`s run in
reverse and gradients flow from the last stage to the first, i.e. GPipe's "all forward, then all
backward" with activations of the M in-flight micro-batches kept (use model.remat to keep only the block
inputs).

Why GPipe and not 1F1B or a circular/interleaved schedule: it is the one schedule that autodiff derives
from the forward program, so the pipelined step is the same `jax.value_and_grad` of the same loss as every
other mesh (its losses equal the 1-device run, which the tests check) and stays short and readable.
1F1B has the same bubble and only lowers peak activation memory; it needs a hand-written backward.

Cost. Every stage computes at every tick, so (S - 1) / (M + S - 1) of the stack's compute is the idle
"bubble" (it computes on zeros); raise mesh.microbatches to shrink it (M = 4 S: ~16% at S = 4). Each tick
sends one [B/M, T, D] activation to the next stage, far less than the all-gathers of fsdp, which is why
pipelining is the axis to put across slow links (e.g. between TPU slices).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

AXIS = "stage"


def split_microbatches(x, m: int):
  """[B, ...] -> [m, B/m, ...], micro-batch i taking rows i, i+m, i+2m, ...

  Strided rather than contiguous: with B split over data-parallel devices, each device's rows stay on it and
  every micro-batch is spread over all of them (a contiguous split would hand each micro-batch to a fraction
  of the devices, or move rows between them). Gradient accumulation splits the same way.
  """
  return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)


def merge_microbatches(x):
  """The inverse of split_microbatches."""
  return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def gpipe(layer_fn: Callable, stacked_params, x_BTD, positions_BT, segment_ids_BT, *, stages: int,
          microbatches: int):
  """Applies `layer_fn(params_i, x, positions, segment_ids) -> x` for every i of the stacked params, pipelined.

  Equals `lax.scan` of layer_fn over the leading axis of `stacked_params` (up to float reassociation).
  Must be traced under a mesh with a `stage` axis of size `stages` (sharding.activation_rules sets it).
  """
  n = jax.tree_util.tree_leaves(stacked_params)[0].shape[0]
  b = x_BTD.shape[0]
  if n % stages:
    raise ValueError(f"pipeline: {n} layer groups do not split into mesh.stage={stages} stages")
  if b % microbatches:
    raise ValueError(f"pipeline: a batch of {b} rows does not split into mesh.microbatches={microbatches}")
  s_count, m_count = stages, microbatches
  params_S = jax.tree_util.tree_map(lambda p: p.reshape((s_count, n // s_count) + p.shape[1:]), stacked_params)
  x_M, pos_M, seg_M = (split_microbatches(a, m_count) for a in (x_BTD, positions_BT, segment_ids_BT))

  def per_stage(params, x_M, pos_M, seg_M):
    params = jax.tree_util.tree_map(lambda p: p[0], params)  # this stage's [n/S, ...] layers
    s = jax.lax.axis_index(AXIS)

    def run_layers(h, pos, seg):
      return jax.lax.scan(lambda h, p: (layer_fn(p, h, pos, seg), None), h, params)[0]

    def tick(received, t):
      m = jnp.clip(t - s, 0, m_count - 1)  # the micro-batch this stage works on (clipped in the bubble)
      inputs = jnp.where(s == 0, x_M[jnp.clip(t, 0, m_count - 1)], received)
      out = run_layers(inputs, pos_M[m], seg_M[m])
      return jax.lax.ppermute(out, AXIS, [(i, i + 1) for i in range(s_count - 1)]), out

    first = jax.lax.pcast(jnp.zeros_like(x_M[0]), AXIS, to="varying")
    _, outs = jax.lax.scan(tick, first, jnp.arange(m_count + s_count - 1))
    # the last stage finished micro-batch m at tick m + S - 1; broadcast its results to every stage
    return jax.lax.psum(jnp.where(s == s_count - 1, outs[s_count - 1:], 0), AXIS)

  y_M = jax.shard_map(per_stage, in_specs=(P(AXIS), P(), P(), P()), out_specs=P(), axis_names={AXIS})(
      params_S, x_M, pos_M, seg_M)
  return merge_microbatches(y_M)
