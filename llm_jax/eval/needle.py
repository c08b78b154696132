"""Needle in a haystack: does the model retrieve a fact planted anywhere in a long context?

    results = needle.evaluate(model_config, params, tokenizer, haystack, lengths=[128, 256, 512])
    results[512]["accuracy"], results[512]["by_depth"]

    python -m llm_jax.eval.needle --workdir runs/tiny --lengths 256,512,1024 [--samples 64]
        [--rope_scaling yarn --rope_scaling_factor 4 --rope_original_max_len 256]   # scaled RoPE, no training

A sample of n tokens is BOS, held-out text (the haystack: validation documents of the built-in corpus by
default) with a needle line inserted at a depth between 0 (start) and 1 (end),

    The pass key is 48213. Remember it. 48213 is the pass key.

and, at the end, the question "What is the pass key? The pass key is" followed by the key. A sample counts as
retrieved when the model's greedy choice is right at every token of the answer (" 48213", one token per digit
with the built-in tokenizer), scored in one teacher-forced forward pass, which equals greedy decoding for an
exact match. The key is 5 random digits, so guessing succeeds once in 100,000; the depths are spread evenly
over [0, 1] and reported in bins, so a model that only sees the recent past shows up as low accuracy at
small depths. `documents` writes the same format as plain-text training documents (data.source: a JSONL
file), which is how a model learns the task at all (experiments/long_context.py).

Overriding RoPE scaling here evaluates the trained weights with scaled positions, no training: the zero-shot
half of context extension. Lengths past data.seq_len are where the trained positions run out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Sequence

import numpy as np

QUESTION = "\nWhat is the pass key? The pass key is"
DEPTH_BINS = 4
# ModelConfig fields the CLI can override: RoPE read differently by the same weights
_ROPE_OVERRIDES = (("rope_scaling", str), ("rope_scaling_factor", float), ("rope_original_max_len", int),
                   ("rope_theta", float))


def needle(key: str) -> str:
  return f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n"


def random_key(rng: random.Random) -> str:
  return f"{rng.randrange(100000):05d}"


def documents(texts: Sequence[str], n: int, *, min_chars: int, max_chars: int, seed: int = 0, tokenizer=None,
              max_tokens: int | None = None) -> list[dict]:
  """n training documents (source "needle"): a window of min_chars..max_chars characters of `texts`, cut at
  line breaks, with a needle after a random line and the question and its answer at the end; with a
  tokenizer and max_tokens, only documents of at most max_tokens tokens (BOS included) are kept."""
  rng = random.Random(seed)
  texts = [t for t in texts if len(t) >= min_chars]
  if not texts:
    raise ValueError(f"needle.documents: no haystack text has {min_chars} characters")
  docs = []
  while len(docs) < n:
    text = rng.choice(texts)
    size = rng.randint(min_chars, min(max_chars, len(text)))
    start = rng.randint(0, len(text) - size)
    lines = text[start:start + size].split("\n")[1:-1]  # whole lines only
    if len(lines) < 2:
      continue
    key, at = random_key(rng), rng.randint(0, len(lines))
    body = "\n".join(lines[:at]) + needle(key) + "\n".join(lines[at:])
    text = body + QUESTION + f" {key}\n"
    if max_tokens is not None and len(tokenizer.encode(text)) + 1 > max_tokens:
      continue
    docs.append({"text": text, "source": "needle", "where": f"needle #{len(docs)}"})
  return docs


def samples(tokenizer, haystack_ids: np.ndarray, length: int, count: int, seed: int = 0) -> tuple:
  """(ids [count, length] int32, answer positions [count, A]): BOS, haystack tokens with the needle at depths
  (i + 0.5) / count, the question, the answer. `haystack_ids` is one long token stream to cut windows from."""
  rng = random.Random(f"needle/{length}/{seed}")
  question = tokenizer.encode(QUESTION)
  rows, answers, depths = [], [], []
  for i in range(count):
    key = random_key(rng)
    needle_ids, answer = tokenizer.encode(needle(key)), tokenizer.encode(f" {key}")
    fill = length - 1 - len(needle_ids) - len(question) - len(answer)
    if fill < 0:
      raise ValueError(f"needle.samples: length {length} is shorter than the needle and question "
                       f"({length - fill} tokens)")
    if len(haystack_ids) < fill:
      raise ValueError(f"needle.samples: the haystack has {len(haystack_ids)} tokens; length {length} needs {fill}")
    start = rng.randint(0, len(haystack_ids) - fill)
    filler = list(haystack_ids[start:start + fill])
    depth = (i + 0.5) / count
    at = round(depth * fill)
    row = [tokenizer.bos_id] + filler[:at] + needle_ids + filler[at:] + question + answer
    rows.append(row)
    answers.append(np.arange(length - len(answer), length))
    depths.append(depth)
  return np.asarray(rows, np.int32), np.asarray(answers), np.asarray(depths)


def haystack_stream(tokenizer, texts: Sequence[str], tokens: int) -> np.ndarray:
  """The token stream of `texts`, read only until it holds `tokens` (tokenizing all of them is slow)."""
  stream = []
  for text in texts:
    stream.extend(tokenizer.encode(text))
    if len(stream) >= tokens:
      break
  return np.asarray(stream, np.int32)


def evaluate(model_config, params, tokenizer, haystack: Sequence[str], lengths: Sequence[int], *, samples_per_length:
             int = 64, batch_size: int = 16, seed: int = 0) -> dict:
  """{length: {"accuracy", "by_depth": [accuracy of each of DEPTH_BINS depth bins], "answer_logprob"}} of
  the model (a ModelConfig and its parameters) on needle samples cut from the `haystack` texts."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from llm_jax.model import Transformer  # pylint: disable=import-outside-toplevel

  stream = haystack_stream(tokenizer, haystack, 4 * max(lengths) * samples_per_length)
  apply = jax.jit(lambda p, ids: jax.nn.log_softmax(Transformer(model_config.replace(
      max_seq_len=max(model_config.max_seq_len, ids.shape[1]))).apply({"params": p}, ids).astype(jnp.float32)))
  results = {}
  for length in lengths:
    ids, answer_at, depths = samples(tokenizer, stream, length, samples_per_length, seed)
    hits, logprobs = [], []
    for start in range(0, len(ids), batch_size):
      batch = ids[start:start + batch_size]
      logp = np.asarray(apply(params, jnp.asarray(batch)))
      at = answer_at[start:start + batch_size]
      rows = np.arange(len(batch))[:, None]
      target = batch[rows, at]
      predicted = logp[rows, at - 1]  # the distribution over the token at `at`
      hits.extend((predicted.argmax(-1) == target).all(-1))
      logprobs.extend(np.take_along_axis(predicted, target[..., None], -1)[..., 0].sum(-1))
    hits = np.asarray(hits, np.float64)
    bins = np.minimum((depths * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    results[length] = {"accuracy": float(hits.mean()), "answer_logprob": float(np.mean(logprobs)),
                       "by_depth": [float(hits[bins == b].mean()) for b in range(DEPTH_BINS)]}
  return results


def haystack_texts(source: str = "stdlib", val_fraction: float = 0.05) -> list[str]:
  """The validation documents of a data.source: text no training run of that source has seen."""
  from llm_jax.data import sources  # pylint: disable=import-outside-toplevel
  _, val = sources.split(sources.load_documents(source), val_fraction)
  return [d["text"] for d in val if d.get("source") != "needle"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--lengths", required=True, help="comma-separated sample lengths in tokens")
  parser.add_argument("--samples", type=int, default=64, help="samples per length")
  parser.add_argument("--haystack", default="stdlib", help="a data.source whose validation documents fill")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  for field, kind in _ROPE_OVERRIDES:
    parser.add_argument(f"--{field}", type=kind, default=None, help="evaluate with this RoPE setting instead")
  args = parser.parse_args(argv)
  import llm_jax  # pylint: disable=import-outside-toplevel
  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    config, params, tok = llm_jax.load(args.workdir)
    overrides = {f: getattr(args, f) for f, _ in _ROPE_OVERRIDES if getattr(args, f) is not None}
    model_config = config_lib.model_config(config).replace(**overrides)
  except (ValueError, FileNotFoundError, config_lib.ConfigError) as e:
    parser.exit(2, f"needle: {e}\n")
  try:
    results = evaluate(model_config, params, tok, haystack_texts(args.haystack), lengths,
                       samples_per_length=args.samples, batch_size=args.batch_size, seed=args.seed)
  except ValueError as e:  # a length too short for the needle, a haystack too small, a bad --haystack
    parser.exit(2, f"needle: {e}\n")
  json.dump({str(k): v for k, v in results.items()}, sys.stdout)
  print()


if __name__ == "__main__":
  main()
