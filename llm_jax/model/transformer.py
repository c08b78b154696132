"""The decoder: embedding (+ positions) -> n_layers blocks -> final norm -> output head.

Pure and functional: `logits = Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids)`.
With `scan_layers` the stack is one `nn.scan` over repeats of `layer_pattern` (parameters stacked on a
leading `layers` axis), so compile time does not grow with depth. `remat` recomputes each block in the
backward pass: "full" saves nothing inside a block, "dots" saves matmul outputs only.

`pipeline_stages > 1` runs that same stack as a GPipe pipeline over the mesh's `stage` axis
(llm_jax/model/pipeline.py) with the same parameters, so pipelining is a property of the run, not of the
model or its checkpoints.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.model.config import ModelConfig
from llm_jax.model import pipeline
from llm_jax.model.layers import Block, Embed, Norm, init, sinusoidal

_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _block_cls(cfg: ModelConfig):
  if cfg.remat == "none":
    return Block
  return nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class _PatternGroup(nn.Module):
  """One repeat of layer_pattern (e.g. "AC" = attention block then conv block): the body of the scan."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT):
    for i, kind in enumerate(self.cfg.layer_pattern):
      x_BTD = _block_cls(self.cfg)(self.cfg, kind, name=f"block_{i}")(x_BTD, positions_BT, segment_ids_BT)
    return x_BTD, None


class Transformer(nn.Module):
  cfg: ModelConfig
  pipeline_stages: int = 1  # > 1: the layer stack runs as a pipeline over the mesh's `stage` axis
  pipeline_microbatches: int = 1

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    """Next-token logits [B, T, vocab] in float32.

    positions default to 0..T-1; segment_ids (0 = padding) default to one segment per row. Attention (and
    the conv mixer) is causal and never crosses segments.
    """
    c = self.cfg
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones_like(tokens_BT)

    embed = Embed(c.vocab_size, c.d_model, dtype=dtype, param_dtype=pdtype,
                  embedding_init=init(0.02 if c.tie_embeddings else 1.0, ("vocab", "embed")), name="embed")
    x_BTD = embed(tokens_BT)
    if c.positions == "learned":
      x_BTD = x_BTD + Embed(c.max_seq_len, c.d_model, dtype=dtype, param_dtype=pdtype, rows_axis=None,
                            embedding_init=init(0.01, (None, "embed")), name="pos_embed")(positions_BT)
    elif c.positions == "sinusoidal":
      x_BTD = x_BTD + sinusoidal(positions_BT, c.d_model).astype(dtype)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))

    if self.pipeline_stages > 1 and not self.is_initializing():
      if not c.scan_layers:
        raise ValueError("pipeline parallelism (mesh.stage > 1) needs model.scan_layers=True")
      group = _PatternGroup(c)
      x_BTD = pipeline.gpipe(lambda p, x, pos, seg: group.apply({"params": p}, x, pos, seg)[0],
                             self.variables["params"]["layers"], x_BTD, positions_BT, segment_ids_BT,
                             stages=self.pipeline_stages, microbatches=self.pipeline_microbatches)
    elif c.scan_layers:
      stack = nn.scan(_PatternGroup, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=c.n_layers // len(c.layer_pattern),
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTD, _ = stack(c, name="layers")(x_BTD, positions_BT, segment_ids_BT)
    else:
      for i, kind in enumerate(c.block_kinds):
        x_BTD = _block_cls(c)(c, kind, name=f"layer_{i}")(x_BTD, positions_BT, segment_ids_BT)

    if c.norm_position == "pre":  # post-norm blocks already end in a norm
      x_BTD = Norm(c, name="final_norm")(x_BTD)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = nn.Dense(c.vocab_size, use_bias=False, dtype=dtype, param_dtype=pdtype,
                            kernel_init=init(c.d_model ** -0.5 / 4, ("embed", "vocab")), name="head")(x_BTD)
    return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))
