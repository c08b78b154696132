"""llm_jax: the whole life of a ChatGPT-like model as one small JAX/Flax codebase.

Public API: `llm_jax.model.Transformer` + `ModelConfig`, `llm_jax.load(workdir)`, `llm_jax.tokenizer.load`.
"""

from __future__ import annotations

import json
import os


def load(workdir: str, step: int | None = None, mesh=None):
  """(config, params, tokenizer) of a training run's workdir, from its latest (or given) checkpoint.

  The parameters are replicated over this machine's devices, or, given a `jax.sharding.Mesh`, sharded over
  it by their logical axis names like a training run's (distillation restores its teacher so).
  """
  import ml_collections  # pylint: disable=import-outside-toplevel

  from llm_jax import sharding, tokenizer  # pylint: disable=import-outside-toplevel
  from llm_jax.training import checkpoint, state  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a llm_jax workdir?")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  # Whatever mesh trained them: the layout of parameters does not depend on the mesh.
  setup = state.build(config, sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}) if mesh is None else mesh)
  params = checkpoint.restore_params(workdir, setup.abstract_state.params, step)
  return config, params, tokenizer.load(os.path.join(workdir, "tokenizer"))
