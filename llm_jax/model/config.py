"""`ModelConfig`: every architectural switch of the decoder, and exact parameter / FLOP counts.

The switches are the ones the seed walks through, so each can be ablated alone:
  positions      rope (theta; scaling for context extension: linear | ntk | yarn | llama3, layers.rope_frequencies)
                 | learned | sinusoidal | none
  norm           rmsnorm | layernorm (with bias), placed pre (GPT-2, Llama) or post (original Transformer)
  mlp            swiglu (Llama) | gelu (GPT-2, tanh approximation)
  attention      MHA / GQA / MQA through n_kv_heads; biases on or off; attention_impl plain (materialises
                 the [T, T] scores) | blockwise (FlashAttention-2 in pure JAX, model/blockwise.py: memory
                 O(T), blocks of attention_block tokens) for training and scoring; decoding is unaffected;
                 with a `context` mesh axis (context parallelism) attention always runs blockwise, by
                 context_impl allgather (all K/V gathered) | ring (K/V passed round the context ring), and
                 context_balance none | zigzag (each device holds chunks i and 2c-1-i of the sequence, so
                 causal work is even; not with conv blocks)
  embeddings     tied (GPT-2) or untied (Llama) output head
  layer_pattern  a string tiled over the depth: "A" attention block, "C" causal depthwise-conv mixer block
                 ("AC" alternates; the hybrid the seed looks ahead to)
  numerics       dtype (compute) vs param_dtype (storage); logits and softmax always in float32
  memory         remat none | full | dots (save matmul outputs only); scan_layers (one compiled block)
  quant          none | int8 | w8a8: int8 matmul kernels with a float32 scale per output channel, for
                 inference (llm_jax/model/quant.py makes them from trained parameters); int8 is weight-only,
                 w8a8 also quantizes each token's activations and multiplies in int8
"""

from __future__ import annotations

import dataclasses

POSITIONS = ("rope", "learned", "sinusoidal", "none")
NORMS = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("swiglu", "gelu")
REMATS = ("none", "full", "dots")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")
QUANTS = ("none", "int8", "w8a8")
ATTENTION_IMPLS = ("plain", "blockwise")
CONTEXT_IMPLS = ("allgather", "ring")
CONTEXT_BALANCES = ("none", "zigzag")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the decoder (see `llm_jax.model.transformer.Transformer`)."""
  vocab_size: int = 4096
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 64
  d_ff: int = 768
  max_seq_len: int = 256
  positions: str = "rope"
  rope_theta: float = 10000.0
  rope_scaling: str = "none"  # linear | ntk | yarn | llama3: how positions past the trained length are reached
  rope_scaling_factor: float = 8.0  # new length / rope_original_max_len
  rope_low_freq_factor: float = 1.0  # llama3
  rope_high_freq_factor: float = 4.0  # llama3
  rope_original_max_len: int = 8192  # llama3, yarn: the length the model was trained at
  rope_yarn_beta_fast: float = 32.0  # yarn: frequencies turning more often than this in the original length: kept
  rope_yarn_beta_slow: float = 1.0  # yarn: ... less often than this are interpolated
  rope_attention_factor: float = 0.0  # yarn: queries and keys are scaled by it; 0: 0.1 ln(factor) + 1
  norm: str = "rmsnorm"
  norm_position: str = "pre"
  norm_eps: float = 1e-5
  mlp: str = "swiglu"
  attn_bias: bool = False
  attention_impl: str = "plain"
  attention_block: int = 512
  context_impl: str = "allgather"  # under a `context` mesh axis: model/blockwise.py's module docstring
  context_balance: str = "none"
  mlp_bias: bool = False
  tie_embeddings: bool = False
  layer_pattern: str = "A"
  conv_kernel: int = 4
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"
  quant: str = "none"

  def __post_init__(self):
    def check(ok, field, allowed):
      if not ok:
        raise ValueError(f"model.{field}={getattr(self, field)!r}: must be {allowed}")
    check(self.positions in POSITIONS, "positions", f"one of {POSITIONS}")
    check(self.norm in NORMS, "norm", f"one of {NORMS}")
    check(self.norm_position in NORM_POSITIONS, "norm_position", f"one of {NORM_POSITIONS}")
    check(self.mlp in MLPS, "mlp", f"one of {MLPS}")
    check(self.remat in REMATS, "remat", f"one of {REMATS}")
    check(self.quant in QUANTS, "quant", f"one of {QUANTS}")
    check(self.rope_scaling in ROPE_SCALINGS, "rope_scaling", f"one of {ROPE_SCALINGS}")
    check(self.rope_scaling == "none" or self.rope_scaling_factor >= 1, "rope_scaling_factor", ">= 1")
    check(self.rope_attention_factor >= 0, "rope_attention_factor", ">= 0 (0: YaRN's default)")
    check(self.attention_impl in ATTENTION_IMPLS, "attention_impl", f"one of {ATTENTION_IMPLS}")
    check(self.attention_block > 0, "attention_block", "positive")
    check(self.context_impl in CONTEXT_IMPLS, "context_impl", f"one of {CONTEXT_IMPLS}")
    check(self.context_balance in CONTEXT_BALANCES, "context_balance", f"one of {CONTEXT_BALANCES}")
    check(self.context_balance == "none" or "C" not in self.layer_pattern, "context_balance",
          f"'none' with conv blocks in layer_pattern={self.layer_pattern!r} (their causal convolution needs the "
          "tokens in order)")
    check(self.layer_pattern and set(self.layer_pattern) <= {"A", "C"}, "layer_pattern", "a string of 'A' and 'C'")
    check(self.n_layers % len(self.layer_pattern) == 0, "layer_pattern",
          f"a pattern whose length divides n_layers={self.n_layers}")
    check(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
          f"a divisor of n_heads={self.n_heads}")
    check(self.positions != "rope" or self.head_dim % 2 == 0, "head_dim", "even with rope")

  @classmethod
  def from_config(cls, c) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(c).items() if k in names})

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def block_kinds(self) -> str:
    """The block kind of every layer, e.g. 'ACAC'."""
    return self.layer_pattern * (self.n_layers // len(self.layer_pattern))

  def _block_params(self, kind: str) -> int:
    d, h, f = self.d_model, self.head_dim, self.d_ff
    norm = d * (2 if self.norm == "layernorm" else 1)
    if kind == "A":
      mixer = d * h * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * h * d
      mixer += (h * (self.n_heads + 2 * self.n_kv_heads) + d) if self.attn_bias else 0
    else:  # conv mixer: in-projection to value+gate, depthwise kernel, out-projection
      mixer = 2 * d * d + self.conv_kernel * d + d * d + ((3 * d) if self.attn_bias else 0)
    mlp = (3 if self.mlp == "swiglu" else 2) * d * f
    mlp += ((2 * f if self.mlp == "swiglu" else f) + d) if self.mlp_bias else 0
    return mixer + mlp + 2 * norm

  def lookup_params(self) -> int:
    """Parameters used by table lookups, not matmuls: token (and learned position) embeddings."""
    return self.vocab_size * self.d_model + (self.max_seq_len * self.d_model if self.positions == "learned" else 0)

  def num_params(self) -> int:
    """Exact parameter count (equals the size of the initialised parameter tree)."""
    final_norm = self.d_model * (2 if self.norm == "layernorm" else 1) if self.norm_position == "pre" else 0
    head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
    return sum(self._block_params(k) for k in self.block_kinds) + final_norm + head + self.lookup_params()

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token, PaLM convention: 6 x matmul parameters + 12 x L_attn x heads x head_dim x T."""
    matmul_params = self.num_params() - self.lookup_params() + (self.vocab_size * self.d_model
                                                                if self.tie_embeddings else 0)
    attention_layers = self.block_kinds.count("A")
    return 6 * matmul_params + 12 * attention_layers * self.n_heads * self.head_dim * seq_len
