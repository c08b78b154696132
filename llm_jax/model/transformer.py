"""The Llama-style decoder: embedding -> n_layers x Block -> RMSNorm -> untied output head.

Pure and functional: `logits = Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids)`.
With `scan_layers` the layer stack is one `nn.scan` (parameters stacked on a leading `layers` axis), so
compile time does not grow with depth; `remat="full"` recomputes each block in the backward pass.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.model.layers import Block, ModelConfig, RMSNorm, _init, attention_mask


class _ScannedBlock(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask):
    return _block_cls(self.cfg)(self.cfg, name="block")(x_BTD, positions_BT, mask), None


def _block_cls(cfg: ModelConfig):
  return nn.remat(Block, prevent_cse=not cfg.scan_layers) if cfg.remat == "full" else Block


class Transformer(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    """Next-token logits [B, T, vocab] in float32.

    positions default to 0..T-1; segment_ids (0 = padding) default to one segment per row. Attention is
    causal and never crosses segments.
    """
    c = self.cfg
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones_like(tokens_BT)
    mask = attention_mask(segment_ids_BT)

    embed = nn.Embed(c.vocab_size, c.d_model, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                     embedding_init=_init(1.0, ("vocab", "embed")), name="embed")
    x_BTD = nn.with_logical_constraint(embed(tokens_BT), ("batch", "length", "embed"))

    if c.scan_layers:
      stack = nn.scan(_ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=c.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTD, _ = stack(c, name="layers")(x_BTD, positions_BT, mask)
    else:
      for i in range(c.n_layers):
        x_BTD = _block_cls(c)(c, name=f"layer_{i}")(x_BTD, positions_BT, mask)

    x_BTD = RMSNorm(c.norm_eps, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype), name="final_norm")(x_BTD)
    logits_BTV = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.dtype(c.dtype),
                          param_dtype=jnp.dtype(c.param_dtype), kernel_init=_init(c.d_model ** -0.5 / 4,
                                                                                   ("embed", "vocab")),
                          name="head")(x_BTD)
    return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))
