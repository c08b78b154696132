"""DPO on the tiny assistant from the same preference pairs as the reward model (configs/reward_tiny.py).

    python -m llm_jax.train --config configs/dpo_tiny.py      # init_from runs/sft_compare -> runs/dpo_tiny

No reward model and no sampling during training: -log sigmoid(beta x the chosen-minus-rejected log-ratio to
the SFT model) on 16 pairs per step (llm_jax/rl/preference.py). Held-out pair accuracy of the implicit
reward, and gold reward and KL of sampled answers to held-out prompts, every 25 steps. beta 0.3 and lr 2e-5:
with beta 0.1 and lr 1e-4 the log-probability of the chosen answers fell too (-9 -> -28 nats) and gold
reward with it
(experiments/rlhf.md has the numbers).
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "dpo"
  config.init_from = "runs/sft_compare"
  config.pref.data = "compare"
  config.dpo.beta = 0.3
  config.data.batch_size = 16  # pairs per step
  config.data.seq_len = 128
  config.train.steps = 150
  config.train.lr = 2e-5
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 25
  config.train.checkpoint_every = 75
  config.train.log_every = 10
  return config
