"""The train state, and everything derived from a config to create, shard or restore it.

`build(config, mesh)` gives the model, the optimizer, the abstract state (shapes only, from
`jax.eval_shape`) and its shardings (from the parameters' logical axis names), plus a jitted `init` with
`out_shardings`, so parameters are created already sharded and no full copy sits on one host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm_jax import config as config_lib, sharding
from llm_jax.model import ModelConfig, Transformer
from llm_jax.training import optim


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base PRNG key (raw uint32 data); step k uses fold_in(rng, k)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


@dataclasses.dataclass
class Setup:
  model_config: ModelConfig
  model: Any  # the Transformer, or build()'s `model`
  tx: optax.GradientTransformation
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  state_sharding: TrainState
  params_sharding: Any
  init: Callable[[jax.Array], TrainState]  # jitted, returns the sharded initial state


def pipeline_microbatches(config, mesh) -> int:
  """mesh.microbatches, with -1 resolved: 2 x the stage count (1 without pipelining)."""
  stages = mesh.shape.get("stage", 1)
  if stages == 1:
    return 1
  return config.mesh.microbatches if config.mesh.microbatches > 0 else 2 * stages


def check_batch_fits_mesh(config, mesh):
  """ConfigErrors for a batch that the mesh's batch axes, its context axis or the pipeline cannot split evenly."""
  microbatches = pipeline_microbatches(config, mesh)
  rows = config.data.batch_size // config.train.grad_accum
  if rows % microbatches:
    raise config_lib.ConfigError(f"data.batch_size / train.grad_accum = {rows} rows per micro-batch must divide into "
                                 f"mesh.microbatches={microbatches} pipeline micro-batches")
  batch_ways = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
  if (rows // microbatches) % batch_ways:
    raise config_lib.ConfigError(
        f"{rows // microbatches} rows per (pipeline) micro-batch (data.batch_size={config.data.batch_size}, "
        f"train.grad_accum={config.train.grad_accum}, mesh.microbatches={microbatches}) must divide over mesh "
        f"data x fsdp = {batch_ways} devices")
  ways, seq, block = mesh.shape.get("context", 1), config.data.seq_len, config.model.attention_block
  chunks = ways * (2 if config.model.context_balance == "zigzag" else 1)  # zigzag: 2 chunks per device
  if ways > 1 and (seq % chunks or (seq // chunks > block and (seq // chunks) % block)):
    raise config_lib.ConfigError(
        f"data.seq_len={seq} must split into mesh.context={ways} equal parts"
        f"{' of 2 equal chunks (model.context_balance=zigzag)' if chunks > ways else ''}, each a multiple of "
        f"model.attention_block={block} when longer than it")


def check_model_fits_mesh(config, mesh, params_sharding, abstract_params):
  """ConfigErrors for parameters or a layer stack that the mesh cannot split evenly, naming the keys."""
  stages, m = mesh.shape.get("stage", 1), config.model
  if stages > 1:
    groups = m.n_layers // len(m.layer_pattern)
    if not m.scan_layers:
      raise config_lib.ConfigError(f"mesh.stage={stages} (pipeline parallelism) needs model.scan_layers=True")
    if groups % stages:
      raise config_lib.ConfigError(f"mesh.stage={stages} must divide the {groups} repeats of model.layer_pattern="
                                   f"{m.layer_pattern!r} (model.n_layers={m.n_layers})")
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  for (path, leaf), sh in zip(flat, jax.tree_util.tree_leaves(params_sharding)):
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(sh.spec) + (None,) * len(leaf.shape))):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = int(np.prod([mesh.shape[a] for a in axes]))
      if size % ways:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise config_lib.ConfigError(
            f"parameter {name} {tuple(leaf.shape)}: dimension {dim} of size {size} cannot split over mesh "
            + " x ".join(f"{a}={mesh.shape[a]}" for a in axes) + "; change the mesh or the model shape")


def build(config, mesh, model=None) -> Setup:
  """The Setup of config's Transformer, or of `model` (another module of the same config called on tokens:
  the reward model of model/heads.py, PPO's policy + value) whose parameters the state holds."""
  model_config = config_lib.model_config(config)
  model = model or Transformer(model_config, pipeline_stages=mesh.shape.get("stage", 1),
                               pipeline_microbatches=pipeline_microbatches(config, mesh))
  tx = optim.make(config.train)
  dummy = jnp.zeros((1, config.data.seq_len), jnp.int32)

  def init(rng):
    return TrainState.create(nn.unbox(model.init(rng, dummy)["params"]), tx, rng)

  rng = jax.random.PRNGKey(0)
  params_sharding = sharding.logical_sharding(jax.eval_shape(model.init, rng, dummy), mesh)["params"]
  abstract = jax.eval_shape(init, rng)
  check_model_fits_mesh(config, mesh, params_sharding, abstract.params)
  opt_sharding = optax.tree_map_params(  # moments shard like their parameters; step counts are replicated
      tx, lambda _, s: s, abstract.opt_state, params_sharding, transform_non_params=lambda _: sharding.replicated(mesh))
  state_sharding = abstract.replace(step=sharding.replicated(mesh), params=params_sharding,
                                    opt_state=opt_sharding, rng=sharding.replicated(mesh))
  abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                    abstract, state_sharding)
  return Setup(model_config, model, tx, abstract, state_sharding, params_sharding,
               jax.jit(init, out_shardings=state_sharding))
