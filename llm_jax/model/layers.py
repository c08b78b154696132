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

from llm_jax.model import blockwise, quant
from llm_jax.model.config import ModelConfig


def init(std: float, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def dense(cfg: ModelConfig, features: int, std: float, axes: tuple, name: str, use_bias: bool) -> "Projection":
  """A Dense layer (kernel [in, features], optional bias) with the config's dtypes and logical axes (in, out)."""
  return Projection(cfg, (features,), axes, std, use_bias, name=name)


class Embed(nn.Embed):
  """nn.Embed whose lookup reads the table gathered along fsdp, as FSDP does with every weight before use.

  A lookup in the fsdp-split table would give rows split along `embed`, which XLA can only reshard to the
  batch-split activations by replicating them (it warns "involuntary full rematerialization").
  """

  rows_axis: str | None = "vocab"  # the table's first dimension's logical name (None: position tables)

  def __call__(self, inputs):
    table = nn.with_logical_constraint(self.embedding, (self.rows_axis, None))
    return jnp.take(table.astype(self.dtype or table.dtype), inputs, axis=0)


def matmul(x, kernel, n_in: int = 1):
  """x [..., in...] @ kernel [in..., out...] (the last n_in dims of x contracted) as one 2-D [M, K] x [K, N] dot,
  accumulated in float32 and returned in x's dtype (x and kernel share it).

  The value is jnp.tensordot(x, kernel, n_in); the form is for XLA:CPU (README "Training throughput"):
  - The weight gradient of a 3-D tensordot contracts over (batch, length), and XLA then lays the upstream
    gradient out transposed, fusing SwiGLU's elementwise backward into a strided transpose that alone took
    a quarter of the float32 training step.
  - A bfloat16 product runs on the CPU's bf16 matrix units (AMX) only when it accumulates into float32 and
    both operands are row-major: 1.5 ms at [2048, 384] x [384, 1536], against 9 ms with a transposed
    operand, which is what the gradients' products x^T g and g w^T are when XLA folds the transposes into
    the dot. For narrower dtypes `_dot2d`'s gradient makes the transposes real copies on the CPU (bf16 dot
    forward and backward 21 -> 7 ms at that shape) and leaves other platforms to fold them; float32 products
    run as fast either way there, and skip the copies.
  """
  lead, out = x.shape[:x.ndim - n_in], kernel.shape[n_in:]
  k = math.prod(kernel.shape[:n_in])
  dot = _dot2d if x.dtype != jnp.float32 else _dot_f32_accumulated
  return dot(x.reshape(-1, k), kernel.reshape(k, -1)).reshape(lead + out)


def _dot_f32_accumulated(x_MK, w_KN):
  """[M, K] x [K, N] accumulated in float32, in x's dtype."""
  return jnp.dot(x_MK, w_KN, preferred_element_type=jnp.float32).astype(x_MK.dtype)


_dot2d = jax.custom_vjp(_dot_f32_accumulated)  # the same, with the gradient below


def _dot2d_fwd(x_MK, w_KN):
  return _dot2d(x_MK, w_KN), (x_MK, w_KN)


def _dot2d_bwd(residuals, g_MN):
  x_MK, w_KN = residuals
  g_MN = g_MN.astype(x_MK.dtype)
  dx_MK = jnp.dot(g_MN, _transposed(w_KN), preferred_element_type=jnp.float32).astype(x_MK.dtype)
  dw_KN = jnp.dot(_transposed(x_MK), g_MN, preferred_element_type=jnp.float32).astype(w_KN.dtype)
  return dx_MK, dw_KN


_dot2d.defvjp(_dot2d_fwd, _dot2d_bwd)


def _transposed(a_IJ):
  """a.T [J, I]; on the CPU a real copy in row-major order (through a unit axis, which XLA cannot fold into
  the consuming dot as it folds a plain transpose); elsewhere a plain transpose."""
  return jax.lax.platform_dependent(
      a_IJ, cpu=lambda a: jnp.transpose(a[:, :, None], (1, 0, 2)).reshape(a.shape[::-1]), default=jnp.transpose)


class Projection(nn.Module):
  """x @ kernel (+ bias) with a multi-axis kernel: [D] -> [N, H] (q, k, v), [N, H] -> [D] (o, n_in=2), [D] -> [F].

  The kernel is created in its final shape, so its logical axis names fit it at every point (flax's
  DenseGeneral initialises a flattened 2-D kernel, which clashes with the names once rules are active).
  With cfg.quant != "none" the kernel is int8 with a float32 `scale` per output channel (shape `features`),
  made by llm_jax/model/quant.py. "int8": weight-only (the kernel is converted to the compute dtype for
  the matmul). "w8a8": the input is quantized too, per token, and the matmul runs in int8 with int32
  accumulation (on XLA:CPU the faster one at large batch; see the README's inference numbers).
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
    shape = x.shape[-self.n_in:] + self.features
    if self.cfg.quant != "none":
      kernel = self.param("kernel", _zeros(self.axes), shape, jnp.int8)
      scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, self.axes[self.n_in:]),
                         self.features, jnp.float32)
      if self.cfg.quant == "int8":
        y = jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=self.n_in) * scale.astype(dtype)
      else:  # w8a8: x quantized per token (absmax over the contracted dims), an int8 x int8 -> int32 matmul
        contracted = tuple(range(x.ndim - self.n_in, x.ndim))
        x_q, x_scale = quant.absmax_int8(x, contracted)
        y_int = jax.lax.dot_general(x_q, kernel, ((contracted, tuple(range(self.n_in))), ((), ())),
                                    preferred_element_type=jnp.int32)
        x_scale = x_scale.reshape(x_scale.shape[:x.ndim - self.n_in] + (1,) * len(self.features))
        y = (y_int.astype(jnp.float32) * x_scale * scale).astype(dtype)
    else:
      kernel = self.param("kernel", init(self.std, self.axes), shape, pdtype)
      y = matmul(x.astype(dtype), kernel.astype(dtype), self.n_in)
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


def rope_frequencies(cfg: ModelConfig) -> tuple:
  """(inverse frequencies [head_dim / 2], attention factor): theta^(-2i/H), changed by cfg.rope_scaling to
  reach past the trained length, each as transformers computes it (`modeling_rope_utils`), so converted
  checkpoints keep their numerics. factor = rope_scaling_factor, L = rope_original_max_len:

    linear  position interpolation (Chen et al. 2023): every frequency / factor, i.e. positions / factor.
    ntk     "NTK-aware" interpolation: theta * factor^(H/(H-2)); high frequencies (local order) stay nearly
            as trained, the lowest is divided by factor. It is a change of theta, which is how it is written
            to Hugging Face files (transformers' "dynamic" type computes it per length at run time).
    yarn    YaRN (Peng et al. 2023): frequencies that turn more than beta_fast times within L are kept, those
            turning less than beta_slow times are interpolated (/ factor), a linear ramp in between; and
            queries and keys are scaled by the attention factor (default 0.1 ln(factor) + 1), which sharpens
            the attention that interpolation flattens.
    llama3  Llama 3.1 (Meta's reference code, `_compute_llama3_parameters`): wavelengths shorter than
            L / high_freq_factor are kept, longer than L / low_freq_factor are divided by factor, and the band
            in between is interpolated smoothly.
  """
  half = cfg.head_dim // 2
  inv_freq = 1.0 / rope_base(cfg) ** (jnp.arange(half, dtype=jnp.float32) / half)
  factor, old = cfg.rope_scaling_factor, cfg.rope_original_max_len
  if cfg.rope_scaling == "linear":
    return inv_freq / factor, 1.0
  if cfg.rope_scaling == "yarn":
    # dimension index (of head_dim) whose frequency turns `turns` times over the original length
    dim = lambda turns: cfg.head_dim * math.log(old / (turns * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
    low = max(math.floor(dim(cfg.rope_yarn_beta_fast)), 0)
    high = min(math.ceil(dim(cfg.rope_yarn_beta_slow)), cfg.head_dim - 1)
    ramp = jnp.clip((jnp.arange(half, dtype=jnp.float32) - low) / max(high - low, 0.001), 0, 1)
    attention_factor = cfg.rope_attention_factor or yarn_mscale(factor)
    return inv_freq / factor * ramp + inv_freq * (1 - ramp), attention_factor
  if cfg.rope_scaling == "llama3":
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    inv_freq = jnp.where(medium, smoothed, scaled)
  return inv_freq, 1.0


def rope_base(cfg: ModelConfig) -> float:
  """The theta frequencies are computed from: rope_theta, or with NTK-aware scaling theta * factor^(H/(H-2))."""
  if cfg.rope_scaling == "ntk":
    return cfg.rope_theta * cfg.rope_scaling_factor ** (cfg.head_dim / (cfg.head_dim - 2))
  return cfg.rope_theta


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  """YaRN's attention scale for a scaling factor (transformers' yarn_get_mscale): 0.1 mscale ln(factor) + 1."""
  return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope(x_BTNH, positions_BT, inv_freq_H2, attention_factor: float = 1.0):
  """Rotary embedding, 'rotate half' layout (Hugging Face Llama convention: no weight permutation needed).

  Rotates pairs (i, i + H/2) by angle position * inv_freq[i]; because q.k then depends only on the
  difference of positions, per-document positions make packed rows behave like separate sequences.
  """
  angle_BTH = positions_BT.astype(jnp.float32)[..., None] * inv_freq_H2
  sin, cos = (f(angle_BTH)[:, :, None, :] * attention_factor for f in (jnp.sin, jnp.cos))
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


def attention_logits(q_BTKGH, k_BTKH, segment_ids_BT):
  """Scaled q.k scores [B, K, G, T, S] in float32, masked (attention_mask) with float32's minimum.

  The heads are moved in front of the positions first (queries [B, K, G, T, H], keys [B, K, S, H]), so that
  the product and its gradients are plain batched matmuls over (B, K, G): read straight from [B, T, K, G, H],
  XLA:CPU transposes inside the products (plain_attention fwd+bwd of one layer at the bench_cpu shape: 27 ms
  that way, 21 ms this way).
  """
  q_BKGTH, k_BKSH = jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4)), jnp.transpose(k_BTKH, (0, 2, 1, 3))
  logits_BKGTS = jnp.einsum("bkgth,bksh->bkgts", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32)
  logits_BKGTS = logits_BKGTS * q_BTKGH.shape[-1] ** -0.5
  return jnp.where(attention_mask(segment_ids_BT), logits_BKGTS, jnp.finfo(jnp.float32).min)


def plain_attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT):
  """Attention that materialises the [T, T] scores ([B, T, K, G, H] out, in v's dtype); model/blockwise.py
  computes the same without them. Values are multiplied in [B, K, S, H] as attention_logits reads keys."""
  probs_BKGTS = jax.nn.softmax(attention_logits(q_BTKGH, k_BTKH, segment_ids_BT), axis=-1)
  out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs_BKGTS.astype(v_BTKH.dtype), jnp.transpose(v_BTKH, (0, 2, 1, 3)))
  return jnp.transpose(out_BKGTH, (0, 3, 1, 2, 4))


# Cache layouts, chosen so decoding reads the cache with plain batched matmuls over (B, K) and writes new
# slots with one dynamic_update_slice: keys [B, K, H, S] (q.k contracts H), values [B, K, S, H] (p.v
# contracts S), int8 scales [B, K, S]. SLOT_AXIS is where each cache array keeps its slots.
SLOT_AXIS = {"k": 3, "v": 2, "k_scale": 2, "v_scale": 2}


def cache_entry(k_BTKH, v_BTKH, cache_dtype) -> dict:
  """New keys/values in the cache's layout and dtype (T new slots): int8 with per-head scales if int8."""
  if cache_dtype == jnp.int8:  # a scale per (row, position, kv head)
    (k, k_scale), (v, v_scale) = quant.absmax_int8(k_BTKH, (-1,)), quant.absmax_int8(v_BTKH, (-1,))
    entry = {"k": k, "v": v, "k_scale": k_scale[..., 0], "v_scale": v_scale[..., 0]}
  else:
    entry = {"k": k_BTKH.astype(cache_dtype), "v": v_BTKH.astype(cache_dtype)}
  to_layout = {"k": (0, 2, 3, 1), "v": (0, 2, 1, 3), "k_scale": (0, 2, 1), "v_scale": (0, 2, 1)}
  return {name: jnp.transpose(x, to_layout[name]) for name, x in entry.items()}


class Attention(nn.Module):
  """Grouped-query attention: n_kv_heads = n_heads is MHA, 1 is MQA.

  Without a cache: attention within the given tokens (causal, within segments). With a cache (a dict of
  keys [B, K, H, S] and values [B, K, S, H], float or int8 with per-head scales) and valid_BS (which
  slots of each row hold a token): the T new tokens attend to the valid cached slots and causally to each
  other (segment id 0 marks padding); returns (output, cache_entry of the new keys/values).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache=None, valid_BS=None):
    c = self.cfg
    std, out_std = c.d_model ** -0.5, (c.n_heads * c.head_dim) ** -0.5 / (2 * c.n_layers) ** 0.5

    def proj(name, heads, axes):
      return Projection(c, (heads, c.head_dim), ("embed",) + axes, std, c.attn_bias, name=name)(x_BTD)

    def output(out_BTKGH):  # the heads' outputs projected back to d_model
      out_BTNH = nn.with_logical_constraint(out_BTKGH.reshape(b, t, c.n_heads, h),
                                            ("batch", "length", "heads", "head_dim"))
      return Projection(c, (c.d_model,), ("heads", "head_dim", "embed"), out_std, c.attn_bias, n_in=2,
                        name="o")(out_BTNH)

    q_BTNH = proj("q", c.n_heads, ("heads", "head_dim"))
    k_BTKH = proj("k", c.n_kv_heads, ("kv_heads", "head_dim"))
    v_BTKH = proj("v", c.n_kv_heads, ("kv_heads", "head_dim"))
    if c.positions == "rope":
      inv_freq, factor = rope_frequencies(c)
      q_BTNH, k_BTKH = rope(q_BTNH, positions_BT, inv_freq, factor), rope(k_BTKH, positions_BT, inv_freq, factor)
    q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "head_dim"))

    b, t, _, h = q_BTNH.shape
    q_BTKGH = q_BTNH.reshape(b, t, c.n_kv_heads, c.n_heads // c.n_kv_heads, h)
    if cache is None and blockwise.context_ways() > 1:  # the sequence is split over the mesh's context axis
      return output(blockwise.context_parallel(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, c.attention_block,
                                               impl=c.context_impl, balance=c.context_balance == "zigzag"))
    if cache is None and c.attention_impl == "blockwise":
      return output(blockwise.attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, c.attention_block))
    if cache is None:
      return output(plain_attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT))
    out_BTD = output(self._with_cache(q_BTKGH, attention_logits(q_BTKGH, k_BTKH, segment_ids_BT), v_BTKH, cache,
                                      valid_BS))
    return out_BTD, cache_entry(k_BTKH, v_BTKH, cache["k"].dtype)

  def _with_cache(self, q_BTKGH, new_logits_BKGTT, v_BTKH, cache, valid_BS):
    """One softmax over [valid cached slots] + [new tokens]; int8 scales are applied to the logits and
    probabilities rather than to the cache, so the cache is never dequantized as a whole.

    The two cache matmuls are written as [B, K] batches of [G*T, H] x [H, S] and [G*T, S] x [S, H], with the
    queries first: the form XLA:CPU runs fastest (other operand orders were ~4x slower when decoding).
    """
    dtype = jnp.dtype(self.cfg.dtype)
    b, t, k, g, h = q_BTKGH.shape
    k_BKHS, v_BKSH = cache["k"], cache["v"]
    slots = v_BKSH.shape[2]
    q_BKMH = jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4)).reshape(b, k, g * t, h).astype(jnp.float32)
    # Logits in float32 from float32 operands (XLA:CPU has no bf16 x bf16 -> f32 batched dot).
    cached_BKMS = jnp.einsum("bkmh,bkhs->bkms", q_BKMH, k_BKHS.astype(jnp.float32)) * h ** -0.5
    cached_BKGTS = cached_BKMS.reshape(b, k, g, t, slots)
    if "k_scale" in cache:
      cached_BKGTS = cached_BKGTS * cache["k_scale"][:, :, None, None, :]
    cached_BKGTS = jnp.where(valid_BS[:, None, None, None, :], cached_BKGTS, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(jnp.concatenate([cached_BKGTS, new_logits_BKGTT], axis=-1), axis=-1)
    cached_probs, new_probs = probs[..., :slots], probs[..., slots:]
    if "v_scale" in cache:
      cached_probs = cached_probs * cache["v_scale"][:, :, None, None, :]
    cached_BKMH = jnp.einsum("bkms,bksh->bkmh", cached_probs.reshape(b, k, g * t, slots).astype(dtype),
                             v_BKSH.astype(dtype))
    cached_BTKGH = jnp.transpose(cached_BKMH.reshape(b, k, g, t, h), (0, 3, 1, 2, 4))
    return cached_BTKGH + jnp.einsum("bkgts,bskh->btkgh", new_probs.astype(dtype), v_BTKH)


class ConvMixer(nn.Module):
  """Causal depthwise-convolution token mixer (a gated short convolution, as in H3/Hyena-style hybrids).

  y = out(silu(gate(x)) * conv_K(value(x))), where conv_K mixes each channel over the previous K tokens of
  the same segment only, so packed documents stay apart as they do under attention. With a cache
  ({"state": the last K-1 values of each row [B, K-1, D]}) the new tokens (segment id > 0; padding first,
  as the engine lays out chunks) continue from the state; returns (output, {"state": updated}).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache=None, valid_BS=None):
    del positions_BT, valid_BS
    c = self.cfg
    dtype = jnp.dtype(c.dtype)
    value_BTD = dense(c, c.d_model, c.d_model ** -0.5, ("embed", "mlp"), "value", c.attn_bias)(x_BTD)
    gate_BTD = dense(c, c.d_model, c.d_model ** -0.5, ("embed", "mlp"), "gate", c.attn_bias)(x_BTD)
    kernel_KD = self.param("kernel", init(c.conv_kernel ** -0.5, (None, "mlp")), (c.conv_kernel, c.d_model),
                           jnp.dtype(c.param_dtype))
    t, back = value_BTD.shape[1], c.conv_kernel - 1
    if cache is None:
      mixed_BTD = jnp.zeros_like(value_BTD)
      for k in range(c.conv_kernel):  # K is small (4): K shifted multiply-adds beat a general conv here
        shifted_BTD = jnp.pad(value_BTD, ((0, 0), (k, 0), (0, 0)))[:, :t]
        same_BT = jnp.pad(segment_ids_BT, ((0, 0), (k, 0)), constant_values=-1)[:, :t]
        mixed_BTD = mixed_BTD + jnp.where((same_BT == segment_ids_BT)[..., None], shifted_BTD, 0) * kernel_KD[k].astype(dtype)
      new = None
    else:
      # history = state ++ chunk; the token k back from chunk position t is history[back + t - k] when that
      # is a new token, else it reaches over the chunk's leading padding into the state.
      history_BXD = jnp.concatenate([cache["state"].astype(dtype), value_BTD], axis=1)
      pad_B1 = t - jnp.sum(segment_ids_BT > 0, axis=1, keepdims=True)

      def back_index(t_BT, k):
        within = t_BT - k >= pad_B1
        return jnp.where(within, back + t_BT - k, back + t_BT - pad_B1 - k)

      t_BT = jnp.broadcast_to(jnp.arange(t)[None, :], segment_ids_BT.shape)
      mixed_BTD = jnp.zeros_like(value_BTD)
      for k in range(c.conv_kernel):
        shifted_BTD = jnp.take_along_axis(history_BXD, jnp.maximum(back_index(t_BT, k), 0)[..., None], axis=1)
        mixed_BTD = mixed_BTD + shifted_BTD * kernel_KD[k].astype(dtype)
      last_BK = back_index(jnp.full((t_BT.shape[0], back), t), jnp.arange(back, 0, -1)[None, :])
      new = {"state": jnp.take_along_axis(history_BXD, jnp.maximum(last_BK, 0)[..., None], axis=1)
             .astype(cache["state"].dtype)}
    h_BTD = nn.with_logical_constraint(nn.silu(gate_BTD) * mixed_BTD, ("batch", "length", "mlp"))
    out_BTD = dense(c, c.d_model, c.d_model ** -0.5 / (2 * c.n_layers) ** 0.5, ("mlp", "embed"), "out",
                    c.attn_bias)(h_BTD)
    return out_BTD if cache is None else (out_BTD, new)


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

  With a cache (the mixer's) returns (x, the mixer's new cache entry).
  """
  cfg: ModelConfig
  kind: str = "A"

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache=None, valid_BS=None):
    c = self.cfg
    mixer = Attention(c, name="attn") if self.kind == "A" else ConvMixer(c, name="conv")
    entry = {}

    def mix(y):
      if cache is None:
        return mixer(y, positions_BT, segment_ids_BT)
      y, entry["new"] = mixer(y, positions_BT, segment_ids_BT, cache, valid_BS)
      return y

    def residual(x, norm_name, fn):
      if c.norm_position == "pre":
        return x + fn(Norm(c, name=norm_name)(x))
      return Norm(c, name=norm_name)(x + fn(x))

    x_BTD = residual(x_BTD, "attn_norm" if self.kind == "A" else "conv_norm", mix)
    x_BTD = residual(x_BTD, "mlp_norm", MLP(c, name="mlp"))
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
    return x_BTD if cache is None else (x_BTD, entry["new"])
