"""Shared harness for ablation experiments: short pretraining runs on the built-in corpus, in-process.

Every variant trains from the same tokenizer (trained once, copied into each workdir), the same data order
and the same step budget, so the only difference between rows is the switch under study.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llm_jax.training import host  # noqa: E402

host.keep_freed_memory()  # as python -m llm_jax.train does, before JAX starts its backend (steps ~15% faster)

import jax  # noqa: E402

from llm_jax import config as config_lib, sharding, tokenizer as tokenizer_lib  # noqa: E402
from llm_jax.data import pipeline, sources  # noqa: E402
from llm_jax.train import evaluate_bpb, pretrain  # noqa: E402
from llm_jax.training import metrics as metrics_lib, state as state_lib  # noqa: E402
from llm_jax.training.checkpoint import restore_params  # noqa: E402
from llm_jax.training.step import make_eval_step  # noqa: E402


def small_config(steps: int, seq_len: int = 128):
  """A model a few times smaller than configs/tiny.py: ~2.5M parameters, ~0.3 s/step on 2 CPU cores."""
  c = config_lib.base_config()
  c.data.seq_len = seq_len
  c.data.chunk_chars = 4096  # pieces of ~1,200 tokens: long enough to evaluate at 2x the train length
  c.data.batch_size = 16
  c.tokenizer.vocab_size = 4096
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 128, 4, 4, 4
  c.model.head_dim, c.model.d_ff = 32, 384
  c.train.steps, c.train.warmup_steps = steps, max(1, steps // 20)
  c.train.eval_every = c.train.checkpoint_every = steps
  c.train.log_every = 10
  c.train.eval_batches = 8
  c.train.progress = False
  c.sample.prompts = ()
  return c


def shared_tokenizer(out_dir: str, config) -> str:
  """Trains the tokenizer once for all variants; returns its directory."""
  directory = os.path.join(out_dir, "_tokenizer")
  if not os.path.exists(os.path.join(directory, tokenizer_lib.MODEL_FILE)):
    train_docs, _ = sources.split(sources.load_documents(config.data.source), config.data.val_fraction)
    tokenizer_lib.train([d["text"] for d in train_docs], directory, vocab_size=config.tokenizer.vocab_size,
                        max_chars=config.tokenizer.train_chars, seed=config.seed)
  return directory


def run(config, workdir: str, tokenizer_dir: str) -> dict:
  """Trains (or reuses a finished) variant; returns its metrics records and wall time."""
  os.makedirs(workdir, exist_ok=True)
  if not os.path.exists(os.path.join(workdir, "tokenizer")):
    shutil.copytree(tokenizer_dir, os.path.join(workdir, "tokenizer"))
  t0 = time.time()
  pretrain(config, workdir)
  return {"records": metrics_lib.read(workdir), "seconds": time.time() - t0}


def eval_bpb_at_length(config, workdir: str, seq_len: int, tokens: int = 32768, val_docs: list[dict] | None = None,
                       step: int | None = None) -> float:
  """Held-out bits per byte of a trained workdir (its latest or a given checkpoint) on the first `tokens`
  validation tokens, packed in rows of `seq_len` (e.g. 2x the train length). Any seq_len scores the same
  tokens; only the context differs. `val_docs` replaces data.source's validation split."""
  tok = tokenizer_lib.load(os.path.join(workdir, "tokenizer"))
  if val_docs is None:
    _, val_docs = sources.split(sources.load_documents(config.data.source), config.data.val_fraction)
  rows = config.data.batch_size
  data = pipeline.eval_batches(pipeline.pieces(val_docs, config.data.chunk_chars), tok, seq_len=seq_len,
                               batch_size=rows, num_batches=tokens // (rows * seq_len))
  mesh = sharding.make_mesh(config.mesh)
  setup = state_lib.build(config, mesh)
  params = restore_params(workdir, setup.abstract_state.params, step)
  eval_step = make_eval_step(setup.model, jax.numpy.asarray(tok.token_bytes()), params_sharding=setup.params_sharding,
                             batch_sharding=sharding.batch_sharding(mesh))
  return evaluate_bpb(eval_step, params, data, mesh)["eval/bpb"]


def write_table(path: str, title: str, header: list[str], rows: list[list], notes: list[str]):
  lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
  lines += [""] + notes + [""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


def pyplot():
  """matplotlib.pyplot with a file-only backend, or None (and a hint) when matplotlib is not installed."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib is not installed (pip install -e '.[dev]'): skipped the plot")
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_json(path: str, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
