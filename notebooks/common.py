"""What the notebooks share: each stage's config (a file of configs/, or seconds-long tiny settings of it), its
run in-process, and its report.md.

    import common                                    # the notebooks put notebooks/ on sys.path
    runs = common.Runs("runs/notebooks", tiny=True)  # tiny: workdirs under runs/notebooks/tiny/
    workdir, summary = runs.train("tiny")            # configs/tiny.py -> runs/notebooks/tiny/tiny + report.md
    runs.train("sft_tiny", {"lora.rank": 12}, name="sft_tiny_lora")

A config's `runs/<name>` paths (init_from, ppo.reward_model) become workdirs under the same root, so the
notebooks chain the stages like the README's commands. A finished workdir is reported complete, not trained
again: 02 and 03 reuse 01's model, and 03 reuses 02's assistant, when they share the root (or train them).

The tiny settings (TINY_SETTINGS; LLM_JAX_NOTEBOOK_TINY=1 in the notebooks) are for a CPU and for the tests
(tests/test_notebooks.py): tests/micro_config.py's model, a handful of steps, a few evaluation problems. They
show that every cell works, not what the model learns. Without them the configs run as they are, in bfloat16
on a TPU.
"""

from __future__ import annotations

import os

import jax

from llm_jax import config as config_lib
from llm_jax import train as train_lib
from llm_jax.eval import report

# tests/micro_config.py's tokenizer and model (~40k parameters): one jit compilation per program dominates a run.
MICRO = {"tokenizer.vocab_size": 384, "tokenizer.train_chars": 200_000, "model.d_model": 32, "model.n_layers": 2,
         "model.n_heads": 4, "model.n_kv_heads": 2, "model.head_dim": 8, "model.d_ff": 64, "data.batch_size": 4,
         "train.warmup_steps": 3, "train.log_every": 5, "train.eval_batches": 2, "train.progress": False}
# Conversations of the micro tokenizer are longer in tokens; answers with tool outputs need room past them.
CHAT = {"data.seq_len": 128, "model.max_seq_len": 160, "data.batch_size": 8}
PREFERENCE = {"pref.train_pairs": 64, "pref.eval_pairs": 16, "pref.eval_prompts": 8, "pref.max_new_tokens": 12}
TINY_SETTINGS = {
    "tiny": {**MICRO, "data.seq_len": 64, "train.lr": 1e-2, "train.steps": 60, "train.eval_every": 15,
             "train.checkpoint_every": 60, "sample.prompts": ("def ", "The "), "sample.max_new_tokens": 24},
    # Mostly calculator problems: 200 steps teach the micro model to call the calculator (and Python for
    # counting), nothing more.
    "sft_tiny": {**MICRO, **CHAT, "sft.mixture": "arithmetic:3,counting:1", "sft.examples": 400,
                 "sft.eval_examples": 16, "sft.eval_problems": 4, "sft.max_new_tokens": 24, "train.lr": 1e-2,
                 "train.steps": 200, "train.eval_every": 100, "train.checkpoint_every": 200},
    "sft_compare": {**MICRO, **CHAT, "sft.examples": 400, "sft.eval_examples": 16, "sft.eval_problems": 4,
                    "sft.max_new_tokens": 16, "train.lr": 1e-2, "train.steps": 60, "train.eval_every": 30,
                    "train.checkpoint_every": 60},
    "reward_tiny": {**MICRO, **CHAT, **PREFERENCE, "train.steps": 8, "train.eval_every": 8,
                    "train.checkpoint_every": 8},
    "ppo_tiny": {**MICRO, **CHAT, **PREFERENCE, "train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4},
    "dpo_tiny": {**MICRO, **CHAT, **PREFERENCE, "train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4},
    "grpo_tiny": {**MICRO, **CHAT, "grpo.prompts": 2, "grpo.group": 2, "grpo.max_new_tokens": 16,
                  "grpo.eval_problems": 4, "grpo.eval_samples": 2, "train.steps": 2, "train.eval_every": 2,
                  "train.checkpoint_every": 2},
}


class Runs:
  """The workdirs of one notebook session: root/<config name>, or root/tiny/<config name> with the tiny settings."""

  def __init__(self, root: str, tiny: bool):
    self.root, self.tiny = (os.path.join(root, "tiny") if tiny else root), tiny

  def workdir(self, name: str) -> str:
    return os.path.join(self.root, name)

  def config(self, config_name: str, overrides: dict | None = None):
    """configs/<config_name>.py with the tiny settings (if tiny), its runs/<name> paths under this root, bfloat16
    on a TPU, then `overrides`."""
    config = config_lib.load_file(os.path.join("configs", f"{config_name}.py"))
    config_lib.override(config, TINY_SETTINGS[config_name] if self.tiny else {})
    paths = {"init_from": config.init_from, "ppo.reward_model": config.ppo.reward_model}
    config_lib.override(config, {k: self.workdir(v[len("runs/"):]) for k, v in paths.items()
                                 if v.startswith("runs/")})
    if jax.default_backend() == "tpu":
      config.model.dtype = "bfloat16"
    return config_lib.override(config, overrides or {})

  def train(self, config_name: str, overrides: dict | None = None, name: str | None = None) -> tuple[str, dict]:
    """(workdir, summary) of configs/<config_name>.py trained into root/<name or config_name> in this process,
    with its report.md written; a finished workdir is reported complete and keeps its report."""
    config = self.config(config_name, overrides)
    workdir = self.workdir(name or config_name)
    summary = train_lib.STAGES[config.stage](config, workdir)
    if not summary.get("complete"):
      report.write(workdir, summary)
    return workdir, summary
