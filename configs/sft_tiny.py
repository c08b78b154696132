"""Supervised fine-tuning of the tiny pretrained model into a chat assistant that uses tools.

    python -m llm_jax.train --config configs/tiny.py       # the pretrained model -> runs/tiny
    python -m llm_jax.train --config configs/sft_tiny.py   # -> runs/sft_tiny
    python -m llm_jax.chat --workdir runs/sft_tiny

Full fine-tuning of all 5.25M parameters on 20,000 synthetic conversations (identity, multi-digit arithmetic
with the calculator, follow-up questions, letter counting and spelling with the sandboxed Python tool;
llm_jax/data/tasks), loss on the assistant's tokens only, AdamW 1e-3, 300 steps of 16 x 256 tokens.
LoRA instead: --config.lora.rank=8 (see experiments/sft_tools.md for both).

At the end the run solves 100 held-out problems per task with tools on and with tools off (the model then
writes the tool's output itself) and logs eval/<task>/tools_on|off; samples.txt shows transcripts.
Measured results: experiments/sft_tools.md.
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "sft"
  config.init_from = "runs/tiny"
  config.train.steps = 300
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.train.eval_batches = 4
  return config
