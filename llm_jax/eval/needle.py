"""Needle in a haystack: does the model retrieve a fact planted anywhere in a long context?

    results = needle.evaluate(model_config, params, tokenizer, haystack, lengths=[128, 256, 512])
    results[512]["accuracy"], results[512]["by_depth"]
    facts = needle.people_facts(world.group("unknown_held"))  # ("Velo Darnik grew up in Tarsk.", prefix, answer)
    results = needle.fact_distance(model_config, params, tokenizer, haystack, facts, distances=[0, 64, 256])
    results[256]["accuracy"], results[256]["length"]

    python -m llm_jax.eval.needle --workdir runs/tiny --lengths 256,512,1024 [--samples 64]
        [--rope_scaling yarn --rope_scaling_factor 4 --rope_original_max_len 256]   # scaled RoPE, no training
    python -m llm_jax.eval.needle --workdir runs/tiny --distances 0,32,64,128,256,384 [--people 250]

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

Fact distance (issue #9, "older tokens fade") asks how recall falls with the distance between a fact and its
question rather than with the depth of a pass key: a row is BOS, haystack, "\n" + a fact sentence, exactly
`distance` haystack tokens, "\n" + the question's prefix (people_facts: the fact's own words up to its
value) and the answer, scored the same way (greedy right at every answer token, one teacher-forced pass).
The filler before the fact is at least `lead` tokens and pads every row of a distance to distance + a
constant (the longest fact, question and answer), so "length" in the results says how far past the trained
length a distance reaches. The facts are the caller's (fact, question prefix, answer) triples; `people_facts`
makes them from llm_jax/data/tasks/people.py, whose people and values are invented, so only the context can
supply them (the CLI asks about the people never in pretraining). Each sample index asks about the same fact
at every distance.

Overriding RoPE scaling here evaluates the trained weights with scaled positions, no training: the zero-shot
half of context extension. Lengths past data.seq_len are where the trained positions run out: rows longer than
the model's max_seq_len run with it raised to theirs (RoPE and sinusoidal positions extend, a learned position
table cannot and is refused).
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


def fact_samples(tokenizer, haystack_ids: np.ndarray, facts: Sequence[tuple[str, str, str]], distance: int,
                 count: int, *, lead: int = 16, seed: int = 0) -> tuple:
  """(ids [count, length] int32, answer mask [count, length] bool, the fact of each row [count]): BOS, haystack
  tokens, "\n" + fact, `distance` haystack tokens, "\n" + question prefix, answer, for (fact, question prefix,
  answer) triples. length = distance + fact_overhead(tokenizer, facts, lead) for every row; row i asks about
  the same fact at every distance (for one seed), the filler is cut from `haystack_ids` at random."""
  if distance < 0 or lead < 0:
    raise ValueError(f"needle.fact_samples: distance ({distance}) and lead ({lead}) must not be negative")
  encoded = _encode_facts(tokenizer, facts)
  length = distance + _overhead(encoded, lead)
  pick, cut = random.Random(f"fact_distance/{seed}"), random.Random(f"fact_distance/{distance}/{seed}")
  order = []
  while len(order) < count:  # every fact once before any twice
    order.extend(pick.sample(range(len(facts)), len(facts)))
  rows, masks = [], []
  for i in order[:count]:
    fact, question, answer = encoded[i]
    fill = length - 1 - len(fact) - len(question) - len(answer)
    if len(haystack_ids) < fill:
      raise ValueError(f"needle.fact_samples: the haystack has {len(haystack_ids)} tokens; distance {distance} "
                       f"needs {fill}")
    start = cut.randint(0, len(haystack_ids) - fill)
    filler, at = list(haystack_ids[start:start + fill]), fill - distance
    rows.append([tokenizer.bos_id] + filler[:at] + fact + filler[at:] + question + answer)
    masks.append(np.arange(length) >= length - len(answer))
  return np.asarray(rows, np.int32), np.asarray(masks), np.asarray(order[:count])


def fact_overhead(tokenizer, facts: Sequence[tuple[str, str, str]], lead: int = 16) -> int:
  """The tokens of a fact_samples row besides its `distance`: BOS, at least `lead` haystack tokens and the
  longest "\n" + fact, "\n" + question prefix and answer of `facts`."""
  return _overhead(_encode_facts(tokenizer, facts), lead)


def _overhead(encoded: list[tuple[list[int], ...]], lead: int) -> int:
  return 1 + lead + max(sum(map(len, e)) for e in encoded)


def _encode_facts(tokenizer, facts: Sequence[tuple[str, str, str]]) -> list[tuple[list[int], ...]]:
  if not facts:
    raise ValueError("needle: no facts given")
  encoded = [(tokenizer.encode("\n" + fact), tokenizer.encode("\n" + question), tokenizer.encode(answer))
             for fact, question, answer in facts]
  for (fact, question, answer), ids in zip(facts, encoded):
    if not ids[2]:
      raise ValueError(f"needle: the fact {fact!r} has an empty answer {answer!r}")
  return encoded


def people_facts(persons: Sequence, attributes: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
  """(fact, question prefix, answer) triples about llm_jax/data/tasks/people.py's people: each attribute's
  answer-form statement ("Velo Darnik grew up in Tarsk."), its words before the value, and " " + the value."""
  from llm_jax.data.tasks import people  # pylint: disable=import-outside-toplevel
  triples = []
  for person in persons:
    for attribute in attributes or people.ATTRIBUTES:
      fact, value = people.statement(person, attribute), person.value(attribute)
      if not fact.endswith(f" {value}."):
        raise ValueError(f"needle.people_facts: {fact!r} does not end with its value {value!r}")
      triples.append((fact, fact[:-len(value) - 2], f" {value}"))
  return triples


def _token_scores(model_config, params, longest: int):
  """A function of ids [B, T]: (log-probability of each next token [B, T-1], whether it is the greedy choice
  [B, T-1]) as numpy arrays. Rows longer than max_seq_len run with it raised to theirs, which RoPE and
  sinusoidal positions allow (unscaled RoPE extrapolates; model_config's rope_scaling says otherwise)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from llm_jax.model import Transformer  # pylint: disable=import-outside-toplevel

  if model_config.positions == "learned" and longest > model_config.max_seq_len:
    raise ValueError(f"needle: rows of {longest} tokens are longer than the learned position table "
                     f"({model_config.max_seq_len} positions)")

  @jax.jit
  def scores(p, ids):
    model = Transformer(model_config.replace(max_seq_len=max(model_config.max_seq_len, ids.shape[1])))
    logp = jax.nn.log_softmax(model.apply({"params": p}, ids).astype(jnp.float32))[:, :-1]
    target = ids[:, 1:]
    return jnp.take_along_axis(logp, target[..., None], -1)[..., 0], logp.argmax(-1) == target

  return lambda ids: tuple(np.asarray(x) for x in scores(params, jnp.asarray(ids)))


def score(token_scores, ids: np.ndarray, answer_mask: np.ndarray, batch_size: int) -> tuple:
  """(hit [N] bool: greedy right at every answer token, answer log-probability [N]) of rows `ids` [N, T] whose
  answer tokens are where `answer_mask` [N, T] is set, in batches of batch_size (the last one padded, so one
  compiled shape serves them all); token_scores is _token_scores's function."""
  if not answer_mask[:, 1:].any(-1).all():
    raise ValueError("needle.score: a row has no answer tokens (after its first token)")
  hits, logprobs = [], []
  batch_size = min(batch_size, len(ids))
  for start in range(0, len(ids), batch_size):
    batch, mask = ids[start:start + batch_size], answer_mask[start:start + batch_size, 1:]
    padded = np.concatenate([batch, np.repeat(batch[:1], batch_size - len(batch), 0)])
    logp, right = (x[:len(batch)] for x in token_scores(padded))
    hits.extend((right | ~mask).all(-1))
    logprobs.extend(np.where(mask, logp, 0.0).sum(-1))
  return np.asarray(hits), np.asarray(logprobs)


def evaluate(model_config, params, tokenizer, haystack: Sequence[str], lengths: Sequence[int], *, samples_per_length:
             int = 64, batch_size: int = 16, seed: int = 0) -> dict:
  """{length: {"accuracy", "by_depth": [accuracy of each of DEPTH_BINS depth bins], "answer_logprob"}} of
  the model (a ModelConfig and its parameters) on needle samples cut from the `haystack` texts."""
  stream = haystack_stream(tokenizer, haystack, 4 * max(lengths) * samples_per_length)
  token_scores = _token_scores(model_config, params, max(lengths))
  results = {}
  for length in lengths:
    ids, answer_at, depths = samples(tokenizer, stream, length, samples_per_length, seed)
    mask = np.zeros(ids.shape, bool)
    mask[np.arange(len(ids))[:, None], answer_at] = True
    hits, logprobs = score(token_scores, ids, mask, batch_size)
    hits = hits.astype(np.float64)
    bins = np.minimum((depths * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    results[length] = {"accuracy": float(hits.mean()), "answer_logprob": float(np.mean(logprobs)),
                       "by_depth": [float(hits[bins == b].mean()) for b in range(DEPTH_BINS)]}
  return results


def fact_distance(model_config, params, tokenizer, haystack: Sequence[str], facts: Sequence[tuple[str, str, str]],
                  distances: Sequence[int], *, samples_per_distance: int = 32, batch_size: int = 16, seed: int = 0,
                  lead: int = 16) -> dict:
  """{distance: {"accuracy", "answer_logprob", "length": tokens per row}}: recall of (fact, question prefix,
  answer) triples with `distance` tokens of the `haystack` texts between the fact and its question
  (fact_samples' rows), the model a ModelConfig and its parameters."""
  if not distances:
    raise ValueError("needle.fact_distance: no distances given")
  overhead = fact_overhead(tokenizer, facts, lead)
  longest = max(distances) + overhead
  stream = haystack_stream(tokenizer, haystack, 4 * longest * samples_per_distance)
  token_scores = _token_scores(model_config, params, longest)
  results = {}
  for distance in distances:
    ids, mask, _ = fact_samples(tokenizer, stream, facts, distance, samples_per_distance, lead=lead, seed=seed)
    hits, logprobs = score(token_scores, ids, mask, batch_size)
    results[distance] = {"accuracy": float(hits.mean()), "answer_logprob": float(logprobs.mean()),
                         "length": distance + overhead}
  return results


def haystack_texts(source: str = "stdlib", val_fraction: float = 0.05) -> list[str]:
  """The validation documents of a data.source: text no training run of that source has seen."""
  from llm_jax.data import sources  # pylint: disable=import-outside-toplevel
  _, val = sources.split(sources.load_documents(source), val_fraction)
  return [d["text"] for d in val if d.get("source") != "needle"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  task = parser.add_mutually_exclusive_group(required=True)
  task.add_argument("--lengths", help="comma-separated sample lengths in tokens: the pass-key needle")
  task.add_argument("--distances", help="comma-separated fact-to-question distances in tokens: fact_distance on "
                    "the facts about the people never in pretraining (unknown_train, unknown_held)")
  parser.add_argument("--people", type=int, default=250, help="with --distances: the people world's size "
                      "(seed 0, as experiments/grounding.py)")
  parser.add_argument("--samples", type=int, default=64, help="samples per length or distance")
  parser.add_argument("--haystack", default="stdlib", help="a data.source whose validation documents fill")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  for field, kind in _ROPE_OVERRIDES:
    parser.add_argument(f"--{field}", type=kind, default=None, help="evaluate with this RoPE setting instead")
  args = parser.parse_args(argv)
  import llm_jax  # pylint: disable=import-outside-toplevel
  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    sizes = [int(x) for x in (args.distances if args.lengths is None else args.lengths).split(",") if x.strip()]
    config, params, tok = llm_jax.load(args.workdir)
    overrides = {f: getattr(args, f) for f, _ in _ROPE_OVERRIDES if getattr(args, f) is not None}
    model_config = config_lib.model_config(config).replace(**overrides)
  except (ValueError, FileNotFoundError, config_lib.ConfigError) as e:
    parser.exit(2, f"needle: {e}\n")
  try:
    if args.lengths is not None:
      results = evaluate(model_config, params, tok, haystack_texts(args.haystack), sizes,
                         samples_per_length=args.samples, batch_size=args.batch_size, seed=args.seed)
    else:
      from llm_jax.data.tasks import people  # pylint: disable=import-outside-toplevel
      world = people.World(args.people, seed=0)
      facts = people_facts(world.group("unknown_train") + world.group("unknown_held"))
      results = fact_distance(model_config, params, tok, haystack_texts(args.haystack), facts, sizes,
                              samples_per_distance=args.samples, batch_size=args.batch_size, seed=args.seed)
  except ValueError as e:  # a length too short for the needle, a haystack too small, a bad --haystack or --people
    parser.exit(2, f"needle: {e}\n")
  json.dump({str(k): v for k, v in results.items()}, sys.stdout)
  print()


if __name__ == "__main__":
  main()
