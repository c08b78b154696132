"""Tensor-parallel decoding on 8 CPU devices (data 4 x tensor 2) equals decoding on one device.

Run by tests/test_engine.py in a subprocess (the device count is fixed when JAX starts).
"""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from llm_jax import sharding  # pylint: disable=wrong-import-position
from llm_jax.inference import engine as E  # pylint: disable=wrong-import-position
from llm_jax.model import ModelConfig, Transformer  # pylint: disable=wrong-import-position


def main():
  assert jax.device_count() == 8
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                    max_seq_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  prompts = [[1, 5, 9], [1, 7, 3, 3, 2], [1], [1, 2, 3, 4, 5, 6, 7]]
  one = E.Engine(model, params).generate(prompts, 10)
  mesh = sharding.make_mesh({"data": 4, "tensor": 2})
  engine = E.Engine(model, params, mesh=mesh)
  state = engine.start(prompts, 10)
  k = state.cache["layers"][0]["k"]
  assert k.sharding.spec[:2] == (("data", "fsdp"), "tensor"), k.sharding.spec  # rows over data, kv heads split
  q_kernel = engine.params["layer_0"]["attn"]["q"]["kernel"]
  assert q_kernel.sharding.spec[1] == "tensor", q_kernel.sharding.spec
  assert engine.generate(prompts, 10) == one, (engine.generate(prompts, 10), one)
  print("tensor-parallel decoding matches one device")


if __name__ == "__main__":
  main()
