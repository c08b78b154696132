"""Entry point for every trainable stage.

    python -m llm_jax.train --config configs/tiny.py [--config.train.steps=3 ...] [--workdir runs/tiny]

Builds everything from the config and runs the loop for `config.stage`. The workdir (default
`runs/<config file name>`) holds config.json, metrics.jsonl, tb/, tokenizer/, checkpoints/ and samples.txt, and
once a run ends, report.md with its plots (llm_jax/eval/report.py; a failure to write it is only a warning).
Rerunning on a workdir resumes from its latest checkpoint (or reports the run complete); a workdir whose
saved config has another model, tokenizer, data source, stage or teacher is refused rather than silently mixed.

Stages: `pretrain` minimises next-token cross-entropy on config.data. `distill` runs the same loop (data,
evaluation in bits per byte, checkpoints, resume) with the distillation loss (llm_jax/training/distill.py):
the model of the config, the student, learns from the logits of the trained run in `config.distill.teacher`,
whose tokenizer it takes. Its logged `loss` is that mixed objective; `eval/bpb` is the student's own.

Multi-host (README "Multi-host"): start the same command once per process with config.distributed set (or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); `sharding.initialize_distributed` joins them
before anything touches a device. The workdir must be one shared directory. Process 0 alone writes
config.json, metrics.jsonl, tb/, samples.txt and trains (or copies) the tokenizer, which the others load
once it exists (barriers in between); all processes write their shards of each checkpoint. Every process
feeds only the rows of the global batch its devices hold, and the batches are the same whatever the process
count (llm_jax/data/pipeline.py), so 2 hosts x 4 devices train exactly like 1 host x 8.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time

import jax
import ml_collections
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

import llm_jax
from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import pipeline, sources, tasks
from llm_jax.eval import bpb, report
from llm_jax.eval import tasks as task_eval
from llm_jax.inference import engine as engine_lib
from llm_jax.inference import sample
from llm_jax.model import ModelConfig, Transformer
from llm_jax.training import checkpoint, metrics as metrics_lib, optim
from llm_jax.training import host, sft
from llm_jax.training import state as state_lib
from llm_jax.training.distill import distill_loss
from llm_jax.training.step import make_eval_step, make_train_step, next_token_loss

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/NAME.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")

# Sections that must match between a workdir's saved config and the current one to resume.
_RESUME_MUST_MATCH = ("stage", "model", "tokenizer", "data.source", "data.mixture", "data.chunk_chars",
                      "data.val_fraction", "seed")
# Keys newer than some workdirs: their value there was this default (a run saved before LoRA+ was plain LoRA).
_ADDED_SINCE = {"data.mixture": "", "lora.b_lr_ratio": 1.0}


def _lookup(tree: dict, dotted: str):
  """The value at a dotted key path ("" is the tree itself), or "<missing>"."""
  for part in dotted.split(".") if dotted else ():
    tree = tree.get(part, "<missing>") if isinstance(tree, dict) else "<missing>"
  return tree


def check_resumable(workdir: str, config: ml_collections.ConfigDict):
  """Raises ConfigError if workdir/config.json describes an incompatible run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  current = json.loads(config_lib.to_json(config))
  for added, default in _ADDED_SINCE.items():  # saved before the key existed: it had its default there
    *parents, leaf = added.split(".")
    section = _lookup(saved, ".".join(parents))
    if isinstance(section, dict) and leaf not in section:
      section[leaf] = default
  problems = []
  stage_keys = {"distill": ("distill.teacher",), "sft": ("init_from", "sft.mixture", "sft.examples", "lora"),
                "grpo": ("init_from", "grpo"), "reward": ("init_from", "pref", "reward"),
                "dpo": ("init_from", "pref", "dpo"), "ppo": ("init_from", "pref", "ppo")}
  for key in _RESUME_MUST_MATCH + stage_keys.get(config.stage, ()):
    was, now = _lookup(saved, key), _lookup(current, key)
    if key == "model" and isinstance(was, dict):  # fields added since that run had their default there
      was = {**dataclasses.asdict(ModelConfig()), **was}
    if isinstance(was, dict) and isinstance(now, dict):
      problems += config_lib.diff(was, now, key + ".")
    elif was != now:
      problems.append(f"{key}: saved {was!r}, now {now!r}")
  if problems:
    raise config_lib.ConfigError(
        f"{path} belongs to a run with a different setup, so it cannot be resumed:\n  " + "\n  ".join(problems)
        + "\nUse another --workdir, or restore those values.")


def _is_main() -> bool:
  return jax.process_index() == 0


def _barrier(name: str):
  """Waits until every process gets here (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def build_tokenizer(workdir: str, config, train_docs: list[dict]) -> tokenizer_lib.Tokenizer:
  """The workdir's tokenizer; else the distillation teacher's or init_from's (copied in); else one trained on
  the training documents.

  Only process 0 builds it (training is deterministic, but several processes writing one directory is not
  safe); the others wait and then load what it wrote to the shared workdir.
  """
  directory = os.path.join(workdir, "tokenizer")
  if not _is_main():
    _barrier("tokenizer")
    return tokenizer_lib.load(directory)
  tok = _build_tokenizer(directory, config, train_docs)
  _barrier("tokenizer")
  return tok


def _build_tokenizer(directory: str, config, train_docs: list[dict]) -> tokenizer_lib.Tokenizer:
  if os.path.isdir(directory) and os.listdir(directory):
    return tokenizer_lib.load(directory)
  origin = config.distill.teacher if config.stage == "distill" else config.init_from
  if origin:
    source = os.path.join(origin, "tokenizer")
    tok = tokenizer_lib.load(source if os.path.isdir(source) else origin)
    tok.save(directory)
    return tok
  t0 = time.time()
  tok = tokenizer_lib.train([d["text"] for d in train_docs], directory, vocab_size=config.tokenizer.vocab_size,
                            model_type=config.tokenizer.model_type, max_chars=config.tokenizer.train_chars,
                            seed=config.seed)
  _print(f"trained a {tok.vocab_size}-token {config.tokenizer.model_type} tokenizer in {time.time() - t0:.1f}s "
         f"-> {directory}")
  return tok


# ModelConfig fields that may differ from the source's in init_from: numerics, memory and the attention
# kernel, not the function; and RoPE's, which continued pretraining at a longer length changes on purpose
# (context extension, README "Long context"): the run prints what changed.
_FREE_FIELDS = ("dtype", "param_dtype", "remat", "max_seq_len", "attention_impl", "attention_block", "context_impl",
                "context_balance")
_ROPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name.startswith("rope_"))


def init_params(source: str, setup: state_lib.Setup):
  """Parameters from an llm_jax workdir (a LoRA run's merged into its base) or a Hugging Face model directory.

  Every field of this run's ModelConfig that defines the function (shapes, positions, norms, eps ...) must
  equal the source's, so a run cannot silently change the model it starts from; RoPE's theta and scaling may
  change (context extension) and are printed when they do. The check reads only config files, before any
  weight is loaded.
  """
  ours, saved = setup.model_config, {}
  if os.path.isdir(os.path.join(source, "checkpoints")):
    with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
    theirs = config_lib.model_config(saved)
  else:
    from llm_jax import convert  # pylint: disable=import-outside-toplevel
    theirs, _ = convert.read_config(source)
  free = set(_FREE_FIELDS) - ({"max_seq_len"} if ours.positions == "learned" else set())  # a table has a length
  extended = [f"{f} {getattr(theirs, f)!r} -> {getattr(ours, f)!r}" for f in _ROPE_FIELDS
              if ours.positions == "rope" and getattr(theirs, f) != getattr(ours, f)]
  if extended:
    free |= set(_ROPE_FIELDS)
    _print(f"init_from: RoPE changed from {source}'s (context extension): " + ", ".join(extended))
  mismatched = [f"model.{f.name}: {source} has {getattr(theirs, f.name)!r}, this config {getattr(ours, f.name)!r}"
                for f in dataclasses.fields(ours) if f.name not in free | {"scan_layers"}  # checked below
                and getattr(theirs, f.name) != getattr(ours, f.name)]
  if mismatched:
    raise config_lib.ConfigError("init_from: the model differs from its source (set these fields, or use "
                                 "llm_jax.model.presets):\n  " + "\n  ".join(mismatched))
  if os.path.isdir(os.path.join(source, "checkpoints")):
    if theirs.scan_layers != ours.scan_layers:
      raise config_lib.ConfigError(f"init_from: model.scan_layers={ours.scan_layers} but {source} was saved with "
                                   f"{theirs.scan_layers}")
    if saved.get("lora", {}).get("rank", 0):  # a LoRA run's checkpoints hold adapters: load merges them
      _, params, _ = llm_jax.load(source)
      return jax.device_put(params, setup.params_sharding)
    return checkpoint.restore_params(source, setup.abstract_state.params)
  if not ours.scan_layers:
    raise config_lib.ConfigError("init_from a Hugging Face directory needs model.scan_layers=True")
  _, hf_params = convert.from_hf(source)  # scan_layers=True layout
  return jax.tree.map(lambda x, a: jax.device_put(x.astype(a.dtype), a.sharding), hf_params,
                      setup.abstract_state.params)


def build_loss(config, setup: state_lib.Setup, mesh, tok) -> tuple:
  """(loss_fn, model FLOPs per token) for config.stage: next-token cross-entropy, or distillation from
  config.distill.teacher, whose parameters are restored sharded over this run's mesh like the student's."""
  if config.stage != "distill":
    return next_token_loss(setup.model), setup.model_config.flops_per_token(config.data.seq_len)
  where = f"distill.teacher={config.distill.teacher!r}"
  try:
    teacher_config, teacher_params, teacher_tok = llm_jax.load(config.distill.teacher, mesh=mesh)
  except config_lib.ConfigError as e:  # e.g. a teacher whose shapes the mesh cannot split
    raise config_lib.ConfigError(f"{where}: {e}") from None
  if teacher_tok.files != tok.files:
    raise config_lib.ConfigError(f"{where}: its tokenizer differs from this workdir's; a student must use its "
                                 "teacher's tokenizer (use a fresh --workdir)")
  teacher_cfg = config_lib.model_config(teacher_config)
  if teacher_cfg.max_seq_len < config.data.seq_len:
    raise config_lib.ConfigError(f"{where}: the teacher's max_seq_len {teacher_cfg.max_seq_len} is shorter than "
                                 f"data.seq_len={config.data.seq_len}")
  _print(f"teacher: {config.distill.teacher}, {teacher_cfg.num_params() / 1e6:.2f}M parameters, "
         f"{teacher_cfg.n_layers} layers, d_model {teacher_cfg.d_model}; tau {config.distill.tau}, "
         f"alpha {config.distill.alpha}")
  loss_fn = distill_loss(setup.model, Transformer(teacher_cfg), teacher_params, config.distill.tau,
                         config.distill.alpha)
  seq_len = config.data.seq_len  # MFU counts the teacher's forward pass: a third of its forward + backward FLOPs
  return loss_fn, setup.model_config.flops_per_token(seq_len) + teacher_cfg.flops_per_token(seq_len) / 3


def _truncate_metrics(workdir: str, last_step: int):
  """Drops logged entries past the checkpoint we resume from (all of them on a fresh start): those steps
  are about to be redone, and each step must appear once."""
  kept = [m for m in metrics_lib.read(workdir) if 0 < last_step and m["step"] <= last_step]
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(m) + "\n" for m in kept)


def _print(*args):
  if _is_main():
    tqdm.write(" ".join(str(a) for a in args))


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """Holds an exclusive lock on workdir/.lock (process 0 only) so that two runs never write one workdir: a
  second one stops at once, naming the workdir and the first one's pid. A file system without flock (some
  network mounts) gets a warning and no lock."""
  if not _is_main():
    yield
    return
  path = os.path.join(workdir, ".lock")
  with open(path, "a+", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      raise config_lib.ConfigError(f"{workdir} is in use by another run (pid {holder}); wait for it to finish "
                                   "or use another --workdir") from None
    except OSError as e:
      _print(f"warning: could not lock {path} ({e}); make sure no other run uses this workdir")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    yield  # closing the file releases the lock, also when the run fails


def _training_texts(config, train_docs: list[dict]) -> tuple[list[str] | dict[str, list[str]], dict | None]:
  """The training pieces, per source label when data.mixture weights them (checked here, before any state)."""
  weights = tasks.parse_weights(config.data.mixture) or None
  if not weights:
    return pipeline.pieces(train_docs, config.data.chunk_chars), None
  texts = pipeline.labelled_pieces(train_docs, config.data.chunk_chars)
  try:
    pipeline.check_mixture(texts, weights)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.data.mixture={config.data.mixture!r} (data.source="
                                 f"{config.data.source!r}): {e}") from None
  _print("data mixture: " + ", ".join(f"{k} weight {w:g} ({len(texts[k])} pieces)" for k, w in weights.items()))
  left_out = sorted(set(texts) - set(weights))
  if left_out:
    _print(f"note: data.mixture gives no weight to {left_out}: their {sum(len(texts[k]) for k in left_out)} "
           "pieces are not trained on")
  return texts, weights


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains (stage pretrain), distills into (stage distill) or fine-tunes (stage sft) a decoder; returns
  the final summary (also printed)."""
  config_lib.validate(config)
  sharding.initialize_distributed(config)  # before anything touches a device
  os.makedirs(workdir, exist_ok=True)
  with _workdir_lock(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_resumable(workdir, config)  # every process checks (and fails alike) before process 0 overwrites it
  _barrier("config checked")
  if _is_main():
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config_lib.to_json(config))
  t_start = time.time()
  is_sft = config.stage == "sft"

  if is_sft:  # conversations, rendered with init_from's tokenizer
    tok = build_tokenizer(workdir, config, [])
    train_examples, val_examples = sft.load_data(config, tok, _print)
    order0 = None
  else:
    docs = sources.load_documents(config.data.source)
    train_docs, val_docs = sources.split(docs, config.data.val_fraction)
    if not train_docs or not val_docs:
      raise config_lib.ConfigError(f"data.source={config.data.source!r}: {len(train_docs)} training and "
                                   f"{len(val_docs)} validation documents; need both (adjust data.val_fraction)")
    order0 = bpb.order0_byte_entropy(d["text"] for d in val_docs)
    tok = build_tokenizer(workdir, config, train_docs)
    _print(f"data: {len(train_docs)} train / {len(val_docs)} validation documents; tokenizer: {tok.vocab_size} "
           f"tokens; validation order-0 byte entropy {order0:.3f} bits/byte (the baseline to beat)")
    texts, weights = _training_texts(config, train_docs)
  if tok.vocab_size > config.model.vocab_size:
    raise config_lib.ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                                 f"{tok.vocab_size} tokens ({os.path.join(workdir, 'tokenizer')}"
                                 + (", distill.teacher's" if config.stage == "distill" else "") + ")")

  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.{e} (--config.mesh.data=-1 takes whatever devices are left)") from None
  setup = state_lib.build(config, mesh)  # checks that the model splits over the mesh
  state_lib.check_batch_fits_mesh(config, mesh)
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  start = mngr.latest_step() or 0
  if start >= config.train.steps:  # nothing to do: report, without building data or restoring arrays
    evals = [m for m in metrics_lib.read(workdir) if "eval/bpb" in m]
    last = evals[-1] if evals else {}
    _print(f"run complete: {workdir} holds step {start} (train.steps={config.train.steps}); last eval: "
           f"{ {k: round(v, 4) for k, v in last.items() if k.startswith('eval/')} }. Raise train.steps to continue.")
    mngr.close()
    return {"step": start, "complete": True, **last}
  batch_size = config.data.batch_size
  rows = sharding.process_rows(mesh, batch_size)  # the rows of every global batch this process feeds
  shape = dict(seq_len=config.data.seq_len, batch_size=batch_size, rows=rows)
  if is_sft:
    train_ds = pipeline.sft_dataset(train_examples, seed=config.seed, **shape)
  else:
    train_ds = pipeline.train_dataset(texts, tok, seed=config.seed, weights=weights, **shape)
  # Timed before the data iterator exists: its prefetch thread tokenizes in the background and would
  # slow the matmul down, inflating every MFU figure derived from it.
  peak_flops = metrics_lib.measure_peak_flops(config.model.dtype)
  data_iter = iter(train_ds)
  if is_sft:
    eval_data = pipeline.sft_eval_batches(val_examples, num_batches=config.train.eval_batches, **shape)
  else:
    eval_data = pipeline.eval_batches(pipeline.pieces(val_docs, config.data.chunk_chars), tok,
                                      num_batches=config.train.eval_batches, **shape)

  model, model_cfg, seq_len = setup.model, setup.model_config, config.data.seq_len
  rng = jax.random.PRNGKey(config.seed)
  model_params = lambda params: params  # what the model runs with, from the state's params
  loss_fn, flops_per_token = build_loss(config, setup, mesh, tok)
  params_sharding = setup.params_sharding  # of the full model, which evaluation runs (merged, under LoRA)
  if config.lora.rank:  # the state holds the adapters; the base is an argument of the step
    base_params = init_params(config.init_from, setup)
    setup, loss_fn, model_params = sft.lora_setup(config, setup, mesh, base_params, tok)
    flops_per_token = flops_per_token * 2 / 3  # no weight gradients for the frozen base: 4N, not 6N, per token

  if start:
    state = checkpoint.restore(mngr, setup.abstract_state, data_iter)
    _print(f"resuming from {workdir}/checkpoints/{start}")
  elif config.lora.rank:
    state = setup.init(rng)
    _print(f"initialised from {config.init_from}; " + sft.describe_lora(base_params, state.params))
  elif config.init_from:
    params = init_params(config.init_from, setup)
    state = jax.jit(lambda p, r: state_lib.TrainState.create(p, setup.tx, r), out_shardings=setup.state_sharding,
                    donate_argnums=0)(params, rng)
    _print(f"initialised from {config.init_from}")
  else:
    state = setup.init(rng)
  if _is_main():
    _truncate_metrics(workdir, start)
  n_params = model_cfg.num_params()
  _print(f"model: {n_params / 1e6:.2f}M parameters, {model_cfg.n_layers} layers, d_model {model_cfg.d_model}; "
         f"mesh {dict(mesh.shape)}; {config.train.steps} steps x {config.data.batch_size} x {seq_len} tokens")

  batch_sharding = sharding.batch_sharding(mesh)
  train_step = make_train_step(loss_fn, setup.tx, optim.schedule(config.train),  # LoRA's is the adapters'
                               grad_accum=config.train.grad_accum, state_sharding=setup.state_sharding,
                               batch_sharding=batch_sharding)
  token_bytes = jax.device_put(tok.token_bytes(), sharding.replicated(mesh))  # a global array, like params
  eval_step = make_eval_step(model, token_bytes, params_sharding=params_sharding,
                             batch_sharding=batch_sharding)
  writer = metrics_lib.Writer(workdir)
  throughput = metrics_lib.Throughput(
      tokens_per_step=config.data.batch_size * seq_len,
      flops_per_step=flops_per_token * config.data.batch_size * seq_len,
      peak_flops=peak_flops * jax.device_count())

  def evaluate(step: int) -> dict:
    result = evaluate_bpb(eval_step, model_params(state.params), eval_data, mesh, rows, batch_size)
    if order0 is not None:
      result["eval/order0_bpb"] = order0
    writer.write(step, result)
    _print(f"step {step}: eval/loss {result['eval/loss']:.4f} eval/bpb {result['eval/bpb']:.4f}")
    return result

  if start == 0:
    evaluate(0)

  bar = tqdm(total=config.train.steps, initial=start, disable=not config.train.progress or not _is_main(),
             desc=config.stage, unit="step", dynamic_ncols=True)
  step, pending, last = start, None, {}

  def flush():
    """Writes the pending step's metrics; called once the device has moved on to a later step."""
    nonlocal pending
    if pending is not None:
      at, m = pending
      m = {k: float(v) for k, v in jax.device_get(m).items() if k != "tokens"}
      m.update(throughput.measure(at))
      writer.write(at, m)
      last.update(m)
      bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m.get('tokens_per_sec', 0):.0f}")
      pending = None

  while step < config.train.steps:
    batch = sharding.rows_to_global(next(data_iter), rows, batch_size, mesh)
    state, step_metrics = train_step(state, batch, jax.random.fold_in(state.rng, step))
    step += 1
    flush()  # the previous logged step: by now the device is busy with this one
    if step % config.train.log_every == 0 or step == config.train.steps or step == start + 1:
      pending = (step, step_metrics)  # step start+1 is logged to start the throughput clock after compiling
    bar.update(1)
    do_eval = step % config.train.eval_every == 0 or step == config.train.steps
    do_save = step % config.train.checkpoint_every == 0 or step == config.train.steps
    if do_eval or do_save:
      flush()
      if do_eval:
        last.update(evaluate(step))
      if do_save:
        checkpoint.save(mngr, step, state, data_iter, force=True)
      throughput.restart(step)
  flush()
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  data_iter.close()  # stops its prefetch thread

  lines, extra = [], {}
  if is_sft or config.sample.prompts:  # the KV-cache engine on replicated parameters (any process count)
    engine = engine_lib.Engine(model, jax.device_put(model_params(state.params), sharding.replicated(mesh)))
  if is_sft:  # held-out problems with tools on and off (llm_jax/eval/tasks.py)
    extra, lines = task_eval.evaluate(engine, tok, sft.checked_tasks(config), config.sft.eval_problems,
                                      seed=config.seed, max_new_tokens=config.sft.max_new_tokens,
                                      tools=sft.tools_for(config), max_tool_calls=config.sft.max_tool_calls)
    extra = {f"eval/{k}": v for k, v in extra.items()}
    if extra:  # a mixture of JSONL files alone has no checked task
      writer.write(step, extra)
      _print("tool use, held-out accuracy: " + ", ".join(f"{k[5:]} {v:.2f}" for k, v in extra.items()))
  else:
    for temperature in (0.0, config.sample.temperature) if config.sample.prompts else ():
      outs = sample.generate(model, engine.params, tok, list(config.sample.prompts),
                             max_new_tokens=min(config.sample.max_new_tokens, seq_len // 2),
                             temperature=temperature, seed=config.seed, engine=engine)
      lines += [f"--- temperature {temperature} | prompt {p!r}\n{p}{o}" for p, o in zip(config.sample.prompts, outs)]
  if _is_main():
    with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in lines)
    for line in lines:
      _print(line)
  writer.close()
  evals = [m for m in metrics_lib.read(workdir) if "eval/bpb" in m]
  summary = {"step": step, "final_loss": last.get("loss"), "eval/bpb": evals[-1]["eval/bpb"] if evals else None,
             "eval/bpb@0": evals[0]["eval/bpb"] if evals and evals[0]["step"] == 0 else None,
             "order0_bpb": order0, **extra, "seconds": round(time.time() - t_start, 1)}
  _print("summary: " + json.dumps(summary))
  return summary


def evaluate_bpb(eval_step, params, batches: list[dict], mesh, rows: list[int] | None = None,
                 batch_size: int | None = None) -> dict:
  """eval/loss (nats per token) and eval/bpb over fixed held-out batches.

  `batches` hold this process's `rows` (`sharding.process_rows`) of `batch_size`-row global batches;
  by default they are whole global batches (one process).
  """
  sums = {"nats": 0.0, "bytes": 0.0, "tokens": 0.0}
  for batch in batches:
    n = batch["inputs"].shape[0]
    out = jax.device_get(eval_step(params, sharding.rows_to_global(
        batch, list(range(n)) if rows is None else rows, n if batch_size is None else batch_size, mesh)))
    sums = {k: sums[k] + float(out[k]) for k in sums}
  return {"eval/loss": sums["nats"] / max(sums["tokens"], 1.0),
          "eval/bpb": bpb.bits_per_byte(sums["nats"], sums["bytes"]), "eval/tokens": sums["tokens"]}


def grpo(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reasoning RL (stage grpo): its own loop of rollouts and updates (llm_jax/rl/grpo.py)."""
  from llm_jax.rl import grpo as grpo_lib  # pylint: disable=import-outside-toplevel
  return grpo_lib.run(config, workdir, sys.modules[__name__])  # this module's workdir helpers


def preference(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reward model (stage reward) or DPO (stage dpo) from preference pairs (llm_jax/rl/preference.py)."""
  from llm_jax.rl import preference as preference_lib  # pylint: disable=import-outside-toplevel
  return preference_lib.run(config, workdir, sys.modules[__name__])


def ppo(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """RLHF with PPO against a reward model (llm_jax/rl/ppo.py)."""
  from llm_jax.rl import ppo as ppo_lib  # pylint: disable=import-outside-toplevel
  return ppo_lib.run(config, workdir, sys.modules[__name__])


def write_report(workdir: str, summary: dict):
  """workdir/report.md and its plots (llm_jax/eval/report.py); a failure is a warning: the run has finished."""
  try:
    _print(f"report: {report.write(workdir, summary)}")
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not write the report of %s: %s: %s", workdir, type(e).__name__, e)


STAGES = {"pretrain": pretrain, "distill": pretrain, "sft": pretrain,  # the same loop with other data or loss
          "reward": preference, "dpo": preference, "ppo": ppo, "grpo": grpo}


def main(argv):
  del argv
  host.keep_freed_memory()  # before JAX starts its backend
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save/restore at INFO
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/tiny.py")
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  try:
    if config.stage not in STAGES:
      raise config_lib.ConfigError(f"config.stage={config.stage!r}: implemented stages are {sorted(STAGES)}")
    summary = STAGES[config.stage](config, workdir)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _is_main() and not summary.get("complete"):  # a finished workdir keeps the report of the run that finished it
    write_report(workdir, summary)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
