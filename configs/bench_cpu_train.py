"""The CPU training-throughput benchmark (README "Training throughput"): configs/bench_cpu.py's model with a
SwiGLU of 1536 (19.3M parameters), batch 8 x 256 tokens, float32, untied embeddings.

    python -m llm_jax.bench train --config configs/bench_cpu_train.py --peer hf
    python -m llm_jax.train --config configs/bench_cpu_train.py     # the full loop, for its logged tokens/s

A file of its own because bench_cpu.py's d_ff of 1024 is the shape the decode figures were measured at.
The layers are unrolled (scan_layers=False): at 6 layers the compile stays short (~4 s), and XLA:CPU runs
the unrolled stack 1.2x faster than the scanned one, whose while loop stacks every layer's saved
activations with dynamic-update-slices.
"""

import os

from llm_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "bench_cpu.py"))
  config.model.d_ff = 1536
  config.model.scan_layers = False
  config.data.batch_size = 8
  return config
