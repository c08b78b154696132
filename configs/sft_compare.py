"""The starting point of RLHF: the tiny pretrained model fine-tuned to answer "which number is larger?" in
styles of mixed quality (right and wrong, full sentences and bare numbers, polite, wordy, rambling, unsure:
llm_jax/data/tasks/compare.py), so that its samples differ in a quality the hidden gold judge can measure.

    python -m llm_jax.train --config configs/tiny.py          # pretrained -> runs/tiny
    python -m llm_jax.train --config configs/sft_compare.py   # -> runs/sft_compare
    then configs/reward_tiny.py, configs/ppo_tiny.py, configs/dpo_tiny.py (experiments/rlhf.py runs them all)

150 steps of 16 x 128 tokens on 4,000 conversations, AdamW 1e-3: ~2.5 min on a 2-core CPU.
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "sft"
  config.init_from = "runs/tiny"
  config.sft.mixture = "compare:1"
  config.sft.examples = 4000
  config.sft.eval_problems = 50
  config.sft.max_new_tokens = 32
  config.data.seq_len = 128
  config.train.steps = 150
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  config.train.eval_batches = 4
  return config
