"""Reasoning RL with verifiable rewards on the tiny fine-tuned assistant: GRPO on held-out-checked arithmetic.

    python -m llm_jax.train --config configs/tiny.py        # pretrained  -> runs/tiny
    python -m llm_jax.train --config configs/sft_tiny.py    # fine-tuned  -> runs/sft_tiny
    python -m llm_jax.train --config configs/grpo_tiny.py   # RL          -> runs/grpo_tiny

Each step samples 8 answers to each of 8 training problems (multi-digit arithmetic, solved through the
calculator), rewards right final answers (+1) and finished turns (+0.1), and takes two AdamW steps on the
clipped, KL-regularised policy gradient (llm_jax/rl/grpo.py). Dr.GRPO and DAPO are switches:

    --config.grpo.std_normalize=False --config.grpo.loss_agg=constant --config.grpo.beta=0           # Dr.GRPO
    --config.grpo.clip_high=0.28 --config.grpo.dynamic_sampling=True --config.grpo.overlong_buffer=16
        --config.grpo.beta=0                                                                          # DAPO

Held-out greedy accuracy and pass@1/2/4/8 (8 answers per problem at temperature 1) are measured at steps
0, 20, 40, 60. Measured from the full SFT run of 300 steps (experiments/reasoning_rl.md; configs/sft_tiny.py
now trains 900): greedy 0.74 -> 0.84, pass@1 0.594 -> 0.749, pass@8 0.94 -> 0.90; 8.1 min on a 2-core CPU.
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "grpo"
  config.init_from = "runs/sft_tiny"
  config.train.steps = 60
  config.train.lr = 1e-4
  config.train.warmup_steps = 5
  config.train.weight_decay = 0.0
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  return config
