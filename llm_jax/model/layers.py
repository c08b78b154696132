"""Transformer building blocks: RMSNorm, rotary position embedding, grouped-query attention, SwiGLU MLP.

Every parameter carries logical axis names (`embed, heads, kv_heads, head_dim, mlp, vocab`) that
`llm_jax.sharding` maps onto mesh axes; key activations carry logical constraints. `dtype` is the compute
dtype, `param_dtype` the storage dtype; attention logits and softmax are computed in float32.

Shape suffixes: B batch, T query length, S key length, D model width, N query heads, K kv heads,
G query heads per kv head, H head dim, F mlp width.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Llama-style decoder (see `llm_jax.model.transformer.Transformer`)."""
  vocab_size: int = 4096
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 64
  d_ff: int = 768
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  max_seq_len: int = 256
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"

  @classmethod
  def from_config(cls, c) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(c).items() if k in names})

  def num_params(self, include_embedding: bool = True) -> int:
    d, h = self.d_model, self.head_dim
    attn = d * h * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * h * d
    mlp = 3 * d * self.d_ff
    per_layer = attn + mlp + 2 * d
    emb = self.vocab_size * d
    return self.n_layers * per_layer + d + emb + (emb if include_embedding else 0)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (non-embedding-lookup params) + causal attention score/value matmuls."""
    matmul_params = self.num_params(include_embedding=False)  # lookup is free; output head is a matmul
    attention = 6 * self.n_layers * self.n_heads * self.head_dim * seq_len  # 12*L*H*T/2 with causal mask
    return 6 * matmul_params + attention


def _init(std: float, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


class RMSNorm(nn.Module):
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope(x_BTNH, positions_BT, theta: float):
  """Rotary embedding, 'rotate half' layout (Hugging Face Llama convention: no weight permutation needed).

  Rotates pairs (i, i + H/2) by angle position * theta^(-2i/H); because q.k then depends only on the
  difference of positions, per-document positions make packed rows behave like separate sequences.
  """
  half = x_BTNH.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  angle_BTH = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  sin, cos = jnp.sin(angle_BTH)[:, :, None, :], jnp.cos(angle_BTH)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def attention_mask(segment_ids_BT):
  """[B, 1, 1, T, S] boolean: causal, and only within the same non-zero segment."""
  t = segment_ids_BT.shape[1]
  causal_TS = jnp.tril(jnp.ones((t, t), bool))
  same_BTS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]) & (segment_ids_BT[:, None, :] > 0)
  return (causal_TS[None] & same_BTS)[:, None, None]


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask):
    c = self.cfg
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    std, out_std = c.d_model ** -0.5, (c.n_heads * c.head_dim) ** -0.5 / (2 * c.n_layers) ** 0.5

    def proj(name, heads, axes):
      return nn.DenseGeneral((heads, c.head_dim), use_bias=False, dtype=dtype, param_dtype=pdtype,
                             kernel_init=_init(std, ("embed",) + axes), name=name)(x_BTD)

    q_BTNH = proj("q", c.n_heads, ("heads", "head_dim"))
    k_BTKH = proj("k", c.n_kv_heads, ("kv_heads", "head_dim"))
    v_BTKH = proj("v", c.n_kv_heads, ("kv_heads", "head_dim"))
    q_BTNH = rope(q_BTNH, positions_BT, c.rope_theta)
    k_BTKH = rope(k_BTKH, positions_BT, c.rope_theta)
    q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "head_dim"))

    b, t, _, h = q_BTNH.shape
    g = c.n_heads // c.n_kv_heads
    q_BTKGH = q_BTNH.reshape(b, t, c.n_kv_heads, g, h)
    logits_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BTKH,
                              preferred_element_type=jnp.float32) * h ** -0.5
    logits_BKGTS = jnp.where(mask, logits_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
    out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs_BKGTS.astype(dtype), v_BTKH)
    out_BTNH = out_BTKGH.reshape(b, t, c.n_heads, h)
    out_BTNH = nn.with_logical_constraint(out_BTNH, ("batch", "length", "heads", "head_dim"))
    return nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, dtype=dtype, param_dtype=pdtype,
                           kernel_init=_init(out_std, ("heads", "head_dim", "embed")), name="o")(out_BTNH)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    c = self.cfg
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    dense = lambda feats, std, axes, name: nn.Dense(  # noqa: E731
        feats, use_bias=False, dtype=dtype, param_dtype=pdtype, kernel_init=_init(std, axes), name=name)
    gate_BTF = dense(c.d_ff, c.d_model ** -0.5, ("embed", "mlp"), "gate")(x_BTD)
    up_BTF = dense(c.d_ff, c.d_model ** -0.5, ("embed", "mlp"), "up")(x_BTD)
    h_BTF = nn.with_logical_constraint(nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
    return dense(c.d_model, c.d_ff ** -0.5 / (2 * c.n_layers) ** 0.5, ("mlp", "embed"), "down")(h_BTF)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask):
    c = self.cfg
    norm = lambda name: RMSNorm(c.norm_eps, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype), name=name)  # noqa: E731
    x_BTD = x_BTD + Attention(c, name="attn")(norm("attn_norm")(x_BTD), positions_BT, mask)
    x_BTD = x_BTD + MLP(c, name="mlp")(norm("mlp_norm")(x_BTD))
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
