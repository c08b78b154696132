"""Presets have the published shapes: parameter counts from jax.eval_shape of the real init function.

Expected totals: the released checkpoints' safetensors index metadata (total_size / 2 bytes per bf16
parameter) for Meta's Llama 3.1 8B / 70B / 405B, and transformers' num_parameters() of the released
openai-community gpt2 / gpt2-medium (tied head counted once).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from llm_jax import config as config_lib
from llm_jax.model import Transformer, presets

PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_count_matches_published(name):
  cfg = presets.get(name)
  shapes = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  count = sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))
  assert count == PUBLISHED[name]
  assert cfg.num_params() == count


def test_llama31_8b_shapes():
  cfg = presets.get("llama3.1-8b")
  assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.vocab_size) == (
      4096, 32, 32, 8, 14336, 128256)
  assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
          cfg.rope_high_freq_factor, cfg.rope_original_max_len) == (500000.0, "llama3", 8.0, 1.0, 4.0, 8192)


def test_apply_preset_to_a_config_and_unknown_name():
  config = config_lib.base_config()
  presets.apply(config, "gpt2")
  assert config.model.tie_embeddings and config.model.positions == "learned"
  assert config.tokenizer.vocab_size == 50257  # linked to model.vocab_size
  assert config.model.max_seq_len == -1 and config_lib.model_config(config).max_seq_len == config.data.seq_len
  with pytest.raises(KeyError, match="llama3.1-8b"):
    presets.get("llama-8b")
