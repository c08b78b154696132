"""Hugging Face checkpoints <-> llm_jax: Llama and GPT-2 safetensors, converted with exact numerics.

    python -m llm_jax.convert from-hf --src HF_DIR --workdir runs/llama   # -> config.json, checkpoints/0, tokenizer/
    python -m llm_jax.convert to-hf --workdir runs/llama --out HF_DIR     # -> config.json, model.safetensors
    python -m llm_jax.generate --workdir runs/llama --prompt "def "       # a converted workdir is a normal one

    from llm_jax import convert
    cfg, params = convert.from_hf("path/to/hf_model")   # ModelConfig, numpy params (float32 unless dtype=...)
    convert.to_hf(cfg, params, "out/")                  # transformers.AutoModelForCausalLM.from_pretrained("out/")

Training starts from Hugging Face weights with `--config.init_from=HF_DIR` (train.init_params calls from_hf).

from_hf reads config.json and model.safetensors, or model.safetensors.index.json and its shards, with the
`safetensors` package (numpy; no torch). Supported: LlamaForCausalLM (rope theta; rope scaling of type
linear, yarn or llama3, in both config forms found in the wild: `rope_theta` + `rope_scaling` as published
Llama 3.1 files have it, and transformers 5's `rope_parameters`; our "ntk" scaling is written as the larger
theta it amounts to) and GPT2LMHeadModel. Its params are exactly the tree that
`Transformer(cfg).init` makes with scan_layers=True (layers stacked on a leading axis under
`layers/block_0`), as numpy arrays cast to `dtype` (float32, the default param_dtype; None keeps the file's
dtype, e.g. bfloat16). Every tensor of the file must be used, so an unknown variant fails instead of
converting half-way.

Layouts (ours <- theirs). Our RoPE rotates (i, i + H/2) pairs, the Hugging Face layout, so Llama q/k need
no permutation, only transposes and reshapes: torch Linear stores [out, in] and we store [in, ...], e.g.
q kernel [D, N, H] <- q_proj.weight[N*H, D].T; o kernel [N, H, D] <- o_proj.weight[D, N*H].T. GPT-2's
Conv1D already stores [in, out]; its fused c_attn [D, 3D] splits into q, k, v.

to_hf writes config.json in the form the installed transformers' save_pretrained writes (`rope_parameters`
from 5.0 on, `rope_theta` + `rope_scaling` before) and one model.safetensors in the params' dtype; params of
scan_layers=True or False trees are accepted. Given a tokenizer, its files and bos/eos/pad ids go along.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

import flax.linen as nn
import jax
import ml_dtypes  # noqa: F401  # registers bfloat16 with numpy, so safetensors can read and write bf16 tensors
import numpy as np
import safetensors
import safetensors.numpy

import llm_jax
from llm_jax import config as config_lib
from llm_jax import tokenizer as tokenizer_lib
from llm_jax.model import ModelConfig, Transformer
from llm_jax.model.layers import rope_base, yarn_mscale
from llm_jax.training import checkpoint

ARCHITECTURES = ("LlamaForCausalLM", "GPT2LMHeadModel")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
# Buffers some checkpoints carry that are not weights (rotary tables, GPT-2's causal mask).
_IGNORED = re.compile(r"(.*rotary_emb\.inv_freq|(transformer\.)?h\.\d+\.attn\.(masked_)?bias)$")


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One of our parameters and the safetensors entry it comes from."""
  ours: str  # path in our tree, e.g. "attn/q/kernel" (relative to a block for per-layer tensors)
  hf: str  # safetensors key; "{i}" is the layer index
  hf_shape: tuple[int, ...]
  transpose: bool = False  # torch Linear weights are [out, in]; our kernels are [in, ...]
  part: int | None = None  # GPT-2's fused c_attn: this tensor is piece `part` of `parts` along the last axis
  parts: int = 1


def _llama_layout(c: ModelConfig) -> tuple[list[_Tensor], list[_Tensor]]:
  d, n, k, h, f, v = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size
  p = "model.layers.{i}."
  layer = [_Tensor("attn/q/kernel", p + "self_attn.q_proj.weight", (n * h, d), True),
           _Tensor("attn/k/kernel", p + "self_attn.k_proj.weight", (k * h, d), True),
           _Tensor("attn/v/kernel", p + "self_attn.v_proj.weight", (k * h, d), True),
           _Tensor("attn/o/kernel", p + "self_attn.o_proj.weight", (d, n * h), True),
           _Tensor("mlp/gate/kernel", p + "mlp.gate_proj.weight", (f, d), True),
           _Tensor("mlp/up/kernel", p + "mlp.up_proj.weight", (f, d), True),
           _Tensor("mlp/down/kernel", p + "mlp.down_proj.weight", (d, f), True),
           _Tensor("attn_norm/scale", p + "input_layernorm.weight", (d,)),
           _Tensor("mlp_norm/scale", p + "post_attention_layernorm.weight", (d,))]
  if c.attn_bias:
    layer += [_Tensor(f"attn/{name}/bias", p + f"self_attn.{name}_proj.bias", shape)
              for name, shape in (("q", (n * h,)), ("k", (k * h,)), ("v", (k * h,)), ("o", (d,)))]
  if c.mlp_bias:
    layer += [_Tensor(f"mlp/{name}/bias", p + f"mlp.{name}_proj.bias", shape)
              for name, shape in (("gate", (f,)), ("up", (f,)), ("down", (d,)))]
  top = [_Tensor("embed/embedding", "model.embed_tokens.weight", (v, d)),
         _Tensor("final_norm/scale", "model.norm.weight", (d,))]
  if not c.tie_embeddings:
    top.append(_Tensor("head/kernel", "lm_head.weight", (v, d), True))
  return top, layer


def _gpt2_layout(c: ModelConfig) -> tuple[list[_Tensor], list[_Tensor]]:
  d, f, v = c.d_model, c.d_ff, c.vocab_size
  p = "transformer.h.{i}."
  layer = [_Tensor(f"attn/{name}/{kind}", p + f"attn.c_attn.{hf_kind}", (d, d) if kind == "kernel" else (d,),
                   part=j, parts=3)
           for j, name in enumerate("qkv") for kind, hf_kind in (("kernel", "weight"), ("bias", "bias"))]
  for ours, theirs, shape in (("attn/o", "attn.c_proj", (d, d)), ("mlp/up", "mlp.c_fc", (d, f)),
                              ("mlp/down", "mlp.c_proj", (f, d))):
    layer += [_Tensor(ours + "/kernel", p + theirs + ".weight", shape),
              _Tensor(ours + "/bias", p + theirs + ".bias", shape[-1:])]
  for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
    layer += [_Tensor(ours + "/scale", p + theirs + ".weight", (d,)),
              _Tensor(ours + "/bias", p + theirs + ".bias", (d,))]
  top = [_Tensor("embed/embedding", "transformer.wte.weight", (v, d)),
         _Tensor("pos_embed/embedding", "transformer.wpe.weight", (c.max_seq_len, d)),
         _Tensor("final_norm/scale", "transformer.ln_f.weight", (d,)),
         _Tensor("final_norm/bias", "transformer.ln_f.bias", (d,))]
  if not c.tie_embeddings:
    top.append(_Tensor("head/kernel", "lm_head.weight", (v, d), True))
  return top, layer


_LAYOUTS = {"LlamaForCausalLM": _llama_layout, "GPT2LMHeadModel": _gpt2_layout}


# --- config.json <-> ModelConfig -------------------------------------------------------------------------------

def _architecture(hf: dict, path: str) -> str:
  names = hf.get("architectures") or [_MODEL_TYPES.get(hf.get("model_type"), hf.get("model_type"))]
  for name in names:
    if name in ARCHITECTURES:
      return name
  found = names[0] if names[0] else "<none: config.json names no architectures or model_type>"
  raise ValueError(f"{path}: architecture {found!r} is not supported; supported: {list(ARCHITECTURES)}")


def _llama_config(hf: dict, path: str) -> ModelConfig:
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: hidden_act={hf['hidden_act']!r}; Llama conversion supports 'silu' (SwiGLU)")
  # transformers 5 writes rope_parameters (theta inside); older files: rope_theta + rope_scaling ("type" before 4.45).
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  supported = ("default", "linear", "yarn", "llama3")
  if rope_type not in supported:
    raise ValueError(f"{path}: rope type {rope_type!r} is not supported; supported: {', '.join(supported)}")
  scaling = {}
  if rope_type != "default":
    scaling = dict(rope_scaling=rope_type, rope_scaling_factor=float(rope["factor"]))
  if rope_type in ("yarn", "llama3"):
    scaling["rope_original_max_len"] = int(rope.get("original_max_position_embeddings")
                                           or hf.get("max_position_embeddings", 2048))
  if rope_type == "llama3":
    scaling.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                   rope_high_freq_factor=float(rope["high_freq_factor"]))
  if rope_type == "yarn":
    if rope.get("truncate") is False:
      raise ValueError(f"{path}: YaRN with truncate=false is not supported")
    attention_factor = rope.get("attention_factor")
    if attention_factor is None and rope.get("mscale") and rope.get("mscale_all_dim"):
      factor = scaling["rope_scaling_factor"]
      attention_factor = yarn_mscale(factor, rope["mscale"]) / yarn_mscale(factor, rope["mscale_all_dim"])
    scaling.update(rope_yarn_beta_fast=float(rope.get("beta_fast") or 32), rope_yarn_beta_slow=float(
        rope.get("beta_slow") or 1), rope_attention_factor=float(attention_factor or 0.0))
  n_heads = hf["num_attention_heads"]
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048), positions="rope",
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
      norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", attn_bias=bool(hf.get("attention_bias", False)),
      mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **scaling)


def _gpt2_config(hf: dict, path: str) -> ModelConfig:
  act = hf.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise ValueError(f"{path}: activation_function={act!r}; our GELU is the tanh approximation ('gelu_new')")
  if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
    raise ValueError(f"{path}: only 1/sqrt(head_dim) attention scaling is supported (scale_attn_weights=true, "
                     "scale_attn_by_inverse_layer_idx=false)")
  d, n = hf["n_embd"], hf["n_head"]
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=n, n_kv_heads=n, head_dim=d // n,
      d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"], positions="learned", norm="layernorm",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", attn_bias=True, mlp_bias=True,
      tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _export_architecture(c: ModelConfig) -> str:
  """Which Hugging Face class can hold this model; raises naming the switches that fit neither."""
  if set(c.layer_pattern) != {"A"} or c.norm_position != "pre":
    raise ValueError(f"to_hf: layer_pattern={c.layer_pattern!r}, norm_position={c.norm_position!r}; Hugging Face "
                     "export needs attention-only ('A') pre-norm models")
  if (c.positions, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu"):
    return "LlamaForCausalLM"
  if ((c.positions, c.norm, c.mlp) == ("learned", "layernorm", "gelu") and c.attn_bias and c.mlp_bias
      and c.n_kv_heads == c.n_heads and c.n_heads * c.head_dim == c.d_model):
    return "GPT2LMHeadModel"
  raise ValueError(
      f"to_hf: no Hugging Face architecture for positions={c.positions!r}, norm={c.norm!r}, mlp={c.mlp!r}, "
      f"attn_bias={c.attn_bias}, mlp_bias={c.mlp_bias}, n_kv_heads={c.n_kv_heads}; Llama needs rope + rmsnorm + "
      "swiglu, GPT-2 needs learned + layernorm + gelu with both biases, n_kv_heads == n_heads and "
      "n_heads * head_dim == d_model")


def _transformers_version() -> str | None:
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return transformers.__version__


def _hf_config(c: ModelConfig, arch: str, dtype: str, tokenizer) -> dict:
  """config.json as the installed transformers' save_pretrained writes it (the 5.x form if none is installed)."""
  version = _transformers_version()
  v5 = version is None or int(version.split(".")[0]) >= 5
  ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_id", None) for name in ("bos", "eos", "pad")}
  common = {"architectures": [arch], "dtype" if v5 else "torch_dtype": dtype, "initializer_range": 0.02,
            "tie_word_embeddings": c.tie_embeddings, "use_cache": True, "vocab_size": c.vocab_size, **ids,
            **({"transformers_version": version} if version else {})}
  if arch == "GPT2LMHeadModel":
    return {**common, "model_type": "gpt2", "activation_function": "gelu_new", "add_cross_attention": False,
            "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "layer_norm_epsilon": c.norm_eps,
            "n_embd": c.d_model, "n_head": c.n_heads, "n_inner": c.d_ff, "n_layer": c.n_layers,
            "n_positions": c.max_seq_len, "reorder_and_upcast_attn": False, "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True, "summary_activation": None, "summary_first_dropout": 0.1,
            "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True}
  rope, theta = {"rope_type": "default"}, rope_base(c)  # static NTK-aware scaling is a larger theta
  if c.rope_scaling not in ("none", "ntk"):
    rope = {"rope_type": c.rope_scaling, "factor": c.rope_scaling_factor}
  if c.rope_scaling in ("yarn", "llama3"):
    rope["original_max_position_embeddings"] = c.rope_original_max_len
  if c.rope_scaling == "llama3":
    rope.update(low_freq_factor=c.rope_low_freq_factor, high_freq_factor=c.rope_high_freq_factor)
  if c.rope_scaling == "yarn":
    rope.update(beta_fast=c.rope_yarn_beta_fast, beta_slow=c.rope_yarn_beta_slow,
                **({"attention_factor": c.rope_attention_factor} if c.rope_attention_factor else {}))
  if v5:
    rope_fields = {"rope_parameters": {**rope, "rope_theta": theta}}
  else:
    rope_fields = {"rope_theta": theta, "rope_scaling": None if rope["rope_type"] == "default" else rope}
  return {**common, "model_type": "llama", "attention_bias": c.attn_bias, "attention_dropout": 0.0,
          "head_dim": c.head_dim, "hidden_act": "silu", "hidden_size": c.d_model, "intermediate_size": c.d_ff,
          "max_position_embeddings": c.max_seq_len, "mlp_bias": c.mlp_bias, "num_attention_heads": c.n_heads,
          "num_hidden_layers": c.n_layers, "num_key_value_heads": c.n_kv_heads, "pretraining_tp": 1,
          "rms_norm_eps": c.norm_eps, **rope_fields}


# --- weights -------------------------------------------------------------------------------------------------

def _safetensors_files(path: str) -> list[str]:
  single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(single):
    return [single]
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
    if missing:
      raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
    return [os.path.join(path, s) for s in shards]
  raise FileNotFoundError(f"{path} holds neither model.safetensors nor model.safetensors.index.json (PyTorch .bin "
                          "files are not read: resave with transformers' save_pretrained)")


def _abstract_params(c: ModelConfig) -> dict[str, tuple[int, ...]]:
  """path -> shape of every parameter Transformer(c).init creates (abstractly, so any size is cheap)."""
  tree = nn.unbox(jax.eval_shape(Transformer(c).init, jax.random.PRNGKey(0), np.zeros((1, 1), np.int32)))
  return {path: x.shape for path, x in _flatten(tree["params"]).items()}


def _flatten(tree, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def read_config(path: str) -> tuple[ModelConfig, str]:
  """(ModelConfig, architecture) from a Hugging Face model directory's config.json, without reading weights."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {path!r} a Hugging Face model directory?")
  with open(config_path, encoding="utf-8") as f:
    hf = json.load(f)
  arch = _architecture(hf, config_path)
  return (_llama_config if arch == "LlamaForCausalLM" else _gpt2_config)(hf, config_path), arch


def from_hf(path: str, dtype: str | None = "float32") -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of a Hugging Face model directory; params as numpy arrays of `dtype` (None: the file's)."""
  cfg, arch = read_config(path)

  handles, where = [], {}
  for file in _safetensors_files(path):
    handles.append(safetensors.safe_open(file, framework="numpy"))
    for key in handles[-1].keys():  # a safe_open handle is not iterable
      # Published GPT-2 files name tensors without the "transformer." prefix that save_pretrained writes.
      bare = arch == "GPT2LMHeadModel" and not key.startswith(("transformer.", "lm_head"))
      where["transformer." + key if bare else key] = (handles[-1], key)
  used = set()

  def tensor(t: _Tensor, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in where:
      raise KeyError(f"{path}: tensor {name!r} is missing from the safetensors files (needed for {t.ours})")
    used.add(name)
    handle, key = where[name]
    w = handle.get_tensor(key)
    whole = t.hf_shape[:-1] + (t.hf_shape[-1] * t.parts,)
    if w.shape != whole:
      raise ValueError(f"{path}: tensor {name!r} has shape {w.shape}; config.json implies {whole}")
    if t.part is not None:
      w = np.split(w, t.parts, axis=-1)[t.part]
    w = (w.T if t.transpose else w).reshape(shape)
    return np.ascontiguousarray(w if dtype is None else w.astype(dtype))

  shapes = _abstract_params(cfg)
  top, layer = _LAYOUTS[arch](cfg)
  flat = {t.ours: tensor(t, t.hf, shapes[t.ours]) for t in top}
  for t in layer:
    ours = "layers/block_0/" + t.ours
    flat[ours] = np.stack([tensor(t, t.hf.format(i=i), shapes[ours][1:]) for i in range(cfg.n_layers)])
  unused = sorted(n for n in where if n not in used and not _IGNORED.match(n)
                  and not (cfg.tie_embeddings and n == "lm_head.weight"))
  if unused:
    raise ValueError(f"{path}: tensors this {arch} converter does not know (an unsupported variant?): {unused[:8]}"
                     + (f" and {len(unused) - 8} more" if len(unused) > 8 else ""))
  assert set(flat) == set(shapes), sorted(set(flat) ^ set(shapes))  # the layouts above cover the model exactly
  return cfg, _unflatten(flat)


def to_hf(model_config: ModelConfig, params, out_dir: str, tokenizer=None) -> str:
  """Writes out_dir/config.json + model.safetensors (+ the tokenizer's files, if given); returns out_dir."""
  c = model_config
  arch = _export_architecture(c)
  flat = {k: np.asarray(v) for k, v in _flatten(jax.device_get(params)).items()}
  scanned = any(k.startswith("layers/") for k in flat)

  def ours(path: str, i: int | None = None) -> np.ndarray:
    rep = None  # index on the stacked layer axis of a scan_layers tree
    if i is not None:
      rep, j = divmod(i, len(c.layer_pattern))
      path, rep = (f"layers/block_{j}/{path}", rep) if scanned else (f"layer_{i}/{path}", None)
    if path not in flat:
      raise KeyError(f"to_hf: params have no {path!r}; do they belong to this model config "
                     f"(scan_layers, layer_pattern, biases)?")
    return flat[path] if rep is None else flat[path][rep]

  def theirs(t: _Tensor, x: np.ndarray) -> np.ndarray:
    return x.reshape(t.hf_shape[::-1]).T if t.transpose else x.reshape(t.hf_shape)

  top, layer = _LAYOUTS[arch](c)
  tensors, fused = {}, {}
  for t, name, x in ([(t, t.hf, ours(t.ours)) for t in top]
                     + [(t, t.hf.format(i=i), ours(t.ours, i)) for i in range(c.n_layers) for t in layer]):
    if t.part is None:
      tensors[name] = np.ascontiguousarray(theirs(t, x))
    else:
      fused.setdefault(name, [None] * t.parts)[t.part] = theirs(t, x)
  tensors.update({name: np.ascontiguousarray(np.concatenate(parts, axis=-1)) for name, parts in fused.items()})

  os.makedirs(out_dir, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(_hf_config(c, arch, str(tensors[top[0].hf].dtype), tokenizer), f, indent=2, sort_keys=True)
  if tokenizer is not None:
    tokenizer.save(out_dir)
  return out_dir


# --- command line ----------------------------------------------------------------------------------------------

def workdir_from_hf(src: str, workdir: str) -> str:
  """An llm_jax workdir (config.json, checkpoints/0/params, tokenizer/) holding a Hugging Face model."""
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileExistsError(f"{workdir} already holds checkpoints; convert into a new --workdir")
  cfg, params = from_hf(src)
  config = config_lib.base_config()
  for key, value in dataclasses.asdict(cfg).items():
    config.model[key] = value  # vocab_size also sets tokenizer.vocab_size (they are linked)
  config.data.seq_len = min(config.data.seq_len, cfg.max_seq_len)  # so the saved config validates
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  checkpoint.save_params(workdir, params)
  if any(os.path.isfile(os.path.join(src, n)) for n in (tokenizer_lib.HF_FILE, tokenizer_lib.MODEL_FILE)):
    tokenizer_lib.load(src).save(os.path.join(workdir, "tokenizer"))
  else:
    print(f"note: {src} has no {tokenizer_lib.HF_FILE} or {tokenizer_lib.MODEL_FILE}; put a tokenizer in "
          f"{workdir}/tokenizer before llm_jax.load or generate", file=sys.stderr)
  return workdir


def main(argv: list[str] | None = None):
  parser = argparse.ArgumentParser(prog="python -m llm_jax.convert", description=__doc__.split("\n", 1)[0])
  commands = parser.add_subparsers(dest="command", required=True)
  a = commands.add_parser("from-hf", help="Hugging Face model directory -> llm_jax workdir")
  a.add_argument("--src", required=True, help="directory with config.json and safetensors")
  a.add_argument("--workdir", required=True, help="llm_jax workdir to create")
  b = commands.add_parser("to-hf", help="llm_jax workdir (latest checkpoint) -> Hugging Face model directory")
  b.add_argument("--workdir", required=True)
  b.add_argument("--out", required=True, help="directory for config.json, model.safetensors and the tokenizer")
  b.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = parser.parse_args(argv)
  try:
    if args.command == "from-hf":
      workdir_from_hf(args.src, args.workdir)
      print(f"wrote {args.workdir}")
    else:
      config, params, tok = llm_jax.load(args.workdir, args.step)
      to_hf(config_lib.model_config(config), params, args.out, tokenizer=tok)
      print(f"wrote {args.out}")
  except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
