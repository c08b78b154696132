"""The no-cache sampler and llm_jax.load on a trained workdir."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.inference import sample
from llm_jax.model import ModelConfig, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(small_tokenizer):
  cfg = ModelConfig(vocab_size=small_tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                    head_dim=8, d_ff=32, max_seq_len=32)
  model = Transformer(cfg)
  return model, nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])


def test_greedy_is_deterministic_and_matches_step_by_step_argmax(small_tokenizer):
  model, params = _model(small_tokenizer)
  prompts = ["def ", "import os\nimport sys\n"]  # different lengths in one batch
  a = sample.generate(model, params, small_tokenizer, prompts, max_new_tokens=5)
  assert a == sample.generate(model, params, small_tokenizer, prompts, max_new_tokens=5)
  # Reference: grow the sequence one argmax at a time with full forward passes.
  ids = [small_tokenizer.bos_id] + small_tokenizer.encode(prompts[1])
  forward = jax.jit(lambda p, buffer: model.apply({"params": p}, buffer))  # one causal buffer: one compile
  for _ in range(5):
    buffer = np.zeros((1, 32), np.int32)
    buffer[0, :len(ids)] = ids
    ids.append(int(jnp.argmax(forward(params, buffer)[0, len(ids) - 1])))
  assert a[1] == small_tokenizer.decode(ids[-5:])


def test_temperature_sampling_depends_on_seed_and_prompt_limit(small_tokenizer):
  model, params = _model(small_tokenizer)
  outs = {sample.generate(model, params, small_tokenizer, ["x"], max_new_tokens=12, temperature=1.0, seed=s)[0]
          for s in range(4)}
  assert len(outs) > 1
  with pytest.raises(ValueError, match="max_seq_len=32"):
    sample.generate(model, params, small_tokenizer, ["x"], max_new_tokens=40)


def test_load_and_generate_cli_on_a_trained_workdir(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  cfg = os.path.join(ROOT, "tests", "micro_config.py")
  subprocess.run([sys.executable, "-m", "llm_jax.train", f"--config={cfg}", f"--workdir={tmp_path}",
                  "--config.train.steps=2"], cwd=ROOT, env=env, check=True, capture_output=True)
  import llm_jax  # pylint: disable=import-outside-toplevel
  config, params, tok = llm_jax.load(str(tmp_path))
  assert config.model.d_model == 32 and tok.vocab_size == config.model.vocab_size
  assert params["embed"]["embedding"].shape == (tok.vocab_size, 32)
  out = subprocess.run([sys.executable, "-m", "llm_jax.generate", f"--workdir={tmp_path}", "--prompt=def ",
                        "--max_new_tokens=4"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
  assert out.stdout.startswith("def ")
