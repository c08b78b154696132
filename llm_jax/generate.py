"""Sample continuations from a trained workdir.

    python -m llm_jax.generate --workdir runs/tiny --prompt "def " [--temperature 0.8] [--max_new_tokens 64]
"""

from absl import app, flags

import llm_jax
from llm_jax.inference import sample
from llm_jax import config as config_lib
from llm_jax.model import Transformer

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", ["def "], "Prompt(s); repeat the flag for a batch.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
  del argv
  config, params, tok = llm_jax.load(_WORKDIR.value)
  model = Transformer(config_lib.model_config(config))
  outs = sample.generate(model, params, tok, _PROMPT.value, max_new_tokens=_MAX_NEW.value,
                         temperature=_TEMPERATURE.value, seed=_SEED.value)
  for prompt, out in zip(_PROMPT.value, outs):
    print(f"{prompt}{out}")


if __name__ == "__main__":
  app.run(main)
