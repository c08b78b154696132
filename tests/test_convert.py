"""Hugging Face interop: fp32 logit parity with transformers (max abs difference <= 1e-4) for Llama (GQA; rope
scaling llama3, linear, yarn, and ntk as the theta it amounts to) and GPT-2, both Llama config.json forms,
sharded and bf16 files, to_hf round trips, the convert CLI, and a training run started with init_from a
Hugging Face directory.

Every model is built here with random weights (no downloads); torch and transformers are required ([hf]).
"""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

import llm_jax
from llm_jax import config as config_lib, convert, sharding, train
from llm_jax.model import Transformer
from llm_jax.training import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
TOL = 1e-4
SEQ = 64
# original_max_position_embeddings=64 with head_dim 16 and theta 5e5 puts rotary wavelengths in all three
# Llama-3 bands (kept < 16 <= interpolated <= 64 < divided by factor); checked in the test.
LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             vocab_size=256, max_position_embeddings=2 * SEQ, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
GPT2 = dict(n_embd=64, n_layer=2, n_head=4, n_positions=SEQ, vocab_size=256, bos_token_id=0, eos_token_id=0)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Weights big enough for peaked attention (so RoPE errors show), norm scales off 1 and biases off 0."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 2:
        p.copy_(noise * (0.5 if any(e in name for e in ("embed", "wte", "wpe")) else 0.2))
      else:
        p.copy_(noise * 0.1 + (0.0 if name.endswith("bias") else 1.0))
  return model.eval()


def _hf_model(cls, config_cls, fields: dict, seed: int):
  return _randomize(cls(config_cls(**fields, attn_implementation="eager")).to(torch.float32), seed)


def _torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


def _our_logits(cfg, params, ids):
  return np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(ids)))


def _max_diff(a, b, what):
  diff = float(np.abs(a - b).max())
  print(f"{what}: max |logit difference| = {diff:.3g} (logits up to {float(np.abs(a).max()):.3g})")
  return diff


def _assert_tree_equal(a, b, atol=0.0):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def ids():
  return np.random.RandomState(0).randint(0, 256, (4, SEQ))


def _saved(tmp_path_factory, name, model):
  path = tmp_path_factory.mktemp(name)
  model.save_pretrained(path)
  return model, str(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  return _saved(tmp_path_factory, "llama",
                _hf_model(transformers.LlamaForCausalLM, transformers.LlamaConfig, LLAMA, seed=1))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  return _saved(tmp_path_factory, "gpt2", _hf_model(transformers.GPT2LMHeadModel, transformers.GPT2Config, GPT2, seed=2))


def test_llama_logits_match_transformers(llama, ids):
  model, path = llama
  cfg, params = convert.from_hf(path)
  assert (cfg.n_kv_heads, cfg.head_dim, cfg.rope_scaling, cfg.rope_original_max_len) == (2, 16, "llama3", 64)
  abstract = nn.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
  assert jax.tree_util.tree_structure(abstract["params"]) == jax.tree_util.tree_structure(params)
  assert all(x.shape == y.shape and y.dtype == np.float32 and isinstance(y, np.ndarray)
             for x, y in zip(jax.tree_util.tree_leaves(abstract["params"]), jax.tree_util.tree_leaves(params)))
  wavelengths = 2 * math.pi * cfg.rope_theta ** (np.arange(cfg.head_dim // 2) / (cfg.head_dim // 2))
  old = cfg.rope_original_max_len
  assert (wavelengths < old / 4).any() and ((wavelengths >= old / 4) & (wavelengths <= old)).any()
  assert (wavelengths > old).any()

  ours = _our_logits(cfg, params, ids)
  assert _max_diff(_torch_logits(model, ids), ours, "llama from_hf") <= TOL
  # The test can see RoPE scaling: without it the logits move by far more than the tolerance.
  assert np.abs(_our_logits(cfg.replace(rope_scaling="none"), params, ids) - ours).max() > 100 * TOL


# head_dim 16, theta 1e4 and an original length of 512 put YaRN's ramp over pairs 0..4 of 8: kept, blended and
# interpolated frequencies all occur.
@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512, "beta_fast": 16.0, "beta_slow": 2.0,
     "attention_factor": 1.3}], ids=["linear", "yarn", "yarn-custom"])
def test_rope_scalings_match_transformers(rope, ids, tmp_path):
  fields = {**LLAMA, "rope_parameters": {**rope, "rope_theta": 10000.0}}
  model = _hf_model(transformers.LlamaForCausalLM, transformers.LlamaConfig, fields, seed=3)
  model.save_pretrained(tmp_path)
  cfg, params = convert.from_hf(str(tmp_path))
  assert cfg.rope_scaling == rope["rope_type"] and cfg.rope_scaling_factor == rope["factor"]
  ours = _our_logits(cfg, params, ids)
  assert _max_diff(_torch_logits(model, ids), ours, f"{rope['rope_type']} rope") <= TOL
  assert np.abs(_our_logits(cfg.replace(rope_scaling="none"), params, ids) - ours).max() > 100 * TOL
  convert.to_hf(cfg, params, str(tmp_path / "back"))
  assert convert.from_hf(str(tmp_path / "back"))[0] == cfg


def test_ntk_scaling_is_written_as_the_theta_it_amounts_to(llama, ids, tmp_path):
  """Static NTK-aware scaling = theta x factor^(H / (H - 2)): to_hf writes that theta, and transformers' logits
  of the written model equal ours."""
  cfg = convert.from_hf(llama[1])[0].replace(rope_scaling="ntk", rope_theta=1e4, rope_scaling_factor=4.0)
  params = _noisy_init(cfg, seed=4)
  convert.to_hf(cfg, params, str(tmp_path / "hf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                            dtype=torch.float32).eval()
  ours = _our_logits(cfg, params, ids)
  assert _max_diff(_torch_logits(model, ids), ours, "ntk to_hf -> transformers") <= TOL
  assert np.abs(_our_logits(cfg.replace(rope_scaling="none"), params, ids) - ours).max() > 100 * TOL
  back = convert.from_hf(str(tmp_path / "hf"))[0]
  assert (back.rope_scaling, back.rope_theta) == ("none", pytest.approx(1e4 * 4.0 ** (16 / 14), rel=1e-12))


def test_llama_older_config_forms_read_the_same(llama, tmp_path):
  _, path = llama
  cfg, _ = convert.from_hf(path)
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    current = json.load(f)
  assert "rope_parameters" in current  # what this transformers writes
  os.symlink(os.path.join(path, "model.safetensors"), tmp_path / "model.safetensors")
  rope = dict(current.pop("rope_parameters"))
  theta = rope.pop("rope_theta")
  for scaling in (rope, {**{k: v for k, v in rope.items() if k != "rope_type"}, "type": "llama3"}):
    # As published Llama 3.1 files have it (and "type" instead of "rope_type", as before transformers 4.45).
    (tmp_path / "config.json").write_text(json.dumps({**current, "rope_theta": theta, "rope_scaling": scaling}))
    assert convert.from_hf(str(tmp_path))[0] == cfg
  (tmp_path / "config.json").write_text(json.dumps({**current, "rope_theta": theta, "rope_scaling": None}))
  unscaled = convert.from_hf(str(tmp_path))[0]
  assert (unscaled.rope_scaling, unscaled.rope_theta) == ("none", theta)
  dynamic = {"rope_type": "dynamic", "factor": 4.0}
  (tmp_path / "config.json").write_text(json.dumps({**current, "rope_parameters": dynamic}))
  with pytest.raises(ValueError, match="'dynamic'"):
    convert.from_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({**current, "mlp_bias": True}))
  with pytest.raises(KeyError, match="mlp.gate_proj.bias"):
    convert.from_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({**current, "architectures": ["MistralForCausalLM"],
                                                    "model_type": "mistral"}))
  with pytest.raises(ValueError, match="MistralForCausalLM"):
    convert.from_hf(str(tmp_path))


def test_sharded_and_bf16_checkpoints(llama, tmp_path):
  model, path = llama
  _, params = convert.from_hf(path)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 2
  _assert_tree_equal(convert.from_hf(str(tmp_path / "sharded"))[1], params)

  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  model.to(torch.float32)
  _, bf16 = convert.from_hf(str(tmp_path / "bf16"), dtype=None)
  assert jax.tree_util.tree_leaves(bf16)[0].dtype == jnp.bfloat16
  _assert_tree_equal(convert.from_hf(str(tmp_path / "bf16"))[1], jax.tree.map(lambda x: x.astype(np.float32), bf16))
  np.testing.assert_allclose(bf16["embed"]["embedding"].astype(np.float32), params["embed"]["embedding"], rtol=1e-2)

  min((tmp_path / "sharded").glob("model-*.safetensors")).unlink()  # a shard goes missing
  with pytest.raises(FileNotFoundError, match="missing"):
    convert.from_hf(str(tmp_path / "sharded"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert.from_hf(str(tmp_path))


def test_gpt2_logits_match_transformers(gpt2, ids):
  model, path = gpt2
  cfg, params = convert.from_hf(path)
  assert (cfg.positions, cfg.norm, cfg.mlp, cfg.tie_embeddings, cfg.max_seq_len) == ("learned", "layernorm", "gelu",
                                                                                      True, SEQ)
  assert "head" not in params and params["pos_embed"]["embedding"].shape == (SEQ, 64)
  assert _max_diff(_torch_logits(model, ids), _our_logits(cfg, params, ids), "gpt2 from_hf") <= TOL


def test_gpt2_published_tensor_names(gpt2, tmp_path):
  # openai-community/gpt2's files name tensors without "transformer." and carry causal-mask buffers.
  _, path = gpt2
  tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, SEQ, SEQ), np.float32))
  safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  os.symlink(os.path.join(path, "config.json"), tmp_path / "config.json")
  _assert_tree_equal(convert.from_hf(str(tmp_path))[1], convert.from_hf(path)[1])
  tensors["h.0.attn.extra.weight"] = np.zeros(3, np.float32)
  safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"does not know .*h\.0\.attn\.extra\.weight"):
    convert.from_hf(str(tmp_path))


def _noisy_init(cfg, seed):
  """Our own random model, with biases and norm scales moved off 0 and 1 so every tensor matters."""
  params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32), nn.unbox(params))


def _unscan(params, n_layers):
  """The scan_layers=False tree of the same weights."""
  out = {k: v for k, v in params.items() if k != "layers"}
  out.update({f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"]["block_0"]) for i in range(n_layers)})
  return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_to_hf_round_trip(arch, llama, gpt2, ids, tmp_path):
  base, _ = convert.from_hf((llama if arch == "llama" else gpt2)[1])
  # Our own weights, with the switches the HF models above do not use: a tied, biased Llama; an untied GPT-2.
  cfg = (base.replace(attn_bias=True, mlp_bias=True, tie_embeddings=True) if arch == "llama"
         else base.replace(tie_embeddings=False))
  params = _noisy_init(cfg, seed=3)
  convert.to_hf(cfg, params, str(tmp_path / "hf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                            dtype=torch.float32).eval()
  ours = _our_logits(cfg, params, ids)
  assert _max_diff(_torch_logits(model, ids), ours, f"{arch} to_hf -> transformers") <= TOL
  back_cfg, back = convert.from_hf(str(tmp_path / "hf"))
  assert back_cfg == cfg
  _assert_tree_equal(back, params)

  # config.json is what transformers' save_pretrained writes for this model.
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  model.config.save_pretrained(tmp_path / "resaved")
  assert json.loads((tmp_path / "resaved" / "config.json").read_text()) == written
  # scan_layers=False trees export to the same file.
  convert.to_hf(cfg.replace(scan_layers=False), _unscan(params, cfg.n_layers), str(tmp_path / "unscanned"))
  a, b = (safetensors.numpy.load_file(tmp_path / d / "model.safetensors") for d in ("hf", "unscanned"))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_to_hf_refuses_models_without_hf_architecture(llama, tmp_path):
  cfg, params = convert.from_hf(llama[1])
  with pytest.raises(ValueError, match="layer_pattern"):
    convert.to_hf(cfg.replace(layer_pattern="AC"), params, str(tmp_path))
  with pytest.raises(ValueError, match="positions='sinusoidal'"):
    convert.to_hf(cfg.replace(positions="sinusoidal"), params, str(tmp_path))
  with pytest.raises(KeyError, match="attn/q/bias"):
    convert.to_hf(cfg.replace(attn_bias=True), params, str(tmp_path))


# --- CLI and training from a Hugging Face directory -----------------------------------------------------------

MICRO_VOCAB = 384  # tests/micro_config.py's tokenizer.vocab_size


@pytest.fixture(scope="module")
def micro_llama(tmp_path_factory, corpus):
  """A HF Llama with the micro config's shapes and a byte-level BPE tokenizer.json of the same vocab."""
  path = tmp_path_factory.mktemp("micro_llama")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=MICRO_VOCAB, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator([d["text"] for d in corpus[:40]], trainer)
  assert tok.get_vocab_size() == MICRO_VOCAB
  tok.save(str(path / "tokenizer.json"))
  # pad_token is needed by llm_jax.inference.sample, which pads prompt buffers with tokenizer.pad_id.
  (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|bos|>", "eos_token": "<|eos|>",
                                                          "pad_token": "<|pad|>"}))
  micro = config_lib.load_file(MICRO).model
  fields = dict(hidden_size=micro.d_model, num_hidden_layers=micro.n_layers, num_attention_heads=micro.n_heads,
                num_key_value_heads=micro.n_kv_heads, head_dim=micro.head_dim, intermediate_size=micro.d_ff,
                vocab_size=MICRO_VOCAB, max_position_embeddings=64, rms_norm_eps=micro.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": micro.rope_theta})
  _hf_model(transformers.LlamaForCausalLM, transformers.LlamaConfig, fields, seed=4).save_pretrained(path)
  return str(path)


def _run(module, *args, check=True):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  if check and proc.returncode:
    raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def _micro_setup(**model_overrides):
  config = config_lib.load_file(MICRO)
  for key, value in model_overrides.items():
    config.model[key] = value
  return state_lib.build(config, sharding.make_mesh(config.mesh))


def test_cli_from_hf_load_generate_to_hf(micro_llama, tmp_path):
  workdir = tmp_path / "work"
  _run("llm_jax.convert", "from-hf", "--src", micro_llama, "--workdir", workdir)
  cfg, hf_params = convert.from_hf(micro_llama)
  config, params, tok = llm_jax.load(str(workdir))
  assert config_lib.model_config(config) == cfg
  _assert_tree_equal(jax.tree.map(np.asarray, params), hf_params)
  assert tok.vocab_size == MICRO_VOCAB and tok.bos_id == tok.special["<|bos|>"]
  assert tok.encode("def f(x):\n") == tokenizers.Tokenizer.from_file(
      os.path.join(micro_llama, "tokenizer.json")).encode("def f(x):\n").ids

  proc = _run("llm_jax.generate", "--workdir", workdir, "--prompt", "def ", "--max_new_tokens", "6")
  assert proc.stdout.startswith("def ")
  # A converted workdir also serves as init_from (train.init_params' llm_jax-workdir branch).
  _assert_tree_equal(jax.tree.map(np.asarray, train.init_params(str(workdir), _micro_setup())), hf_params)

  convert.main(["to-hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  assert convert.from_hf(str(tmp_path / "hf"))[0] == cfg
  assert (tmp_path / "hf" / "tokenizer.json").exists()
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["bos_token_id"] == tok.bos_id

  proc = _run("llm_jax.convert", "from-hf", "--src", tmp_path / "nothing", "--workdir", tmp_path / "w2", check=False)
  assert proc.returncode == 2 and "config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_train_init_from_hf_directory(micro_llama, tmp_path, capsys):
  run = tmp_path / "run"
  # One step at a negligible learning rate: the checkpoint after it holds (almost exactly) the initial weights.
  _run("llm_jax.train", f"--config={MICRO}", f"--workdir={run}", f"--config.init_from={micro_llama}",
       "--config.train.steps=1", "--config.train.lr=1e-8", "--config.train.eval_every=1")
  _, hf_params = convert.from_hf(micro_llama)
  _, params, tok = llm_jax.load(str(run))
  _assert_tree_equal(jax.tree.map(np.asarray, params), hf_params, atol=1e-6)
  assert tok.vocab_size == MICRO_VOCAB and (run / "tokenizer" / "tokenizer.json").exists()

  with pytest.raises(config_lib.ConfigError, match="model.d_ff: .* has 64, this config 128"):
    train.init_params(micro_llama, _micro_setup(d_ff=128))
  # Context extension changes RoPE on purpose: allowed, and said.
  extended = train.init_params(micro_llama, _micro_setup(rope_scaling="yarn", rope_scaling_factor=4.0,
                                                         rope_original_max_len=64))
  _assert_tree_equal(jax.tree.map(np.asarray, extended), hf_params)
  assert "RoPE changed" in capsys.readouterr().out
  bf16 = train.init_params(micro_llama, _micro_setup(param_dtype="bfloat16"))  # cast to the run's param_dtype
  assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
