"""Llama 3.1 8B pretraining on a v5p-8 slice (4 chips, topology v5p:2x2x1): the published shape, 8192 tokens.

    python -m llm_jax.aot --config configs/llama3_1_8b.py --topology v5p:2x2x1

compiles this config's real train step ahead of time for those 4 chips on any machine (see llm_jax/aot.py).
Model: `presets.apply(config, "llama3.1-8b")` -- 8,030,261,248 parameters, bfloat16 compute, remat="full",
scanned layers. Parameters stay float32 (model.param_dtype) with float32 AdamW moments: 12 bytes per
parameter of state, 16 with the gradients. Batch: 32 rows x 8192 tokens = 262,144 tokens per step, as 8
accumulated micro-batches of 4 rows (one row per chip). Mesh: fsdp=4 (ZeRO-3: parameters, moments and
gradients split 4 ways); data=-1 takes any further chips: on a larger slice, keep a row per chip in each
micro-batch (raise data.batch_size or lower train.grad_accum; a batch that does not split says so).

Measured (AOT on a 2-core CPU, jax/libtpu 0.10.2 / 0.0.42.1, 2026-11-25), per chip:
  mesh data=1 x fsdp=4 x tensor=1
  arguments 22.44 GiB (the state shard: 8.03B x 12 bytes / 4), outputs 22.44, aliased 22.44 (the new state
  written into the donated one), temporaries 50.14, code 0.03 -> total 72.61 GiB of 95 GiB HBM (76.4%): fits
  FLOPs per step: model (6N + attention) 1.518e16, i.e. 3.795e15 per chip; traced matmuls including the
  remat recomputation 1.898e16; XLA cost_analysis 4.37e13 per chip (it counts each loop body once, so
  scanned layers and accumulated micro-batches are missing from it); 8.3 s per step at 100% of bf16 peak
  compile 31.9 s on an idle machine (114-144 s while other jobs shared the 2 cores), 1.4 GB host memory
A larger micro-batch (grad_accum=4, two rows per chip) measured 85.1 GiB of 95 (89.6%): it fits, with less
headroom (and not under the decimal reading of Google's "95 GB", 88.5 GiB, by much).

To train for real, start from the released weights (`--config.init_from=path/to/Llama-3.1-8B`, which also
brings the 128,256-token tokenizer) and point `--config.data.source` at a corpus; the defaults (the stdlib
corpus, a tokenizer trained on it) are only there so that the config validates and runs anywhere.
"""

from llm_jax.config import base_config
from llm_jax.model import presets


def get_config():
  config = base_config()
  presets.apply(config, "llama3.1-8b")  # also sets tokenizer.vocab_size = 128256
  config.data.seq_len = 8192
  config.data.batch_size = 32
  config.train.grad_accum = 8
  config.train.steps = 10_000
  config.train.warmup_steps = 1000
  config.train.lr = 3e-4  # Llama 3 8B's peak learning rate
  config.train.min_lr_ratio = 0.1
  config.train.log_every = 10
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.mesh.data = -1
  config.mesh.fsdp = 4
  config.mesh.tensor = 1
  return config
