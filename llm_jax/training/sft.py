"""Supervised fine-tuning (`config.stage='sft'`): conversation data, the LoRA variant of the train state, and
the tool-use evaluation that ends a run.

The loop itself is pretraining's (llm_jax/train.py): the same jitted step with the next-token loss, which
counts only targets whose `weights` are 1 — the assistant's own tokens (llm_jax/data/chat.py). Data is a
pool of `sft.examples` conversations drawn from `sft.mixture` (synthetic tasks and JSONL files), rendered
once, packed whole into rows (data/pipeline.py sft_dataset) and cycled through in a seeded order; eval/loss
and eval/bpb are measured on held-out conversations (the tasks' validation split; data.val_fraction of each
file by hash, none of files with fewer than 20 conversations; with no held-out conversation at all, the first
training ones, and the run says so).

LoRA (`lora.rank > 0`): the train state's params are the adapters alone (llm_jax/model/lora.py); the base
weights from init_from are bound to the loss as arguments of the compiled step (like distillation's
teacher), so checkpoints hold adapters only. `llm_jax.load` merges them into the base for inference.
"""

from __future__ import annotations

import functools
import json

import jax
import optax

from llm_jax import sharding, tokenizer as tokenizer_lib
from llm_jax.config import ConfigError
from llm_jax.data import chat, tasks
from llm_jax.model import lora
from llm_jax.training.state import Setup, TrainState
from llm_jax.training.step import next_token_loss


MIN_HELD_OUT_FILE = 20  # conversation files smaller than this are not split (all of it trains)


def conversations(config, split: str) -> list[list[dict]]:
  """The training pool (split "train", sft.examples) or held-out set ("val", sft.eval_examples)."""
  weights = tasks.parse_weights(config.sft.mixture)
  val_percent = round(100 * config.data.val_fraction)
  files = {}
  for path in [k for k in weights if k not in tasks.TASKS]:
    convs = list(chat.read_jsonl(path))
    if len(convs) < MIN_HELD_OUT_FILE:  # too small to hold any out: all of it trains
      files[path] = convs if split == "train" else []
    else:
      files[path] = [c for c in convs if tasks.in_split(json.dumps(c, sort_keys=True), split, val_percent)]
    if not files[path]:
      weights.pop(path)  # e.g. a file too small to have held-out conversations
  if not weights:
    return []
  n = config.sft.examples if split == "train" else config.sft.eval_examples
  return tasks.mixture(weights, n, seed=config.seed + (split == "val"), split=split, files=files)


def render_all(convs: list[list[dict]], tok, seq_len: int) -> tuple[list[tuple[list[int], list[int]]], dict]:
  """(ids, mask) of every conversation that fits seq_len + 1 tokens, and counts of what did not: whole
  conversations skipped, and messages dropped from the front of long ones (chat.render's policy)."""
  markers = chat.Markers.of(tok)
  examples, stats = [], {"conversations": len(convs), "skipped": 0, "dropped_messages": 0, "tokens": 0,
                         "trained_tokens": 0}
  for conv in convs:
    rendered = chat.render(conv, tok, max_tokens=seq_len + 1, markers=markers)
    if rendered is None:
      stats["skipped"] += 1
      continue
    stats["dropped_messages"] += rendered.dropped
    stats["tokens"] += len(rendered.ids)
    stats["trained_tokens"] += sum(rendered.mask)
    examples.append((rendered.ids, rendered.mask))
  return examples, stats


def load_data(config, tok, log=print) -> tuple[list, list]:
  """(training, held-out) conversations of sft.mixture rendered as (ids, mask); logs what was made.

  A bad JSONL file (named with its line), a tokenizer without the chat tokens, or nothing that fits
  data.seq_len raise ConfigError.
  """
  seq_len = config.data.seq_len
  try:
    train, train_stats = render_all(conversations(config, "train"), tok, seq_len)
    val, val_stats = render_all(conversations(config, "val"), tok, seq_len)
  except (ValueError, OSError) as e:
    raise ConfigError(f"sft.mixture: {e}") from None
  if not val:
    val = train[:config.sft.eval_examples]
    log(f"note: sft.mixture holds no held-out conversations (files under {MIN_HELD_OUT_FILE} conversations "
        "are not split); eval/loss is measured on training conversations")
  log(f"data: {len(train)} training conversations ({train_stats['tokens']:,} tokens, "
      f"{train_stats['trained_tokens']:,} trained) from sft.mixture={config.sft.mixture!r}, {len(val)} held out; "
      f"too long for data.seq_len={seq_len}: {train_stats['skipped'] + val_stats['skipped']} skipped, "
      f"{train_stats['dropped_messages'] + val_stats['dropped_messages']} early messages dropped")
  if not train or not val:
    raise ConfigError(f"sft.mixture={config.sft.mixture!r}: no conversation fits data.seq_len={seq_len}")
  return train, val


def lora_token_ids(config, tok) -> tuple[int, ...]:
  """The chat control tokens whose embedding rows LoRA trains (none unless lora.special_tokens)."""
  if not config.lora.special_tokens:
    return ()
  return tuple(sorted(tok.special[t] for t in tokenizer_lib.CONTROL_TOKENS if t in tok.special))


def lora_fns(config, tok) -> tuple[callable, callable]:
  """(rng, base params -> fresh adapters, (base, adapters) -> merged params) for the config's lora section."""
  targets = tuple(t.strip() for t in config.lora.targets.split(",") if t.strip())
  token_ids = lora_token_ids(config, tok)
  init = functools.partial(lora.init, rank=config.lora.rank, targets=targets, token_ids=token_ids)
  merge = functools.partial(lora.merge, rank=config.lora.rank, alpha=config.lora.alpha, token_ids=token_ids)
  return init, merge


def lora_optimizer(tx: optax.GradientTransformation, b_lr_ratio: float) -> optax.GradientTransformation:
  """`tx` for the adapters, with LoRA+'s larger learning rate for the b matrices: their updates are scaled by
  b_lr_ratio after AdamW (learning rate and decoupled weight decay both scale, as a learning rate does)."""
  if b_lr_ratio == 1:
    return tx
  return optax.chain(tx, optax.masked(optax.scale(b_lr_ratio), lora.b_mask))


def replicated_abstract(tree, mesh):
  """ShapeDtypeStructs of `tree` (arrays or shapes) placed whole on every device: how adapters live."""
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)


def lora_setup(config, setup: Setup, mesh, base_params, tok) -> tuple[Setup, jax.tree_util.Partial, callable]:
  """(Setup whose state holds the adapters, the loss over base + adapters, adapters -> merged params).

  Adapters are small: replicated on every device. The base keeps its training sharding.
  """
  init_adapters, merge = lora_fns(config, tok)
  tx = lora_optimizer(setup.tx, config.lora.b_lr_ratio)

  def init(rng):
    return TrainState.create(init_adapters(rng, base_params), tx, rng)

  abstract = replicated_abstract(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
  state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, abstract)
  base_loss = next_token_loss(setup.model)

  def loss_fn(base, adapters, batch, rng):
    return base_loss(merge(base, adapters), batch, rng)

  new = Setup(setup.model_config, setup.model, tx, abstract, state_sharding, state_sharding.params,
              jax.jit(init, out_shardings=state_sharding))
  merged = jax.jit(lambda adapters: merge(base_params, adapters), out_shardings=setup.params_sharding)
  return new, jax.tree_util.Partial(loss_fn, base_params), merged


def describe_lora(base_params, adapters) -> str:
  return (f"LoRA: {lora.num_params(adapters):,} trainable parameters "
          f"({100 * lora.trainable_fraction(base_params, adapters):.2f}% of base + adapters)")


def tools_for(config) -> dict:
  from llm_jax.inference import tools  # pylint: disable=import-outside-toplevel
  return tools.with_timeout(config.sft.tool_timeout)


def checked_tasks(config) -> list[str]:
  """The checked tasks (with exact answers) in the mixture: what the end-of-run evaluation measures."""
  return [t for t in tasks.CHECKED if t in tasks.parse_weights(config.sft.mixture)]

