"""Llama 3.1 405B pretraining on a v5p-1024 slice (512 chips, topology v5p:8x8x8): published shape, 8192 tokens.

    python -m llm_jax.aot --config configs/llama3_1_405b.py --topology v5p:8x8x8

compiles this config's real train step ahead of time for those 512 chips on any machine (see
llm_jax/aot.py). Model: `presets.apply(config, "llama3.1-405b")` -- 405,853,388,800 parameters, bfloat16
compute, remat="full", scanned layers. Parameters stay float32 (model.param_dtype) with float32 AdamW
moments. Batch: 512 rows x 8192 tokens = 4,194,304 tokens per step (Llama 3's initial 405B batch), as 8
accumulated micro-batches of 64 rows (one row per fsdp group). Mesh: fsdp=64 x tensor=8; data=-1 takes any
further chips (with a row per chip in each micro-batch: raise data.batch_size or lower train.grad_accum).

Measured (AOT on a 2-core CPU, jax/libtpu 0.10.2 / 0.0.42.1, 2026-11-25), per chip:
  mesh data=1 x fsdp=64 x tensor=8
  arguments 8.86 GiB (the state shard: 405.85B x 12 bytes / 512), outputs 8.86, aliased 8.86 (the new
  state written into the donated one), temporaries 60.41, code 0.03 -> total 69.30 GiB of 95 GiB HBM
  (72.9%): fits
  FLOPs per step: model (6N + attention) 1.101e19, i.e. 2.151e16 per chip; traced matmuls including the
  remat recomputation 1.374e19; XLA cost_analysis 3.95e13 per chip (it counts each loop body once, so
  scanned layers and accumulated micro-batches are missing from it); 46.9 s per step at 100% of bf16 peak
  compile 28.2 s on an idle machine, 1.5 GB host memory
Half the slice, v5p-512 (256 chips, --topology v5p:8x8x4), with float32 parameters: fsdp=64 x tensor=4 with
grad_accum=8 needs 106.0 GiB per chip (does not fit); fsdp=32 x tensor=8 with grad_accum=16 needs 93.3 GiB
(98.2%: fits on paper, no headroom). With bfloat16 parameters and AdamW moments it fits there:

    python -m llm_jax.aot --config configs/llama3_1_405b.py --topology v5p:8x8x4 --config.mesh.fsdp=32 \
      --config.model.param_dtype=bfloat16 --config.train.grad_accum=16

  state shard 8.86 GiB (6 bytes per parameter), fully aliased; temporaries 66.39 GiB (gradients are summed
  in float32 across micro-batches); total 75.29 GiB of 95 (79.3%); compiled in 39.5 s. Training in
  bfloat16 without float32 master weights loses small updates, which is why float32 is the default here.

To train for real, start from the released weights (`--config.init_from=path/to/Llama-3.1-405B`, which also
brings the 128,256-token tokenizer) and point `--config.data.source` at a corpus; the defaults (the stdlib
corpus, a tokenizer trained on it) are only there so that the config validates and runs anywhere.
"""

from llm_jax.config import base_config
from llm_jax.model import presets


def get_config():
  config = base_config()
  presets.apply(config, "llama3.1-405b")  # also sets tokenizer.vocab_size = 128256
  config.data.seq_len = 8192
  config.data.batch_size = 512
  config.train.grad_accum = 8
  config.train.steps = 10_000
  config.train.warmup_steps = 2000
  config.train.lr = 8e-5  # Llama 3 405B's peak learning rate
  config.train.min_lr_ratio = 0.01
  config.train.log_every = 10
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.mesh.data = -1
  config.mesh.fsdp = 64
  config.mesh.tensor = 8
  return config
