"""Benchmarks; each prints one JSON line on stdout (progress goes to stderr).

    python -m llm_jax.bench decode --config configs/bench_cpu.py [--workdir runs/bench_cpu] [--peer hf]
    python -m llm_jax.bench train --config configs/bench_cpu_train.py [--peer hf] [--steps 10]
    python -m llm_jax.bench dedup --config configs/tiny.py
    python -m llm_jax.bench serve --workdir runs/sft_tiny [--requests 200] [--batch 8] [--max_waiting 64]
    python -m llm_jax.bench attention --config configs/bench_cpu.py [--lengths 1024,4096,16384,65536]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m llm_jax.bench attention \
        --config configs/bench_cpu.py --context 8 --lengths 8192 --time_max_length 8192

dedup: MinHash signatures of up to 4 MB of data.source with config.clean's shingles and hash count, in one
process: llm_jax/data/dedup.py's numpy implementation (numpy_mb_s) and, when installed, datasketch's
MinHash.update_batch on the same shingles (datasketch_mb_s, ratio_numpy_vs_datasketch); *_jaccard_mae is
each one's mean error estimating the Jaccard similarity of 50 documents and copies missing 5% of their words.

attention: one attention layer's forward + backward (the gradient of sum(out . w) w.r.t. q, k, v) at batch 1
for each of --lengths, with the config's heads and head_dim, plain vs blockwise (model/blockwise.py, blocks
of model.attention_block): XLA's temporary memory for the compiled program (memory_analysis, nothing run:
plain_mb, blockwise_mb, ratio_mem) and, up to --time_max_length, the median time of --repeats runs
(plain_ms, blockwise_ms), and the largest error of blockwise's loss and gradients against plain's
(max_rel_err: relative to the largest entry of each). With --context C > 1: context parallelism on a mesh
of C devices instead (model/blockwise.py: context_parallel), the inputs split along T: all-gather vs ring,
each with the contiguous and the zigzag split ({allgather,ring}[_zigzag]_{mb,ms}_T, mb per device), and
ring's largest error against all-gather's for each split (max_rel_err_ring_T, max_rel_err_ring_zigzag_T).

train: one jitted training step (the trainer's make_train_step: AdamW, the config's shape, mesh and dtypes)
on a fixed random batch of data.batch_size x data.seq_len, so the data pipeline, logging and checkpoints are
not in it; after compiling, --repeats runs of --steps steps, the median reported: tokens_per_sec, step_ms,
compile_s, mfu (ModelConfig.flops_per_token, the trainer's count, over the fp32 or bf16 matmul peak measured
here, metrics.measure_peak_flops, as the trainer does), step_memory_mb (XLA's arguments + outputs - aliased +
temporaries of the compiled step). With --peer hf: Hugging Face transformers' LlamaForCausalLM of the same
shape (float32, torch AdamW, the same batch, all cores; with model.dtype=bfloat16 its forward under
torch.autocast to bf16), in a process of its own, timed in turns with llm_jax's step in the same run:
peer_* and ratio_tokens_per_sec_vs_peer.

serve: llm_jax.serve's HTTP server on a fine-tuned --workdir (in this process, on a free loopback port),
--batch rows and --max_waiting queue places, hit by a warm-up of --batch requests and then --requests
concurrent streaming requests of up to --new_tokens tokens each (greedy, the prompt --serve_prompt); prints
serve.load_test's figures: answered, refused_429, failed, hung, p50/p99 latency and time to the first
content, aggregate completion tokens/s.

decode: the inference engine on the config's model shape, greedy, every figure the median of --repeats
timed runs after a warm-up (compilation excluded), each run timing prefill + decode together:
  prefill_tok_s                      one --prefill_tokens prompt, float32
  decode_b{1,B}_tok_s_{variant}      --new_tokens after a --prompt_tokens prompt, batch 1 and --batch
                                     (aggregate); variants float32, bfloat16 (weights and compute), int8
                                     (weight-only int8, float32 compute), w8a8 (int8 weights and per-token
                                     int8 activations, int32 accumulation); "_kv": with an int8 KV cache
  nocache_b1_tok_s / cache_b1_tok_s_at_{N}   --nocache_tokens new tokens at batch 1 without the cache
                                     (the whole prefix recomputed per token, padded to 64-token buckets so
                                     its cost grows with the prefix) and with it
  ratio_*                            the ratios the engine is judged by
  bpb_{variant}, delta_bpb_{variant}_pct     with --workdir (a trained run of this shape): bits per byte
                                     on --bpb_rows validation documents, float32 vs quantized
  peer_*, ratio_*_vs_peer            with --peer hf: Hugging Face transformers' LlamaForCausalLM of the same
                                     shape (random weights, float32) and `generate` with its KV cache, on
                                     the same machine in the same run
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from llm_jax import config as config_lib
from llm_jax.inference import engine as engine_lib
from llm_jax.model import Transformer, quant
from llm_jax.model.transformer import init_cache, unstack_layers
from llm_jax.training import host

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/bench_cpu.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run of this shape: its weights and bits per byte.")
_PEER = flags.DEFINE_enum("peer", "none", ["none", "hf"], "Also run Hugging Face transformers' generate.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per figure (the median is reported).")
_BATCH = flags.DEFINE_integer("batch", 32, "The large batch.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length for the decode figures.")
_NEW = flags.DEFINE_integer("new_tokens", 256, "New tokens per row for the decode figures.")
_NOCACHE = flags.DEFINE_integer("nocache_tokens", 512, "New tokens for the cache vs no-cache comparison.")
_PREFILL = flags.DEFINE_integer("prefill_tokens", 512, "Prompt length for the prefill figure.")
_VARIANTS = flags.DEFINE_list("variants", ["float32", "bfloat16", "int8", "int8_kv", "w8a8", "w8a8_kv"],
                              "Numerics to time (see `variant`).")
_REQUESTS = flags.DEFINE_integer("requests", 200, "serve: concurrent requests.")
_WAITING = flags.DEFINE_integer("max_waiting", 64, "serve: requests that may wait for a row (beyond: 429).")
_SERVE_PROMPT = flags.DEFINE_string("serve_prompt", "What is 347 * 29?", "serve: the user message.")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16384", "65536"], "attention: sequence lengths.")
_TIME_MAX = flags.DEFINE_integer("time_max_length", 4096, "attention: time runs up to this length.")
_CONTEXT = flags.DEFINE_integer("context", 1, "attention: > 1: context parallelism over this many devices.")
_BPB_ROWS = flags.DEFINE_integer("bpb_rows", 64, "Validation documents for bits per byte (--workdir).")
_STEPS = flags.DEFINE_integer("steps", 10, "train: steps per timed run.")


def _log(msg: str):
  print(msg, file=sys.stderr, flush=True)


def _median_time(fn, repeats: int) -> float:
  """The median seconds of `repeats` calls of fn after a warm-up call (which compiles)."""
  return _interleaved_median_times({"": fn}, repeats)[""]


def variant(model, params, name: str):
  """(model, params, KV-cache dtype) for a numerics variant: float32, bfloat16, int8 or w8a8 weights
  (model/quant.py), "_kv" added for an int8 KV cache."""
  base, kv = name.removesuffix("_kv"), name.endswith("_kv")
  if base == "float32":
    pass
  elif base == "bfloat16":
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    model = model.clone(cfg=model.cfg.replace(dtype="bfloat16", param_dtype="bfloat16"))
  elif base in ("int8", "w8a8"):
    model, params = quant.quantize(model, params, base)
  else:
    raise ValueError(f"unknown variant {name!r}: float32, bfloat16, int8 or w8a8, optionally with _kv")
  return model, params, ("int8" if kv else None)


def decode_tok_s(engine, batch: int, prompt_len: int, new_tokens: int, repeats: int, vocab: int) -> float:
  prompts = np.random.RandomState(0).randint(1, vocab, (batch, prompt_len)).tolist()

  def run():
    state = engine.start(prompts, new_tokens)
    _, out = engine.decode(state, new_tokens)
    assert (out != engine_lib.NO_TOKEN).all()  # no stop tokens: every row produced every token
  return batch * new_tokens / _median_time(run, repeats)


def prefill_tok_s(engine, prompt_len: int, repeats: int, vocab: int) -> float:
  prompts = np.random.RandomState(1).randint(1, vocab, (1, prompt_len)).tolist()
  return prompt_len / _median_time(lambda: jax.block_until_ready(engine.start(prompts, 1).logits), repeats)


def nocache_generate(model, params, prompt: list[int], new_tokens: int, bucket: int = 64) -> list[int]:
  """Greedy decoding without a cache: the whole prefix is recomputed for every token (one jitted forward
  per 64-token length bucket, so the work per token grows with the prefix as it must)."""
  forward = _nocache_forward(model)
  ids = list(prompt)
  for _ in range(new_tokens):
    padded = np.zeros((1, -(-len(ids) // bucket) * bucket), np.int32)
    padded[0, :len(ids)] = ids
    ids.append(int(forward(params, padded, len(ids) - 1)))
  return ids[len(prompt):]


@functools.lru_cache(maxsize=None)
def _nocache_forward(model):
  return jax.jit(lambda p, ids, last: jnp.argmax(model.apply({"params": p}, ids)[0, last]))


def bits_per_byte(model, params, rows: list[list[int]], token_bytes, cache_dtype=None, chunk: int = 32) -> float:
  """bpb of rows (token lists of one length): one forward pass, or with cache_dtype chunk by chunk through
  the KV cache (so later chunks read the cached, e.g. int8, keys and values)."""
  from llm_jax.eval import bpb  # pylint: disable=import-outside-toplevel
  ids = jnp.asarray(rows, jnp.int32)
  inputs, targets = ids[:, :-1], ids[:, 1:]
  if cache_dtype is None:
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, inputs)
  else:
    step = jax.jit(lambda p, c, x: model.apply({"params": p}, x, cache=c))
    cache, parts = init_cache(model.cfg, inputs.shape[0], inputs.shape[1], cache_dtype), []
    for start in range(0, inputs.shape[1], chunk):
      part, cache = step(params, cache, inputs[:, start:start + chunk])
      parts.append(part)
    logits = jnp.concatenate(parts, axis=1)
  nats, num_bytes, _ = bpb.token_nats_and_bytes(logits, targets, jnp.ones(targets.shape), jnp.asarray(token_bytes))
  return bpb.bits_per_byte(nats, num_bytes)


def _validation_rows(config, tok, n: int, length: int) -> list[list[int]]:
  from llm_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  _, val = sources.split(sources.load_documents(config.data.source), config.data.val_fraction)
  rows = []
  for doc in val:
    ids = pipeline.start_ids(tok) + tok.encode(doc["text"])
    if len(ids) >= length:
      rows.append(ids[:length])
    if len(rows) == n:
      break
  if not rows:
    raise ValueError(f"no validation document of {config.data.source!r} has {length} tokens")
  return rows


def _hf_llama(cfg):
  """(torch, transformers, a LlamaForCausalLM of cfg's shape with random weights, float32), all cores."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count() or 1)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
      head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta)
  torch.manual_seed(0)
  return torch, transformers, transformers.LlamaForCausalLM(hf_cfg).float()


def hf_peer(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  """tok/s of transformers' LlamaForCausalLM.generate (greedy, KV cache) with the same shape."""
  torch, transformers, model = _hf_llama(cfg)
  model.eval()
  out = {"peer": f"transformers {transformers.__version__} LlamaForCausalLM.generate, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads"}
  for b in (1, batch):
    ids = torch.randint(1, cfg.vocab_size, (b, prompt_len))

    def run(ids=ids):
      with torch.no_grad():
        got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
      assert got.shape[1] == prompt_len + new_tokens
    out[f"peer_decode_b{b}_tok_s"] = b * new_tokens / _median_time(run, repeats)
    _log(f"peer batch {b}: {out[f'peer_decode_b{b}_tok_s']:.0f} tok/s")
  return out


def bench_decode(config) -> dict:
  cfg = config_lib.model_config(config).replace(scan_layers=False)  # the layout the engine decodes with
  model = Transformer(cfg)
  if _WORKDIR.value:
    import llm_jax  # pylint: disable=import-outside-toplevel
    saved, params, tok = llm_jax.load(_WORKDIR.value)
    saved_cfg, params = unstack_layers(config_lib.model_config(saved), params)
    if saved_cfg != cfg:
      raise config_lib.ConfigError(f"--workdir={_WORKDIR.value} holds another model than --config")
  else:
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    tok = None
  b, repeats = _BATCH.value, _REPEATS.value
  result = {"bench": "decode", "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} "
                                         f"({os.cpu_count()} cpu cores)",
            "params": cfg.num_params(), "batch": b, "prompt_tokens": _PROMPT.value, "new_tokens": _NEW.value,
            "repeats": repeats, "weights": "trained: " + _WORKDIR.value if _WORKDIR.value else "random"}
  fp32 = engine_lib.Engine(model, params)
  result["prefill_tok_s"] = prefill_tok_s(fp32, _PREFILL.value, repeats, cfg.vocab_size)
  _log(f"prefill: {result['prefill_tok_s']:.0f} tok/s")
  for name in _VARIANTS.value:
    vmodel, vparams, cache_dtype = variant(model, params, name)
    engine = engine_lib.Engine(vmodel, vparams, cache_dtype=cache_dtype)
    for batch in (1, b):
      key = f"decode_b{batch}_tok_s_{name}"
      result[key] = decode_tok_s(engine, batch, _PROMPT.value, _NEW.value, repeats, cfg.vocab_size)
      _log(f"{name} batch {batch}: {result[key]:.0f} tok/s")
    result[f"ratio_b{b}_vs_b1_{name}"] = result[f"decode_b{b}_tok_s_{name}"] / result[f"decode_b1_tok_s_{name}"]

  n = _NOCACHE.value
  prompt = list(range(1, _PROMPT.value + 1))
  result[f"nocache_b1_tok_s_at_{n}"] = n / _median_time(lambda: nocache_generate(model, params, prompt, n), repeats)
  result[f"cache_b1_tok_s_at_{n}"] = decode_tok_s(fp32, 1, _PROMPT.value, n, repeats, cfg.vocab_size)
  result[f"ratio_cache_vs_nocache_at_{n}"] = result[f"cache_b1_tok_s_at_{n}"] / result[f"nocache_b1_tok_s_at_{n}"]
  _log(f"no cache vs cache at {n} tokens: {result[f'nocache_b1_tok_s_at_{n}']:.0f} vs "
       f"{result[f'cache_b1_tok_s_at_{n}']:.0f} tok/s")

  if tok is not None:
    rows = _validation_rows(config, tok, _BPB_ROWS.value, config.data.seq_len + 1)
    token_bytes = tok.token_bytes()
    result["bpb_rows"] = len(rows)
    result["bpb_float32"] = bits_per_byte(model, params, rows, token_bytes)
    for name in _VARIANTS.value:
      if name == "float32":
        continue
      vmodel, vparams, cache_dtype = variant(model, params, name)
      result[f"bpb_{name}"] = bits_per_byte(vmodel, vparams, rows, token_bytes, cache_dtype)
      result[f"delta_bpb_{name}_pct"] = 100 * (result[f"bpb_{name}"] / result["bpb_float32"] - 1)
      _log(f"bpb {name}: {result[f'bpb_{name}']:.4f} (float32 {result['bpb_float32']:.4f})")

  if _PEER.value == "hf":
    result.update(hf_peer(cfg, b, _PROMPT.value, _NEW.value, repeats))
    for name in _VARIANTS.value:
      for batch in (1, b):
        result[f"ratio_decode_b{batch}_{name}_vs_peer"] = (result[f"decode_b{batch}_tok_s_{name}"]
                                                           / result[f"peer_decode_b{batch}_tok_s"])
  return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def bench_train(config) -> dict:
  """The training step's throughput (module docstring), and with --peer hf the Hugging Face peer's."""
  from llm_jax import sharding  # pylint: disable=import-outside-toplevel
  from llm_jax.training import metrics as metrics_lib, optim  # pylint: disable=import-outside-toplevel
  from llm_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  from llm_jax.training.step import make_train_step, next_token_loss  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(config.mesh)
  setup = state_lib.build(config, mesh)
  cfg, b, t, steps = setup.model_config, config.data.batch_size, config.data.seq_len, _STEPS.value
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (b, t + 1)).astype(np.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": np.ones((b, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))}
  peak = metrics_lib.measure_peak_flops(config.model.dtype) * jax.device_count()
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  step = make_train_step(next_token_loss(setup.model), setup.tx, optim.schedule(config.train),
                         grad_accum=config.train.grad_accum, state_sharding=setup.state_sharding,
                         batch_sharding=sharding.batch_sharding(mesh))
  state, rng = setup.init(jax.random.PRNGKey(config.seed)), jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()

  def run():
    nonlocal state
    for _ in range(steps):
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))

  runs = {"": run}
  if _PEER.value == "hf":
    peer_run, peer_info = hf_train_peer(cfg, ids, config.train, steps)
    runs["peer_"] = peer_run
  step_s = {name: s / steps for name, s in _interleaved_median_times(runs, _REPEATS.value).items()}
  tokens = b * t
  result = {"bench": "train", "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "params": cfg.num_params(), "batch": b, "seq_len": t, "dtype": config.model.dtype,
            "tokens_per_sec": tokens / step_s[""], "step_ms": 1e3 * step_s[""], "compile_s": compile_s,
            "mfu": cfg.flops_per_token(t) * tokens / step_s[""] / peak, "peak_flops": peak,
            "step_memory_mb": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                               + mem.temp_size_in_bytes) / 2 ** 20}
  _log(f"llm_jax: {result['tokens_per_sec']:.0f} tok/s, {result['step_ms']:.0f} ms/step, mfu {result['mfu']:.3f}")
  if _PEER.value == "hf":
    result.update(peer=peer_info, peer_tokens_per_sec=tokens / step_s["peer_"], peer_step_ms=1e3 * step_s["peer_"])
    result["ratio_tokens_per_sec_vs_peer"] = result["tokens_per_sec"] / result["peer_tokens_per_sec"]
    _log(f"peer: {result['peer_tokens_per_sec']:.0f} tok/s")
  return result


def _interleaved_median_times(runs: dict, repeats: int) -> dict:
  """{name: median seconds of one call} of each function, after a warm-up call of each, timed in turns
  (a, b, a, b, ...) so that a machine that speeds up or slows down during the run (shared CPUs do, by 20%)
  moves every figure alike and leaves their ratio alone."""
  for fn in runs.values():
    fn()
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(ts) for name, ts in times.items()}


def hf_train_peer(cfg, ids: np.ndarray, train_config, steps: int) -> tuple:
  """(run, description): `run` trains transformers' LlamaForCausalLM of cfg's shape `steps` steps on the rows
  `ids` [B, T + 1] with torch's AdamW at the config's settings and its gradient clipping.

  The peer runs in a process of its own (spawned; `run` asks it for one round and waits), with the host
  settings this one has (training/host.py): in one process the two frameworks' thread pools and the heap
  they share slowed llm_jax's step by 15-30% for as long as the process lived once torch had trained in it.
  """
  t = train_config
  hyper = {"lr": t.lr, "betas": (t.b1, t.b2), "eps": t.eps, "weight_decay": t.weight_decay, "grad_clip": t.grad_clip}
  ctx = multiprocessing.get_context("spawn")
  conn, child_conn = ctx.Pipe()
  proc = ctx.Process(target=_hf_train_worker, args=(child_conn, cfg, ids, hyper, steps), daemon=True)
  proc.start()
  atexit.register(proc.kill)

  def reply():
    try:
      kind, value = conn.recv()
    except EOFError:
      raise RuntimeError(f"the Hugging Face peer's process died (exit code {proc.exitcode})") from None
    if kind == "error":
      raise RuntimeError(f"the Hugging Face peer failed:\n{value}")
    return value

  description = reply()

  def run():
    conn.send("run")
    reply()

  return run, description


def _hf_train_worker(conn, cfg, ids: np.ndarray, hyper: dict, steps: int):
  """hf_train_peer's process: builds the peer, sends its description, then trains `steps` steps per "run"."""
  try:
    host.keep_freed_memory()
    torch, transformers, model = _hf_llama(cfg)
    model.train()
    grad_clip = hyper.pop("grad_clip")
    opt = torch.optim.AdamW(model.parameters(), **hyper)
    inputs, targets = torch.from_numpy(ids[:, :-1]).long(), torch.from_numpy(ids[:, 1:]).long()
    # A bfloat16 run is compared with torch's mixed precision: float32 weights and AdamW, the forward under
    # autocast (bf16 matmuls), as llm_jax keeps float32 parameters and computes in bf16.
    bf16 = cfg.dtype == "bfloat16"
    attention = model.config._attn_implementation  # pylint: disable=protected-access
    conn.send(("ok", f"transformers {transformers.__version__} LlamaForCausalLM + torch AdamW, torch "
                     f"{torch.__version__}, {torch.get_num_threads()} threads, attention {attention}"
                     + (", bf16 autocast" if bf16 else "")))
    while _next_request(conn) == "run":
      for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
          logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        if grad_clip > 0:
          torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
      conn.send(("ok", None))
  except Exception:  # pylint: disable=broad-except  # reported in the parent, which raises
    conn.send(("error", traceback.format_exc()))


def _next_request(conn):
  try:
    return conn.recv()
  except EOFError:  # the bench has exited
    return None


def bench_dedup(config, max_mb: float = 4.0) -> dict:
  """MinHash signatures per second, ours (numpy) vs datasketch's MinHash.update_batch when it is installed,
  on up to max_mb of config.data.source, in this process; and how well each estimates Jaccard similarity."""
  from llm_jax.data import dedup, sources  # pylint: disable=import-outside-toplevel
  cl = config.clean
  texts, size = [], 0
  for doc in sources.load_documents(config.data.source):
    texts.append(doc["text"])
    size += len(doc["text"].encode())
    if size >= max_mb * 1e6:
      break
  num_perm = cl.minhash_bands * cl.minhash_rows
  hasher = dedup.MinHasher(num_perm, cl.minhash_ngram, cl.seed)
  t0 = time.perf_counter()
  for t in texts:
    hasher.signature(t)
  result = {"documents": len(texts), "mb": round(size / 1e6, 2), "num_perm": num_perm,
            "numpy_mb_s": round(size / 1e6 / (time.perf_counter() - t0), 2)}
  rng = np.random.default_rng(0)  # pairs: a document and a copy with 5% of its words dropped
  pairs = [(t, " ".join(w for w in t.split() if rng.random() > 0.05)) for t in texts[:50]]
  exact = [dedup.jaccard(a, b, cl.minhash_ngram) for a, b in pairs]
  est = [float(np.mean(hasher.signature(a) == hasher.signature(b))) for a, b in pairs]
  result["numpy_jaccard_mae"] = round(float(np.mean(np.abs(np.subtract(est, exact)))), 4)
  try:
    import datasketch  # pylint: disable=import-outside-toplevel
  except ImportError:
    result["datasketch"] = "not installed (pip install datasketch)"
    return result

  def sketch(text):
    words = dedup._WORD.findall(text.lower())  # pylint: disable=protected-access
    n = cl.minhash_ngram
    m = datasketch.MinHash(num_perm=num_perm, seed=cl.seed)
    m.update_batch([" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))])
    return m
  t0 = time.perf_counter()
  for t in texts:
    sketch(t)
  result["datasketch_mb_s"] = round(size / 1e6 / (time.perf_counter() - t0), 2)
  est = [sketch(a).jaccard(sketch(b)) for a, b in pairs]
  result["datasketch_jaccard_mae"] = round(float(np.mean(np.abs(np.subtract(est, exact)))), 4)
  result["ratio_numpy_vs_datasketch"] = round(result["numpy_mb_s"] / result["datasketch_mb_s"], 2)
  return result


def bench_attention(config) -> dict:
  from llm_jax.model import blockwise, layers  # pylint: disable=import-outside-toplevel
  cfg = config_lib.model_config(config)
  kh, h = cfg.n_kv_heads, cfg.head_dim

  plain = layers.plain_attention
  lean = lambda q, k, v, seg: blockwise.attention(q, k, v, seg, cfg.attention_block)
  step = lambda fn: jax.jit(jax.value_and_grad(lambda q, k, v, w, seg: jnp.sum(fn(q, k, v, seg) * w),
                                               argnums=(0, 1, 2)))
  result = {"bench": "attention", "device": jax.devices()[0].device_kind, "heads": cfg.n_heads,
            "kv_heads": kh, "head_dim": h, "block": cfg.attention_block}
  if _CONTEXT.value > 1:
    return {**result, **_bench_context_attention(cfg, _CONTEXT.value, step)}
  for t in map(int, _LENGTHS.value):
    args = _attention_args(cfg, t)
    outs = {}
    for name, fn in (("plain", plain), ("blockwise", lean)):
      _measure_attention(result, outs, name, t, step(fn), args, f"{name} attention at {t} tokens")
    result[f"ratio_mem_{t}"] = round(result[f"plain_mb_{t}"] / max(result[f"blockwise_mb_{t}"], 1e-3), 1)
    if outs:
      result[f"max_rel_err_{t}"] = _max_rel_err(outs["blockwise"], outs["plain"])
  return result


def _measure_attention(result: dict, outs: dict, name: str, t: int, fn, args, what: str):
  """{name}_mb_{t}: the compiled program's temporaries; up to --time_max_length, {name}_ms_{t}: the median
  time of --repeats runs, and outs[name]: its outputs."""
  compiled = fn.lower(*args).compile()
  result[f"{name}_mb_{t}"] = round(compiled.memory_analysis().temp_size_in_bytes / 2 ** 20, 1)
  if t <= _TIME_MAX.value:
    _log(f"timing {what}")
    result[f"{name}_ms_{t}"] = round(1e3 * _median_time(lambda: jax.block_until_ready(compiled(*args)),
                                                        _REPEATS.value), 1)
    outs[name] = compiled(*args)


def _max_rel_err(got, want) -> float:
  """The largest |got - want| of each leaf relative to want's largest entry, over the leaves."""
  return float(max(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)) for a, b in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))))


def _attention_args(cfg, t: int, put=lambda x: x) -> tuple:
  """q, k, v, the output's cotangent w and one segment, batch 1, each through put."""
  kh, g, h = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads, cfg.head_dim
  keys = jax.random.split(jax.random.PRNGKey(t), 4)
  return tuple(map(put, (jax.random.normal(keys[0], (1, t, kh, g, h)), jax.random.normal(keys[1], (1, t, kh, h)),
                         jax.random.normal(keys[2], (1, t, kh, h)), jax.random.normal(keys[3], (1, t, kh, g, h)),
                         jnp.ones((1, t), jnp.int32))))


def _bench_context_attention(cfg, ways: int, step) -> dict:
  """bench_attention with the sequence split over `ways` devices (module docstring)."""
  from llm_jax import sharding  # pylint: disable=import-outside-toplevel
  from llm_jax.model import blockwise  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh({"data": 1, "context": ways}, devices=jax.devices()[:ways])
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "context"))
  result = {"context": ways}
  for t in map(int, _LENGTHS.value):
    args = _attention_args(cfg, t, functools.partial(jax.device_put, device=split))
    outs = {}
    for impl, balance in ((i, b) for b in (False, True) for i in ("allgather", "ring")):
      name = impl + ("_zigzag" if balance else "")

      def fn(q, k, v, seg, impl=impl, balance=balance):  # the inputs count as zigzag-ordered when balanced
        with sharding.activation_rules(mesh):
          return blockwise.context_parallel(q, k, v, seg, cfg.attention_block, impl=impl, balance=balance)
      _measure_attention(result, outs, name, t, step(fn), args,
                         f"{name} context-parallel attention at {t} tokens over {ways} devices")
    for name in ("ring", "ring_zigzag"):
      if name in outs:
        result[f"max_rel_err_{name}_{t}"] = _max_rel_err(outs[name], outs[name.replace("ring", "allgather")])
  return result


def bench_serve(workdir: str) -> dict:
  import threading  # pylint: disable=import-outside-toplevel

  from llm_jax import serve  # pylint: disable=import-outside-toplevel
  from llm_jax.inference.assistant import Assistant  # pylint: disable=import-outside-toplevel
  server = serve.Server(Assistant.from_workdir(workdir), "bench", port=0, rows=_BATCH.value, max_waiting=_WAITING.value,
                        max_new_tokens=_NEW.value, request_timeout=600)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    _log(f"warm-up: {_BATCH.value} requests (compiles the engine's shapes)")
    serve.load_test(server.url, "bench", _BATCH.value, _NEW.value, prompt=_SERVE_PROMPT.value)
    _log(f"{_REQUESTS.value} concurrent requests")
    result = serve.load_test(server.url, "bench", _REQUESTS.value, _NEW.value, prompt=_SERVE_PROMPT.value)
    stats = server.batcher.stats
    occupancy = stats.row_steps / max(1, stats.chunks * server.batcher.chunk * server.batcher.rows)
  finally:
    server.close()
  return {"bench": "serve", "workdir": workdir, "device": jax.devices()[0].device_kind, "rows": _BATCH.value,
          "max_waiting": _WAITING.value, "max_tokens": _NEW.value, **result,
          "row_occupancy": round(occupancy, 3), "compactions": stats.compactions}


def main(argv):
  if len(argv) != 2 or argv[1] not in ("train", "decode", "dedup", "attention", "serve"):
    raise app.UsageError("usage: python -m llm_jax.bench {train,decode,dedup,attention} --config configs/NAME.py "
                         "[...] | serve --workdir DIR [...]")
  logging.set_verbosity(logging.WARNING)  # checkpoint restore logs every step at INFO
  host.keep_freed_memory()  # as training does (llm_jax/training/host.py), before JAX starts its backend
  if argv[1] == "serve":
    if not _WORKDIR.value:
      raise app.UsageError("serve needs --workdir (a fine-tuned run)")
    print(json.dumps(bench_serve(_WORKDIR.value)), flush=True)
    return
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required")
  config_lib.validate(config)
  bench = {"train": bench_train, "decode": bench_decode, "dedup": bench_dedup, "attention": bench_attention}[argv[1]]
  print(json.dumps(bench(config)), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
