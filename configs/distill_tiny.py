"""A small student distilled from the tiny model (configs/tiny.py), sized for a CPU.

    python -m llm_jax.train --config configs/tiny.py   # the teacher -> runs/tiny
    python -m llm_jax.train --config configs/distill_tiny.py --config.distill.teacher=runs/tiny

A 1.44M-parameter student (2 layers, d_model 128, 2 query / 1 kv heads of 64, SwiGLU 384; the teacher has
5.25M) on the teacher's 4096-token BPE, trained 250 steps of 16 x 256 tokens on the built-in corpus with
loss = 0.5 * 2^2 * KL(teacher/2 || student/2) + 0.5 * cross-entropy (distill.alpha 0.5, distill.tau 2),
AdamW 3e-3, 20 warmup steps, cosine decay.

Measured by experiments/distillation.py (2026-11-25, 2-core CPU shared with other jobs): held-out eval/bpb
goes from 4.03 at step 0 to 2.327 at step 250, against 2.359 for the same student trained on the data alone
(same initialisation, batches and steps) and 2.184 for the teacher: distillation closes 18% of the gap. The
run took 6.3 minutes (~2,600 student tokens/s: every step also runs the teacher's forward pass) against 2.8
for the student from data. Its logged train `loss` is the mixed objective, not comparable with pretraining's.
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "distill"
  config.distill.teacher = "runs/tiny"
  config.model.d_model = 128
  config.model.n_layers = 2
  config.model.n_heads = 2
  config.model.n_kv_heads = 1
  config.model.head_dim = 64
  config.model.d_ff = 384
  config.train.steps = 250
  config.train.warmup_steps = 20
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  return config
