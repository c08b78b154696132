"""Supervised fine-tuning of the tiny pretrained model into a chat assistant that uses tools.

    python -m llm_jax.train --config configs/tiny.py       # the pretrained model -> runs/tiny
    python -m llm_jax.train --config configs/sft_tiny.py   # -> runs/sft_tiny
    python -m llm_jax.chat --workdir runs/sft_tiny

Full fine-tuning of all 5.25M parameters on 20,000 synthetic conversations (identity, multi-digit arithmetic
with the calculator, follow-up questions, letter counting and spelling with the sandboxed Python tool, and
`repeat` — say a quoted text back — which teaches the copying counting and spelling need; llm_jax/data/tasks),
loss on the assistant's tokens only, AdamW 1e-3, 900 steps of 16 x 256 tokens.
LoRA instead: --config.lora.rank=12 --config.train.lr=1e-2 (4.4% of the parameters train).

At the end the run solves 100 held-out problems per task with tools on and with tools off (the model then
writes the tool's output itself) and logs eval/<task>/tools_on|off; samples.txt shows transcripts.
Measured (experiments/sft_tools.md, 2026-12-04): held-out loss 0.362; with tools on / off: arithmetic 0.97 /
0.00, follow-ups 0.90 / 0.00, letter counting 0.59 / 0.00 (the exact reference code in 32% of problems: the
model copies the question's word into its code), spelling 0.44 / 0.00. LoRA rank 12 does not learn the copy:
0.80 / 0.37 / 0.38 / 0.00 with tools on; rank 32 on q,k,v,o (4.3%)
0.96 / 0.93 / 0.43 / 0.00 (2026-12-05). ~13 min on a 2-core CPU alone (~12 min of steps at ~5,100 tokens/s,
~1 min of evaluation), after pretraining configs/tiny.py (3.8 min).
From a base mid-trained on `repeat` (experiments/sft_tools.py --mid 450), LoRA copies too: rank 16 on
q,k,v,o,embed,head (4.8%, --config.lora.targets=q,k,v,o,embed,head) for 1,800 steps is within 0.01 of full
fine-tuning's 900 steps on every task (experiments/sft_tools_mid.md, 2026-12-07).
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.stage = "sft"
  config.init_from = "runs/tiny"
  config.train.steps = 900
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 300
  config.train.checkpoint_every = 300
  config.train.eval_batches = 4
  return config
