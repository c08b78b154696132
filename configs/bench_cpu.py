"""The CPU benchmark shape: d_model 384, 6 layers, 6 query / 2 kv heads (head_dim 64), SwiGLU 1024,
vocabulary 8192 (15.7M parameters, 12.6M of them in matmuls). `llm_jax.bench` decodes with it (training
throughput uses configs/bench_cpu_train.py, this shape with SwiGLU 1536), and it is a pretraining config,
so a trained copy gives the benchmark validation numbers (bits per byte of quantized vs float weights):

    python -m llm_jax.train --config configs/bench_cpu.py                   # runs/bench_cpu, ~150 steps
    python -m llm_jax.bench decode --config configs/bench_cpu.py --workdir runs/bench_cpu --peer hf

Measured numbers: README "Inference engine" and the issue notes.
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.tokenizer.vocab_size = 8192
  config.model.d_model = 384
  config.model.n_layers = 6
  config.model.n_heads = 6
  config.model.n_kv_heads = 2
  config.model.head_dim = 64
  config.model.d_ff = 1024
  config.model.max_seq_len = 1024
  config.data.seq_len = 256
  config.train.steps = 150
  config.train.warmup_steps = 15
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  return config
