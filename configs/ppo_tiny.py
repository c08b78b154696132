"""RLHF with PPO on the tiny assistant against the learned reward model of configs/reward_tiny.py.

    python -m llm_jax.train --config configs/reward_tiny.py   # -> runs/reward_tiny
    python -m llm_jax.train --config configs/ppo_tiny.py      # -> runs/ppo_tiny

Each step is one jitted program (llm_jax/rl/ppo.py): 32 answers sampled at temperature 1 to "which number is
larger?" prompts, scored by the reward model, a per-token KL penalty to the SFT model (coefficient 0.5 at
the start, steered by the adaptive controller towards the budget of 3 nats per answer), GAE, and 2 epochs x 2
minibatches of clipped policy and value updates. Held-out gold reward (the hidden judge the preferences came
from), KL and the reward model's score are measured every 10 steps (experiments/rlhf.md has the numbers).
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "ppo"
  config.init_from = "runs/sft_compare"
  config.ppo.reward_model = "runs/reward_tiny"
  config.ppo.prompts = "compare"
  config.ppo.kl_coef = 0.5
  config.ppo.kl_target = 3.0
  config.ppo.kl_horizon = 200
  config.data.batch_size = 32  # answers per step
  config.data.seq_len = 128
  config.train.steps = 60
  config.train.lr = 1e-4
  config.train.warmup_steps = 5
  config.train.weight_decay = 0.0
  config.train.eval_every = 10
  config.train.checkpoint_every = 30
  return config
