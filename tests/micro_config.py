"""A micro pretraining config for tests: seconds per run on a CPU, same code paths as configs/tiny.py."""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.seq_len = 32
  config.data.batch_size = 4
  config.data.val_fraction = 0.05
  config.tokenizer.vocab_size = 384
  config.tokenizer.train_chars = 200_000
  config.model.d_model = 32
  config.model.n_layers = 2
  config.model.n_heads = 4
  config.model.n_kv_heads = 2
  config.model.head_dim = 8
  config.model.d_ff = 64
  config.train.steps = 12
  config.train.warmup_steps = 2
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.eval_batches = 2
  config.train.checkpoint_every = 4
  config.train.progress = False
  config.sample.prompts = ("def ",)
  config.sample.max_new_tokens = 8
  return config
