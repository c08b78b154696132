"""Transformer building blocks: norms, positions (RoPE, learned, sinusoidal), attention, MLPs, conv mixer.

Every parameter carries logical axis names (`embed, heads, kv_heads, head_dim, mlp, vocab`) that
`llm_jax.sharding` maps onto mesh axes; key activations carry logical constraints. `dtype` is the compute
dtype, `param_dtype` the storage dtype; attention logits and softmax are computed in float32.

Shape suffixes: B batch, T query length, S key length, D model width, N query heads, K kv heads,
G query heads per kv head, H head dim, F mlp width, V vocab.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.model.config import ModelConfig


def init(std: float, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def dense(cfg: ModelConfig, features: int, std: float, axes: tuple, name: str, use_bias: bool) -> nn.Dense:
  """A Dense layer with the config's dtypes, a normal(std) kernel and logical axes (in, out)."""
  return nn.Dense(features, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                  kernel_init=init(std, axes), bias_init=_zeros(axes[-1:]), name=name)


class Embed(nn.Embed):
  """nn.Embed whose lookup reads the table gathered along fsdp, as FSDP does with every weight before use.

  A lookup in the fsdp-split table would give rows split along `embed`, which XLA can only reshard to the
  batch-split activations by replicating them (it warns "involuntary full rematerialization").
  """

  rows_axis: str | None = "vocab"  # the table's first dimension's logical name (None: position tables)

  def __call__(self, inputs):
    table = nn.with_logical_constraint(self.embedding, (self.rows_axis, None))
    return jnp.take(table.astype(self.dtype or table.dtype), inputs, axis=0)


class Projection(nn.Module):
  """x @ kernel (+ bias) with a multi-axis kernel: [D] -> [N, H] (q, k, v) or [N, H] -> [D] (o, n_in=2).

  The kernel is created in its final shape, so its logical axis names fit it at every point (flax's
  DenseGeneral initialises a flattened 2-D kernel, which clashes with the names once rules are active).
  """
  cfg: ModelConfig
  features: tuple[int, ...]
  axes: tuple[str, ...]  # logical names of the kernel's dims: the n_in contracted ones, then the features
  std: float
  use_bias: bool
  n_in: int = 1

  @nn.compact
  def __call__(self, x):
    dtype, pdtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    kernel = self.param("kernel", init(self.std, self.axes), x.shape[-self.n_in:] + self.features, pdtype)
    y = jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=self.n_in)
    if self.use_bias:
      y = y + self.param("bias", _zeros(self.axes[self.n_in:]), self.features, pdtype).astype(dtype)
    return y


class Norm(nn.Module):
  """RMSNorm (scale only) or LayerNorm (scale and bias), computed in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.dtype(c.param_dtype))
    x32 = x.astype(jnp.float32)
    if c.norm == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + c.norm_eps) * scale.astype(jnp.float32)
    if c.norm == "layernorm":
      y = y + self.param("bias", _zeros(("embed",)), (x.shape[-1],), jnp.dtype(c.param_dtype)).astype(jnp.float32)
    return y.astype(c.dtype)


def rope_frequencies(cfg: ModelConfig):
  """Inverse frequencies theta^(-2i/H); with Llama-3 scaling, long wavelengths are stretched by `factor`.

  Llama 3.1 scaling (as in Meta's reference code and transformers' `_compute_llama3_parameters`):
  wavelengths shorter than original_len/high_freq_factor are kept, longer than original_len/low_freq_factor
  are divided by factor, and the band in between is interpolated smoothly.
  """
  half = cfg.head_dim // 2
  inv_freq = 1.0 / cfg.rope_theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  if cfg.rope_scaling == "llama3":
    factor, low, high, old = (cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                              cfg.rope_original_max_len)
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    inv_freq = jnp.where(medium, smoothed, scaled)
  return inv_freq


def rope(x_BTNH, positions_BT, inv_freq_H2):
  """Rotary embedding, 'rotate half' layout (Hugging Face Llama convention: no weight permutation needed).

  Rotates pairs (i, i + H/2) by angle position * inv_freq[i]; because q.k then depends only on the
  difference of positions, per-document positions make packed rows behave like separate sequences.
  """
  angle_BTH = positions_BT.astype(jnp.float32)[..., None] * inv_freq_H2
  sin, cos = jnp.sin(angle_BTH)[:, :, None, :], jnp.cos(angle_BTH)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTNH.dtype)


def sinusoidal(positions_BT, d_model: int):
  """Vaswani et al.'s fixed encoding: sin on the first half of the features, cos on the second."""
  half = d_model // 2
  inv_freq = 1.0 / 10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  out = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
  return jnp.pad(out, ((0, 0), (0, 0), (0, d_model - 2 * half)))


def attention_mask(segment_ids_BT):
  """[B, 1, 1, T, S] boolean: causal, and only within the same non-zero segment."""
  t = segment_ids_BT.shape[1]
  causal_TS = jnp.tril(jnp.ones((t, t), bool))
  same_BTS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]) & (segment_ids_BT[:, None, :] > 0)
  return (causal_TS[None] & same_BTS)[:, None, None]


class Attention(nn.Module):
  """Grouped-query attention: n_kv_heads = n_heads is MHA, 1 is MQA."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT):
    c = self.cfg
    dtype = jnp.dtype(c.dtype)
    std, out_std = c.d_model ** -0.5, (c.n_heads * c.head_dim) ** -0.5 / (2 * c.n_layers) ** 0.5

    def proj(name, heads, axes):
      return Projection(c, (heads, c.head_dim), ("embed",) + axes, std, c.attn_bias, name=name)(x_BTD)

    q_BTNH = proj("q", c.n_heads, ("heads", "head_dim"))
    k_BTKH = proj("k", c.n_kv_heads, ("kv_heads", "head_dim"))
    v_BTKH = proj("v", c.n_kv_heads, ("kv_heads", "head_dim"))
    if c.positions == "rope":
      inv_freq = rope_frequencies(c)
      q_BTNH, k_BTKH = rope(q_BTNH, positions_BT, inv_freq), rope(k_BTKH, positions_BT, inv_freq)
    q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "head_dim"))

    b, t, _, h = q_BTNH.shape
    q_BTKGH = q_BTNH.reshape(b, t, c.n_kv_heads, c.n_heads // c.n_kv_heads, h)
    logits_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BTKH,
                              preferred_element_type=jnp.float32) * h ** -0.5
    logits_BKGTS = jnp.where(attention_mask(segment_ids_BT), logits_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
    out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs_BKGTS.astype(dtype), v_BTKH)
    out_BTNH = nn.with_logical_constraint(out_BTKGH.reshape(b, t, c.n_heads, h),
                                          ("batch", "length", "heads", "head_dim"))
    return Projection(c, (c.d_model,), ("heads", "head_dim", "embed"), out_std, c.attn_bias, n_in=2,
                      name="o")(out_BTNH)


class ConvMixer(nn.Module):
  """Causal depthwise-convolution token mixer (a gated short convolution, as in H3/Hyena-style hybrids).

  y = out(silu(gate(x)) * conv_K(value(x))), where conv_K mixes each channel over the previous K tokens of
  the same segment only, so packed documents stay apart as they do under attention.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT):
    del positions_BT
    c = self.cfg
    dtype = jnp.dtype(c.dtype)
    value_BTD = dense(c, c.d_model, c.d_model ** -0.5, ("embed", "mlp"), "value", c.attn_bias)(x_BTD)
    gate_BTD = dense(c, c.d_model, c.d_model ** -0.5, ("embed", "mlp"), "gate", c.attn_bias)(x_BTD)
    kernel_KD = self.param("kernel", init(c.conv_kernel ** -0.5, (None, "mlp")), (c.conv_kernel, c.d_model),
                           jnp.dtype(c.param_dtype))
    mixed_BTD = jnp.zeros_like(value_BTD)
    for k in range(c.conv_kernel):  # K is small (4): K shifted multiply-adds beat a general conv here
      shifted_BTD = jnp.pad(value_BTD, ((0, 0), (k, 0), (0, 0)))[:, :value_BTD.shape[1]]
      same_BT = jnp.pad(segment_ids_BT, ((0, 0), (k, 0)), constant_values=-1)[:, :segment_ids_BT.shape[1]]
      mixed_BTD = mixed_BTD + jnp.where((same_BT == segment_ids_BT)[..., None], shifted_BTD, 0) * kernel_KD[k].astype(dtype)
    h_BTD = nn.with_logical_constraint(nn.silu(gate_BTD) * mixed_BTD, ("batch", "length", "mlp"))
    return dense(c, c.d_model, c.d_model ** -0.5 / (2 * c.n_layers) ** 0.5, ("mlp", "embed"), "out", c.attn_bias)(h_BTD)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)); or GELU (tanh approximation, as GPT-2): down(gelu(up(x)))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    c = self.cfg
    up_BTF = dense(c, c.d_ff, c.d_model ** -0.5, ("embed", "mlp"), "up", c.mlp_bias)(x_BTD)
    if c.mlp == "swiglu":
      h_BTF = nn.silu(dense(c, c.d_ff, c.d_model ** -0.5, ("embed", "mlp"), "gate", c.mlp_bias)(x_BTD)) * up_BTF
    else:
      h_BTF = jax.nn.gelu(up_BTF, approximate=True)
    h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "mlp"))
    return dense(c, c.d_model, c.d_ff ** -0.5 / (2 * c.n_layers) ** 0.5, ("mlp", "embed"), "down", c.mlp_bias)(h_BTF)


class Block(nn.Module):
  """Residual block: a token mixer (attention "A" or conv "C") then an MLP.

  pre-norm:  x + mixer(norm(x)), then + mlp(norm(x))   (GPT-2, Llama: stable at depth)
  post-norm: norm(x + mixer(x)), then norm(x + mlp(x))  (the original Transformer)
  """
  cfg: ModelConfig
  kind: str = "A"

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT):
    c = self.cfg
    mixer = Attention(c, name="attn") if self.kind == "A" else ConvMixer(c, name="conv")

    def residual(x, norm_name, fn):
      if c.norm_position == "pre":
        return x + fn(Norm(c, name=norm_name)(x))
      return Norm(c, name=norm_name)(x + fn(x))

    x_BTD = residual(x_BTD, "attn_norm" if self.kind == "A" else "conv_norm",
                     lambda y: mixer(y, positions_BT, segment_ids_BT))
    x_BTD = residual(x_BTD, "mlp_norm", MLP(c, name="mlp"))
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
