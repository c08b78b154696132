"""Named model shapes: the CPU default and published GPT-2 / Llama 3.1 architectures.

    from llm_jax.model import presets
    cfg = presets.get("llama3.1-8b")            # a ModelConfig
    presets.apply(config, "gpt2")               # sets config.model (and tokenizer.vocab_size) from a preset

Shapes follow the released Hugging Face config.json files (openai-community/gpt2, gpt2-medium;
meta-llama/Llama-3.1-8B, -70B, -405B). Parameter counts (exact, asserted in tests/test_presets.py):
gpt2 124,439,808; gpt2-medium 354,823,168; llama3.1-8b 8,030,261,248; llama3.1-70b 70,553,706,496;
llama3.1-405b 405,853,388,800 — the totals in the safetensors index metadata of those releases
(total_size / 2 bytes per bf16 parameter for Llama; the GPT-2 figures are transformers' num_parameters()).
"""

from __future__ import annotations

import dataclasses

from llm_jax.model.config import ModelConfig

_GPT2 = dict(vocab_size=50257, head_dim=64, max_seq_len=1024, positions="learned", norm="layernorm",
             norm_eps=1e-5, mlp="gelu", attn_bias=True, mlp_bias=True, tie_embeddings=True)
_LLAMA31 = dict(vocab_size=128256, head_dim=128, max_seq_len=131072, positions="rope", rope_theta=500000.0,
                rope_scaling="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                rope_high_freq_factor=4.0, rope_original_max_len=8192, norm="rmsnorm", norm_eps=1e-5,
                mlp="swiglu", n_kv_heads=8, dtype="bfloat16", remat="full")

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "gpt2": ModelConfig(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=3072, **_GPT2),
    "gpt2-medium": ModelConfig(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, d_ff=4096, **_GPT2),
    "llama3.1-8b": ModelConfig(d_model=4096, n_layers=32, n_heads=32, d_ff=14336, **_LLAMA31),
    "llama3.1-70b": ModelConfig(d_model=8192, n_layers=80, n_heads=64, d_ff=28672, **_LLAMA31),
    "llama3.1-405b": ModelConfig(d_model=16384, n_layers=126, n_heads=128, d_ff=53248, **_LLAMA31),
}


def get(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
  return PRESETS[name]


def apply(config, name: str):
  """Sets config.model from the preset; vocab_size also sets tokenizer.vocab_size (they are linked).

  max_seq_len is left as the config has it (-1: data.seq_len, the length the run trains at); a preset's
  max_seq_len is the length its published weights support (131072 for Llama 3.1, 1024 for GPT-2's table).
  """
  for key, value in dataclasses.asdict(get(name)).items():
    if key != "max_seq_len":
      config.model[key] = value
  return config
