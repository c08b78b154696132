"""Shared config defaults and validation.

Every file in `configs/` starts from `base_config()` and changes what it needs:

    def get_config():
        config = base_config()
        config.model.d_model = 128
        return config

`base_config()` returns a *locked* `ml_collections.ConfigDict`, so a config file or a command-line override
that names a key which does not exist fails at once, naming the key. `validate(config)` checks values
(shapes that divide, positive step counts, known dtypes) and raises `ConfigError` naming the key and value.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import sys

import ml_collections
from absl import flags as absl_flags

from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import clean, sources, tasks
from llm_jax.model.config import ModelConfig

STAGES = ("pretrain", "distill", "sft", "reward", "dpo", "ppo", "grpo")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config value or key is wrong; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "pretrain"
  c.seed = 0
  # A workdir of an earlier run (its latest params) or a Hugging Face model directory (config.json +
  # safetensors) whose weights start this run; its tokenizer is used too. "" trains from scratch.
  c.init_from = ""

  # Data (llm_jax/data/sources.py `stream`): a comma-separated list of "stdlib" (= "docs,code": CPython's own
  # docs and sources), "docs", "code", "synthetic" (seeded arithmetic and spelling text), and paths to .txt /
  # .jsonl (field "text") / .parquet files or directories of them, e.g. the output of python -m llm_jax.data.prepare.
  c.data = ml_collections.ConfigDict()
  c.data.source = "stdlib"
  # Weights per source label ("docs", "code", "synthetic", a path's name, or a cleaned shard's "source" field),
  # "label:weight,...", sampled with grain's mixing; "" draws every document piece equally often.
  c.data.mixture = ""
  c.data.val_fraction = 0.05  # share of documents (by hash of their text) held out for evaluation
  c.data.chunk_chars = 2048  # long documents are cut at line breaks into pieces of at most this many chars
  c.data.seq_len = 256
  c.data.batch_size = 16  # global batch, in rows of seq_len tokens

  # Cleaning and deduplication (python -m llm_jax.data.prepare; llm_jax/data/clean.py and dedup.py document
  # each rule). A threshold of 0 turns its check off.
  c.clean = ml_collections.ConfigDict()
  c.clean.normalize = True  # NFC, no control characters, LF line ends, no trailing spaces or blank-line runs
  c.clean.text_rules = "gopher_quality,gopher_repetition,c4,fineweb"  # rules for prose, in order
  c.clean.code_rules = "code_quality"  # rules for code
  c.clean.code_sources = "code"  # source labels whose documents are code
  c.clean.trusted_sources = "synthetic"  # source labels only normalized and deduplicated (no quality rules)
  c.clean.max_doc_bytes = 10_000_000  # larger documents are skipped, not cleaned (counted, named in the report)
  c.clean.min_words = 50  # Gopher quality: words that are not only symbols ...
  c.clean.max_words = 100_000
  c.clean.min_mean_word_len = 3.0
  c.clean.max_mean_word_len = 10.0
  c.clean.max_symbol_word_ratio = 0.1  # "#" per word, and ellipses per word
  c.clean.max_bullet_lines = 0.9  # share of lines starting with a bullet
  c.clean.max_ellipsis_lines = 0.3  # share of lines ending in an ellipsis
  c.clean.min_alpha_words = 0.8  # share of words with a letter
  c.clean.min_stop_words = 2  # of the, be, to, of, and, that, have, with
  c.clean.dup_line_frac = 0.3  # Gopher repetition: duplicated lines / lines
  c.clean.dup_paragraph_frac = 0.3
  c.clean.dup_line_char_frac = 0.2  # characters in duplicated lines / characters
  c.clean.dup_paragraph_char_frac = 0.2
  c.clean.top_ngram_char_frac = (0.2, 0.18, 0.16)  # the commonest 2-, 3-, 4-gram's share of word characters
  c.clean.dup_ngram_char_frac = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # repeated 5..10-grams' share
  c.clean.c4_min_words_per_line = 3  # C4: shorter lines are removed
  c.clean.c4_terminal_punct = False  # remove lines not ending in terminal punctuation (FineWeb: off)
  c.clean.c4_javascript = True  # remove lines mentioning javascript
  c.clean.c4_policy = True  # remove cookie / privacy / terms-of-use lines
  c.clean.c4_lorem_ipsum = True  # drop documents with "lorem ipsum"
  c.clean.c4_curly_brace = True  # drop documents with "{" (prose only: code has its own rules)
  c.clean.fineweb_min_punct_lines = 0.12  # FineWeb: share of lines ending in terminal punctuation
  c.clean.fineweb_max_short_lines = 0.67  # share of lines of <= 30 characters
  c.clean.fineweb_max_newline_ratio = 0.3  # newlines per word
  c.clean.code_min_chars = 20  # code: size in characters
  c.clean.code_max_chars = 1_000_000
  c.clean.code_max_line_len = 1000
  c.clean.code_max_mean_line_len = 100.0
  c.clean.code_min_alnum = 0.25  # share of ASCII letters and digits
  c.clean.code_autogenerated = True  # drop files marked auto-generated / do not edit in their first 5 lines
  c.clean.exact_dedup = True  # drop repeats of a normalized text (first occurrence survives)
  c.clean.near_dedup = True  # MinHash + LSH near-duplicate clusters, one survivor each
  c.clean.minhash_ngram = 5  # word n-gram shingles
  c.clean.minhash_bands = 14  # 14 bands x 8 rows: candidates at Jaccard ~0.72 and up
  c.clean.minhash_rows = 8
  c.clean.minhash_threshold = 0.7  # candidates must agree on this share of signature values
  c.clean.seed = 0

  c.tokenizer = ml_collections.ConfigDict()
  # "bpe" or "unigram" (SentencePiece), or the baselines "byte" (276 ids whatever vocab_size is: the model's
  # extra rows stay unused) and "char" (bytes + the vocab_size - 276 commonest non-ASCII characters).
  c.tokenizer.model_type = "bpe"
  c.tokenizer.vocab_size = 4096
  c.tokenizer.train_chars = 3_000_000  # characters of training text sampled to train the tokenizer

  # Every ModelConfig field (llm_jax/model/config.py documents them); presets: llm_jax/model/presets.py.
  c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
  c.model.vocab_size = c.tokenizer.get_ref("vocab_size")
  c.model.max_seq_len = -1  # longest sequence the model supports; -1: data.seq_len (see model_config)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.lr = 3e-3
  c.train.warmup_steps = 50  # a run shorter than this warms up over all its steps
  c.train.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0  # global-norm clipping; 0 disables
  c.train.grad_accum = 1  # micro-batches per step (a lax.scan inside the step)
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.progress = True  # tqdm bar

  # Device mesh (llm_jax/sharding.py): batch rows over data x fsdp, parameters over fsdp (ZeRO-3 style),
  # heads / mlp / vocab over tensor, the layer stack over stage (pipeline parallelism, needs
  # model.scan_layers), every sequence's tokens over context. One axis may be -1: all devices not used by the
  # others.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.stage = 1
  c.mesh.fsdp = 1
  c.mesh.context = 1  # context parallelism: every sequence split along its length (K/V: model.context_impl)
  c.mesh.tensor = 1
  # Pipeline micro-batches per (grad-accumulation) micro-batch when mesh.stage > 1; the idle "bubble" is
  # (stage - 1) / (microbatches + stage - 1) of the step. -1: 2 x stage.
  c.mesh.microbatches = -1

  # Multi-host runs (jax.distributed). Empty / -1 values come from the environment variables
  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; with one process nothing is initialised.
  # auto=True calls jax.distributed.initialize() with no arguments (Cloud TPU, SLURM, Open MPI, k8s
  # detect everything themselves).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.auto = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1

  # Distillation (stage="distill"): the model above, the student, is trained on a teacher's logits with
  #   loss = alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) + (1 - alpha) * cross-entropy
  # per target token (llm_jax/training/distill.py). The student uses the teacher's tokenizer.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # workdir of a trained llm_jax run (config.json, tokenizer/, checkpoints/; latest step)
  c.distill.tau = 2.0  # temperature of both softmaxes in the KL; > 1 exposes the teacher's non-top tokens
  c.distill.alpha = 0.5  # weight of the KL to the teacher; 1 - alpha weights the data's next-token loss

  # Supervised fine-tuning (stage="sft", llm_jax/training/sft.py): conversations rendered by llm_jax/data/chat.py,
  # loss on the assistant's tokens only. Starts from config.init_from (a pretrained workdir), whose tokenizer
  # it takes.
  c.sft = ml_collections.ConfigDict()
  # Weighted mixture of synthetic tasks (llm_jax/data/tasks: identity, arithmetic, arithmetic_followup,
  # counting, spelling, repeat, ...) and JSONL conversation files (data/chat.py read_jsonl),
  # "name_or_path:weight,...". `repeat` (say a quoted text back) is there to teach copying: the tiny model
  # learns to copy the question's word into its tool code ~1.5x sooner with it (experiments/sft_tools.md).
  c.sft.mixture = "identity:1,arithmetic:4,arithmetic_followup:1,counting:3,spelling:1,repeat:3"
  c.sft.examples = 20000  # conversations drawn from the mixture (the pool training cycles through)
  c.sft.eval_examples = 256  # held-out conversations (tasks' validation split) for eval/loss
  c.sft.eval_problems = 100  # held-out problems per checked task, solved with tools on and off at the end
  c.sft.max_new_tokens = 64  # per answer in that evaluation
  c.sft.max_tool_calls = 4  # per assistant turn
  c.sft.tool_timeout = 5.0  # seconds per sandboxed Python run

  # LoRA (llm_jax/model/lora.py), stage sft: rank > 0 trains only low-rank adapters on `targets` (and, with
  # special_tokens, the embedding rows / head columns of the chat control tokens, which pretraining never
  # saw); checkpoints hold the adapters alone, merged into init_from's weights when loaded.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # 0: full fine-tuning
  c.lora.alpha = 16.0  # the update is alpha / rank * (a @ b)
  c.lora.targets = "q,k,v,o,gate,up,down"  # projection names (path suffixes), "head", "embed" (the table)
  c.lora.special_tokens = True
  # LoRA+ (Hayou et al. 2024): the b matrices learn at this multiple of train.lr (the paper suggests ~16;
  # a and b start unequal, b = 0, so equal rates move b too slowly). 1: plain LoRA.
  c.lora.b_lr_ratio = 1.0

  # Reasoning RL with verifiable rewards (stage="grpo", llm_jax/rl/grpo.py, which explains each switch):
  # GRPO by default; Dr.GRPO and DAPO are settings of these switches (grpo.VARIANTS). Starts from
  # config.init_from (a fine-tuned workdir); tool calls run with sft.tool_timeout and sft.max_tool_calls.
  c.grpo = ml_collections.ConfigDict()
  c.grpo.tasks = "arithmetic"  # "task:weight,..." of llm_jax/data/tasks with exact checkers (the rewards)
  c.grpo.prompts = 8  # problems per step
  c.grpo.group = 8  # answers sampled per problem (G)
  c.grpo.temperature = 1.0  # of rollouts and of the pass@k samples
  c.grpo.max_new_tokens = 48  # tokens the model writes per answer (tool outputs not counted)
  c.grpo.minibatches = 2  # optimizer steps per batch of rollouts; after the first, clipping acts
  c.grpo.std_normalize = True  # A = (r - mean) / std per group; False: r - mean (Dr.GRPO)
  c.grpo.loss_agg = "token"  # "token" | "sequence" (original GRPO) | "constant" (Dr.GRPO)
  c.grpo.clip_low = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]; DAPO's clip-higher raises clip_high
  c.grpo.clip_high = 0.2
  c.grpo.beta = 0.04  # weight of the k3 KL to the starting model; 0 allowed (KL is still logged)
  c.grpo.format_reward = 0.1  # added when the turn ends with <|assistant_end|> within max_new_tokens
  c.grpo.dynamic_sampling = False  # DAPO: train only on groups whose answers are not all right or all wrong
  c.grpo.dynamic_rounds = 3  # batches of prompts drawn at most per step to find grpo.prompts such groups
  c.grpo.overlong_buffer = 0  # DAPO: reward falls linearly to -1 over the last this many tokens; 0: off
  c.grpo.eval_problems = 100  # held-out problems per task at each evaluation
  c.grpo.eval_samples = 8  # answers per problem for pass@k (k = 1, 2, 4, ... <= this)

  # RLHF (llm_jax/rl/preference.py: stages "reward" and "dpo"; llm_jax/rl/ppo.py: stage "ppo"). All start from
  # config.init_from (a fine-tuned workdir). Preference pairs: "compare" (synthetic, labelled by a hidden gold
  # judge: llm_jax/data/tasks/compare.py) and/or .jsonl files of {prompt, chosen, rejected}, TRL's
  # conversational pairs or Anthropic-HH pairs (llm_jax/data/preferences.py), comma-separated.
  c.pref = ml_collections.ConfigDict()
  c.pref.data = "compare"
  c.pref.train_pairs = 4000  # pairs drawn for training (steps cycle through them; data.batch_size pairs a step)
  c.pref.eval_pairs = 200  # held-out pairs: reward-model / DPO implicit-reward accuracy and margin
  c.pref.eval_prompts = 100  # held-out prompts answered at each evaluation (gold reward, KL to init_from)
  c.pref.max_new_tokens = 24  # per answer, there and in PPO's rollouts
  c.pref.temperature = 1.0  # of those answers (and of PPO's rollouts)
  # Reward model (stage "reward"): the init_from trunk + a scalar head at the last token (model/heads.py);
  # Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2.
  c.reward = ml_collections.ConfigDict()
  c.reward.margin = 0.0
  c.reward.center_coef = 0.01  # keeps rewards near 0 (TRL's center_rewards_coefficient); 0 turns it off
  # DPO (stage "dpo"): -log sigmoid(beta x (chosen - rejected log-ratio to the init_from model)), with
  # cDPO's label smoothing (the share of pairs assumed flipped).
  c.dpo = ml_collections.ConfigDict()
  c.dpo.beta = 0.1
  c.dpo.label_smoothing = 0.0
  # PPO (stage "ppo"): one jitted step rolls out data.batch_size answers, scores them with the reward model,
  # and trains policy + value (llm_jax/rl/ppo.py explains each term).
  c.ppo = ml_collections.ConfigDict()
  c.ppo.reward_model = ""  # workdir of a stage "reward" run; the value model starts from it
  c.ppo.prompts = "compare"  # "task:weight,..." of llm_jax/data/tasks whose prompts are answered
  c.ppo.epochs = 2  # passes over each batch of rollouts
  c.ppo.minibatches = 2  # optimizer steps per pass
  c.ppo.clip = 0.2  # policy ratio clipped to [1 - clip, 1 + clip]
  c.ppo.vf_clip = 0.2  # value prediction clipped to old value +- vf_clip
  c.ppo.vf_coef = 0.5
  c.ppo.gamma = 1.0
  c.ppo.lam = 0.95  # GAE lambda
  c.ppo.kl_coef = 0.05  # per-token KL penalty to the init_from model in the reward
  c.ppo.kl_estimator = "k1"  # "k1" (logp - logp_ref) or "k3"
  c.ppo.kl_target = 0.0  # > 0: adaptive KL controller (Ziegler et al.) steering KL per answer to this
  c.ppo.kl_horizon = 10000
  c.ppo.missing_eos_penalty = 1.0  # subtracted from the reward of an answer cut off at max_new_tokens
  c.ppo.whiten_advantages = True

  c.sample = ml_collections.ConfigDict()
  c.sample.prompts = ("def ", "import os\n", "The ", "class ")
  c.sample.max_new_tokens = 64
  c.sample.temperature = 0.8

  c.lock()
  return c


def _check(ok: bool, key: str, value, why: str):
  if not ok:
    raise ConfigError(f"config.{key}={value!r}: {why}")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks values; raises ConfigError naming the first bad key."""
  _check(c.stage in STAGES, "stage", c.stage, f"must be one of {STAGES}")
  m, t, d = c.model, c.train, c.data
  for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size"):
    _check(m[key] > 0, f"model.{key}", m[key], "must be positive")
  try:
    model_config(c)
  except ValueError as e:  # ModelConfig checks its own switches and names the field
    raise ConfigError(f"config.{e}") from None
  _check(m.dtype in DTYPES, "model.dtype", m.dtype, f"must be one of {DTYPES}")
  _check(m.param_dtype in DTYPES, "model.param_dtype", m.param_dtype, f"must be one of {DTYPES}")
  _check(m.max_seq_len == -1 or m.max_seq_len >= d.seq_len, "model.max_seq_len", m.max_seq_len,
         f"must be -1 or >= data.seq_len={d.seq_len}")
  _check(m.vocab_size == c.tokenizer.vocab_size, "model.vocab_size", m.vocab_size,
         f"must equal tokenizer.vocab_size={c.tokenizer.vocab_size}")
  _check(c.tokenizer.model_type in tokenizer_lib.MODEL_TYPES, "tokenizer.model_type", c.tokenizer.model_type,
         f"must be one of {tokenizer_lib.MODEL_TYPES}")
  if c.tokenizer.model_type in ("byte", "char"):
    _check(c.tokenizer.vocab_size >= 276, "tokenizer.vocab_size", c.tokenizer.vocab_size,
           "must be >= 276 for byte/char tokenizers (20 special tokens + 256 bytes)")
  else:
    _check(c.tokenizer.vocab_size >= 300, "tokenizer.vocab_size", c.tokenizer.vocab_size,
           "must be >= 300 (256 byte-fallback pieces + special tokens + some merges)")
  _check(d.seq_len > 0, "data.seq_len", d.seq_len, "must be positive")
  _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
  _check(d.chunk_chars > 0, "data.chunk_chars", d.chunk_chars, "must be positive")
  _check(not c.init_from or os.path.isdir(c.init_from), "init_from", c.init_from, "is not a directory")
  entries = [e.strip() for e in d.source.split(",") if e.strip()]
  _check(bool(entries), "data.source", d.source, "names no source")
  for entry in entries:
    _check(entry in sources.BUILTIN or os.path.exists(entry), "data.source", d.source,
           f"{entry!r} is neither one of {sources.BUILTIN} nor an existing path")
  try:
    weights = tasks.parse_weights(d.mixture)
  except ValueError as e:
    raise ConfigError(f"config.data.mixture={d.mixture!r}: {e}") from None
  _check(not d.mixture.strip() or bool(weights), "data.mixture", d.mixture, "names no source")
  _validate_clean(c.clean)
  _check(c.distill.tau > 0, "distill.tau", c.distill.tau, "must be positive")
  _check(0 <= c.distill.alpha <= 1, "distill.alpha", c.distill.alpha, "must be in [0, 1]")
  if c.stage == "distill":
    teacher = c.distill.teacher
    _check(bool(teacher), "distill.teacher", teacher, "stage 'distill' needs the workdir of a trained llm_jax run")
    _check(os.path.isfile(os.path.join(teacher, "config.json")) and os.path.isdir(os.path.join(teacher, "checkpoints")),
           "distill.teacher", teacher, "is not a trained llm_jax workdir (needs config.json and checkpoints/)")
  if c.stage == "sft":
    _check(bool(c.init_from), "init_from", c.init_from, "stage 'sft' starts from a pretrained run: set "
           "--config.init_from=<workdir>")
    try:
      weights = tasks.parse_weights(c.sft.mixture)
    except ValueError as e:
      raise ConfigError(f"config.sft.mixture={c.sft.mixture!r}: {e}") from None
    _check(bool(weights), "sft.mixture", c.sft.mixture, "names no task or file")
    for name in weights:
      _check(name in tasks.TASKS or os.path.isfile(name), "sft.mixture", c.sft.mixture,
             f"{name!r} is neither a task ({', '.join(sorted(tasks.TASKS))}) nor an existing .jsonl file")
    for key in ("examples", "eval_examples", "eval_problems", "max_new_tokens", "max_tool_calls"):
      _check(c.sft[key] > 0, f"sft.{key}", c.sft[key], "must be positive")
    _check(c.sft.tool_timeout > 0, "sft.tool_timeout", c.sft.tool_timeout, "must be positive")
  if c.stage == "grpo":
    _validate_grpo(c)
  _check(c.lora.rank >= 0, "lora.rank", c.lora.rank, "must be >= 0 (0: full fine-tuning)")
  _check(c.lora.rank == 0 or c.stage == "sft", "lora.rank", c.lora.rank, "LoRA is implemented for stage 'sft'")
  _check(c.lora.alpha > 0, "lora.alpha", c.lora.alpha, "must be positive")
  _check(c.lora.b_lr_ratio > 0, "lora.b_lr_ratio", c.lora.b_lr_ratio, "must be positive (1: plain LoRA)")
  _check(t.steps > 0, "train.steps", t.steps, "must be positive")
  _check(t.lr > 0, "train.lr", t.lr, "must be positive")
  _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
  _check(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
  _check(d.batch_size % t.grad_accum == 0, "data.batch_size", d.batch_size,
         f"must be divisible by train.grad_accum={t.grad_accum}")
  for key in ("log_every", "eval_every", "checkpoint_every", "eval_batches", "keep_checkpoints"):
    _check(t[key] > 0, f"train.{key}", t[key], "must be positive")
  for key in ("data", "stage", "fsdp", "context", "tensor"):
    _check(c.mesh[key] == -1 or c.mesh[key] >= 1, f"mesh.{key}", c.mesh[key], "must be -1 or >= 1")
  _check(c.mesh.context == 1 or c.mesh.stage == 1, "mesh.context", c.mesh.context,
         "context parallelism does not combine with pipeline stages (mesh.stage > 1) yet")
  _check(c.mesh.microbatches == -1 or c.mesh.microbatches >= 1, "mesh.microbatches", c.mesh.microbatches,
         "must be -1 or >= 1")
  return c


def _validate_rlhf(c):
  p = c.pref
  _check(bool(c.init_from), "init_from", c.init_from, f"stage {c.stage!r} starts from a fine-tuned run: set "
         "--config.init_from=<workdir>")
  for entry in filter(None, (e.strip() for e in p.data.split(","))):
    _check(entry == "compare" or os.path.isfile(entry), "pref.data", p.data,
           f"{entry!r} is neither 'compare' nor a .jsonl file")
  for key in ("train_pairs", "eval_pairs", "eval_prompts", "max_new_tokens"):
    _check(p[key] >= 1, f"pref.{key}", p[key], "must be >= 1")
  _check(p.temperature >= 0, "pref.temperature", p.temperature, "must be >= 0")
  _check(c.reward.margin >= 0, "reward.margin", c.reward.margin, "must be >= 0")
  _check(c.reward.center_coef >= 0, "reward.center_coef", c.reward.center_coef, "must be >= 0")
  _check(c.dpo.beta > 0, "dpo.beta", c.dpo.beta, "must be positive")
  _check(0 <= c.dpo.label_smoothing < 0.5, "dpo.label_smoothing", c.dpo.label_smoothing, "must be in [0, 0.5)")
  if c.stage != "ppo":
    return
  o = c.ppo
  _check(os.path.isdir(os.path.join(o.reward_model, "checkpoints")), "ppo.reward_model", o.reward_model,
         "must be the workdir of a stage 'reward' run")
  try:
    weights = tasks.parse_weights(o.prompts)
  except ValueError as e:
    raise ConfigError(f"config.ppo.prompts={o.prompts!r}: {e}") from None
  _check(bool(weights) and all(k in tasks.TASKS for k in weights), "ppo.prompts", o.prompts,
         f"must name tasks of {sorted(tasks.TASKS)}")
  _check(p.temperature > 0, "pref.temperature", p.temperature, "must be positive for PPO (rollouts are sampled)")
  for key in ("epochs", "minibatches"):
    _check(o[key] >= 1, f"ppo.{key}", o[key], "must be >= 1")
  _check(c.data.batch_size % (o.minibatches * c.train.grad_accum) == 0, "data.batch_size", c.data.batch_size,
         f"must split into ppo.minibatches={o.minibatches} x train.grad_accum={c.train.grad_accum}")
  for key in ("clip", "vf_clip", "vf_coef", "kl_coef", "kl_target", "missing_eos_penalty"):
    _check(o[key] >= 0, f"ppo.{key}", o[key], "must be >= 0")
  _check(0 <= o.gamma <= 1, "ppo.gamma", o.gamma, "must be in [0, 1]")
  _check(0 <= o.lam <= 1, "ppo.lam", o.lam, "must be in [0, 1]")
  _check(o.kl_estimator in ("k1", "k3"), "ppo.kl_estimator", o.kl_estimator, "must be 'k1' or 'k3'")
  _check(o.kl_horizon >= 1, "ppo.kl_horizon", o.kl_horizon, "must be >= 1")


def _validate_grpo(c):
  g = c.grpo
  _check(bool(c.init_from), "init_from", c.init_from, "stage 'grpo' starts from a fine-tuned run: set "
         "--config.init_from=<workdir>")
  try:
    weights = tasks.parse_weights(g.tasks)
  except ValueError as e:
    raise ConfigError(f"config.grpo.tasks={g.tasks!r}: {e}") from None
  _check(bool(weights), "grpo.tasks", g.tasks, "names no task")
  for name in weights:
    _check(name in tasks.CHECKED, "grpo.tasks", g.tasks,
           f"{name!r} is not a task with an exact checker ({', '.join(tasks.CHECKED)})")
  for key in ("prompts", "eval_problems", "max_new_tokens", "minibatches", "dynamic_rounds"):
    _check(g[key] >= 1, f"grpo.{key}", g[key], "must be >= 1")
  _check(g.group >= 2, "grpo.group", g.group, "must be >= 2 (advantages compare answers within a group)")
  _check(g.eval_samples >= 1, "grpo.eval_samples", g.eval_samples, "must be >= 1")
  _check(g.temperature > 0, "grpo.temperature", g.temperature, "must be positive (rollouts are sampled)")
  _check(g.loss_agg in ("token", "sequence", "constant"), "grpo.loss_agg", g.loss_agg,
         "must be 'token', 'sequence' or 'constant'")
  _check(0 <= g.clip_low < 1, "grpo.clip_low", g.clip_low, "must be in [0, 1)")
  _check(g.clip_high >= 0, "grpo.clip_high", g.clip_high, "must be >= 0")
  _check(g.beta >= 0, "grpo.beta", g.beta, "must be >= 0")
  _check(0 <= g.overlong_buffer < g.max_new_tokens, "grpo.overlong_buffer", g.overlong_buffer,
         f"must be in [0, grpo.max_new_tokens={g.max_new_tokens})")


def _validate_clean(cl):
  try:
    clean.rule_names(cl.text_rules), clean.rule_names(cl.code_rules)
  except ValueError as e:
    raise ConfigError(f"config.clean.text_rules / code_rules: {e}") from None
  for key in ("min_mean_word_len", "max_mean_word_len", "max_symbol_word_ratio", "min_stop_words",
              "c4_min_words_per_line", "min_words", "max_words", "max_doc_bytes", "code_min_chars", "code_max_chars",
              "code_max_line_len", "code_max_mean_line_len"):
    _check(cl[key] >= 0, f"clean.{key}", cl[key], "must be >= 0 (0 turns the check off)")
  for key in ("max_bullet_lines", "max_ellipsis_lines", "min_alpha_words", "dup_line_frac", "dup_paragraph_frac",
              "dup_line_char_frac", "dup_paragraph_char_frac", "fineweb_min_punct_lines", "fineweb_max_short_lines",
              "code_min_alnum", "minhash_threshold"):
    _check(0 <= cl[key] <= 1, f"clean.{key}", cl[key], "must be a share in [0, 1]")
  _check(len(cl.top_ngram_char_frac) == 3, "clean.top_ngram_char_frac", cl.top_ngram_char_frac,
         "needs 3 values (n = 2, 3, 4)")
  _check(len(cl.dup_ngram_char_frac) == 6, "clean.dup_ngram_char_frac", cl.dup_ngram_char_frac,
         "needs 6 values (n = 5..10)")
  for key in ("minhash_ngram", "minhash_bands", "minhash_rows"):
    _check(cl[key] >= 1, f"clean.{key}", cl[key], "must be positive")


def model_config(c) -> ModelConfig:
  """The ModelConfig of a full config (a ConfigDict or the dict of a saved config.json)."""
  fields = dict(c["model"])
  if fields.get("max_seq_len", -1) == -1:
    fields["max_seq_len"] = c["data"]["seq_len"]
  return ModelConfig.from_config(fields)


def load_file(path: str) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a config file path (what --config does, for Python callers and tests)."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_llm_jax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def unknown_key_message(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """None if `dotted` (e.g. 'train.steps') names a config key, else a message naming it and near misses."""
  node, seen = config, []
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, options, n=3)
      prefix = ".".join(seen)
      hint = f"; did you mean {', '.join(repr('.'.join(seen + [x])) for x in close)}?" if close else ""
      where = f"section {prefix!r} has keys {sorted(options)}" if prefix else f"top-level keys are {sorted(options)}"
      return f"unknown config key {dotted!r}{hint} ({where})"
    node, seen = node[part], seen + [part]
  return None


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys ({"train.steps": 10, "ppo.reward_model": ...}) of a config, as --config.KEY=VALUE flags do,
  for Python callers (experiments, notebooks); a misspelt key fails naming it and its near misses."""
  for key, value in overrides.items():
    message = unknown_key_message(config, key)
    if message:
      raise ConfigError(message)
    *sections, field = key.split(".")
    node = config
    for part in sections:
      node = node[part]
    node[field] = value
  return config


def to_json(c: ml_collections.ConfigDict) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=list)


def diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two config dicts (tuples and lists compare equal)."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += diff(a, b, f"{prefix}{key}.")
    elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
      out.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
  return out


def explain_flag_error(argv: list[str], error: Exception) -> str:
  """Turns config_flags' KeyError/AttributeError tracebacks into one line naming the bad key."""
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  if path is None:
    return str(error)
  try:
    base = load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    return f"{path}: {type(e).__name__}: {e}"
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      message = unknown_key_message(base, arg[len("--config."):].split("=", 1)[0])
      if message:
        return message
  return str(error)


def parse_flags(argv: list[str]):
  """absl flags_parser for the CLIs (`app.run(main, flags_parser=parse_flags)`): a bad --config.key exits 2
  with one line naming it and its near misses, instead of config_flags' traceback."""
  try:
    return absl_flags.FLAGS(argv)
  except (KeyError, AttributeError, TypeError, ValueError, absl_flags.Error) as e:
    print(f"error: {explain_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)
