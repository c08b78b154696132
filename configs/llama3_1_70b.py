"""Llama 3.1 70B pretraining on a v5p-128 slice (64 chips, topology v5p:4x4x4): published shape, 8192 tokens.

    python -m llm_jax.aot --config configs/llama3_1_70b.py --topology v5p:4x4x4

compiles this config's real train step ahead of time for those 64 chips on any machine (see llm_jax/aot.py).
Model: `presets.apply(config, "llama3.1-70b")` -- 70,553,706,496 parameters, bfloat16 compute,
remat="full", scanned layers. Parameters stay float32 (model.param_dtype) with float32 AdamW moments.
Batch: 256 rows x 8192 tokens = 2,097,152 tokens per step, as 16 accumulated micro-batches of 16 rows (one
row per fsdp group). Mesh: fsdp=16 x tensor=4 (heads, MLP and vocab split 4 ways inside each group of 4
chips; parameters, moments and gradients split over all 64); data=-1 takes any further chips (with a row
per chip in each micro-batch: raise data.batch_size or lower train.grad_accum).

Measured (AOT on a 2-core CPU, jax/libtpu 0.10.2 / 0.0.42.1, 2026-11-25), per chip:
  mesh data=1 x fsdp=16 x tensor=4
  arguments 12.32 GiB (the state shard: 70.55B x 12 bytes / 64), outputs 12.32, aliased 12.32 (the new
  state written into the donated one), temporaries 44.01, code 0.04 -> total 56.37 GiB of 95 GiB HBM
  (59.3%): fits
  FLOPs per step: model (6N + attention) 1.010e18, i.e. 1.578e16 per chip; traced matmuls including the
  remat recomputation 1.263e18; XLA cost_analysis 2.00e13 per chip (it counts each loop body once, so
  scanned layers and accumulated micro-batches are missing from it); 34.4 s per step at 100% of bf16 peak
  compile 35.6 s on an idle machine (149 s while other jobs shared the 2 cores), 1.7 GB host memory

To train for real, start from the released weights (`--config.init_from=path/to/Llama-3.1-70B`, which also
brings the 128,256-token tokenizer) and point `--config.data.source` at a corpus; the defaults (the stdlib
corpus, a tokenizer trained on it) are only there so that the config validates and runs anywhere.
"""

from llm_jax.config import base_config
from llm_jax.model import presets


def get_config():
  config = base_config()
  presets.apply(config, "llama3.1-70b")  # also sets tokenizer.vocab_size = 128256
  config.data.seq_len = 8192
  config.data.batch_size = 256
  config.train.grad_accum = 16
  config.train.steps = 10_000
  config.train.warmup_steps = 2000
  config.train.lr = 1.5e-4  # Llama 3 70B's peak learning rate
  config.train.min_lr_ratio = 0.1
  config.train.log_every = 10
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.mesh.data = -1
  config.mesh.fsdp = 16
  config.mesh.tensor = 4
  return config
