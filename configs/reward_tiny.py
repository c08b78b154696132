"""A reward model for the tiny assistant: the SFT trunk + a scalar head, trained on synthetic preference pairs.

    python -m llm_jax.train --config configs/sft_compare.py  # an assistant whose answers vary in quality
    python -m llm_jax.train --config configs/reward_tiny.py  # -> runs/reward_tiny

4,000 pairs of answers to "which of two numbers is larger?" (llm_jax/data/tasks/compare.py), labelled by
the task's hidden gold judge (right answer, full sentence, one polite closing, no repetition, concise);
Bradley-Terry loss with reward centering, AdamW 3e-4, 200 steps of 16 pairs. Held-out pair accuracy is
logged as eval/accuracy (experiments/rlhf.md has the measured numbers).
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "reward"
  config.init_from = "runs/sft_compare"
  config.pref.data = "compare"
  config.data.batch_size = 16  # pairs per step
  config.data.seq_len = 128
  config.train.steps = 200
  config.train.lr = 3e-4
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 50
  config.train.checkpoint_every = 100
  config.train.log_every = 10
  return config
