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
  model: Transformer
  tx: optax.GradientTransformation
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  state_sharding: TrainState
  params_sharding: Any
  init: Callable[[jax.Array], TrainState]  # jitted, returns the sharded initial state


def build(config, mesh) -> Setup:
  model_config = config_lib.model_config(config)
  model = Transformer(model_config)
  tx = optim.make(config.train)
  dummy = jnp.zeros((1, config.data.seq_len), jnp.int32)

  def init(rng):
    return TrainState.create(nn.unbox(model.init(rng, dummy)["params"]), tx, rng)

  rng = jax.random.PRNGKey(0)
  params_sharding = sharding.logical_sharding(jax.eval_shape(model.init, rng, dummy), mesh)["params"]
  abstract = jax.eval_shape(init, rng)
  opt_sharding = optax.tree_map_params(  # moments shard like their parameters; step counts are replicated
      tx, lambda _, s: s, abstract.opt_state, params_sharding, transform_non_params=lambda _: sharding.replicated(mesh))
  state_sharding = abstract.replace(step=sharding.replicated(mesh), params=params_sharding,
                                    opt_state=opt_sharding, rng=sharding.replicated(mesh))
  abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                    abstract, state_sharding)
  return Setup(model_config, model, tx, abstract, state_sharding, params_sharding,
               jax.jit(init, out_shardings=state_sharding))
