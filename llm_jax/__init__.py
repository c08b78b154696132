"""llm_jax: the whole life of a ChatGPT-like model as one small JAX/Flax codebase.

Public API: `llm_jax.model.Transformer` + `ModelConfig`, `llm_jax.load(workdir)`, `llm_jax.tokenizer.load`.
"""

from __future__ import annotations

import json
import os


def load(workdir: str, step: int | None = None, mesh=None):
  """(config, params, tokenizer) of a training run's workdir, from its latest (or given) checkpoint.

  A stage-ppo workdir gives the policy's parameters. A stage-reward workdir holds a reward model, not a
  language model (PPO restores it itself: ppo.reward_model), and is refused here.

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
  if config.get("stage") == "reward":
    raise ValueError(f"{workdir} holds a reward model (stage 'reward'), not a language model; use it as "
                     "ppo.reward_model")
  # Whatever mesh trained them: the layout of parameters does not depend on the mesh.
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}) if mesh is None else mesh
  setup = state.build(config, mesh)
  tok = tokenizer.load(os.path.join(workdir, "tokenizer"))
  if config.get("lora", {}).get("rank", 0):  # checkpoints hold LoRA adapters: merge them into init_from's weights
    import jax  # pylint: disable=import-outside-toplevel
    from llm_jax.training import sft  # pylint: disable=import-outside-toplevel
    _, base, _ = load(config.init_from, mesh=mesh)
    init_adapters, merge = sft.lora_fns(config, tok)
    abstract = sft.replicated_abstract(jax.eval_shape(init_adapters, jax.random.PRNGKey(0), base), mesh)
    adapters = checkpoint.restore_params(workdir, abstract, step)
    return config, jax.jit(merge, out_shardings=setup.params_sharding)(base, adapters), tok
  if config.stage == "ppo":  # the state holds {"policy", "value"}: the language model is the policy
    from llm_jax.rl import ppo  # pylint: disable=import-outside-toplevel
    model = ppo.PolicyAndValue(setup.model_config)
    params = checkpoint.restore_params(workdir, state.build(config, mesh, model).abstract_state.params, step)
    return config, params["policy"], tok
  params = checkpoint.restore_params(workdir, setup.abstract_state.params, step)
  return config, params, tok
