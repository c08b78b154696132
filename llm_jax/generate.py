"""Sample continuations from a trained workdir with the KV-cache engine.

    python -m llm_jax.generate --workdir runs/tiny --prompt "def " [--prompt "class " ...]
        [--temperature 0.8 --top_p 0.95 --top_k 50 --min_p 0.05] [--max_new_tokens 64] [--quant int8|w8a8]

With one prompt the text streams as it is generated; several prompts decode together as one batch.
"""

import sys

from absl import app, flags

import llm_jax
from llm_jax import config as config_lib
from llm_jax.inference import engine as engine_lib
from llm_jax.inference import sample
from llm_jax.model import Transformer, quant

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", ["def "], "Prompt(s); repeat the flag for a batch.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens with this much probability (1: off).")
_MIN_P = flags.DEFINE_float("min_p", 0.0, "Drop tokens less likely than min_p x the most likely one (0: off).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_QUANT = flags.DEFINE_enum("quant", "none", ["none", "int8", "w8a8"],
                           "int8: weight-only int8 and an int8 KV cache; w8a8: int8 activations as well.")


def main(argv):
  del argv
  config, params, tok = llm_jax.load(_WORKDIR.value)
  model = Transformer(config_lib.model_config(config))
  cache_dtype = None
  if _QUANT.value != "none":
    model, params = quant.quantize(model, params, _QUANT.value)
    cache_dtype = "int8"
  engine = engine_lib.Engine(model, params, cache_dtype=cache_dtype)
  kwargs = dict(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                top_p=_TOP_P.value, min_p=_MIN_P.value, seed=_SEED.value, engine=engine)
  if len(_PROMPT.value) == 1:
    sys.stdout.write(_PROMPT.value[0])
    for pieces in sample.stream(model, params, tok, _PROMPT.value, **kwargs):
      sys.stdout.write(pieces[0])
      sys.stdout.flush()
    sys.stdout.write("\n")
    return
  for prompt, out in zip(_PROMPT.value, sample.generate(model, params, tok, _PROMPT.value, **kwargs)):
    print(f"{prompt}{out}")


if __name__ == "__main__":
  app.run(main)
