"""The decoder: embedding (+ positions) -> n_layers blocks -> final norm -> output head.

Pure and functional: `logits = Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids)`.
With `scan_layers` the stack is one `nn.scan` over repeats of `layer_pattern` (parameters stacked on a
leading `layers` axis), so compile time does not grow with depth. `remat` recomputes each block in the
backward pass: "full" saves nothing inside a block, "dots" saves matmul outputs only.

`pipeline_stages > 1` runs that same stack as a GPipe pipeline over the mesh's `stage` axis
(llm_jax/model/pipeline.py) with the same parameters, so pipelining is a property of the run, not of the
model or its checkpoints. Under a `context` mesh axis with model.context_balance=zigzag the sequence is
reordered so that device i holds chunks i and 2c-1-i of 2c (even causal work, model/blockwise.py), and the
hidden states are put back in order before the head.

KV cache (the inference engine's, llm_jax/inference/engine.py): an explicit pytree made by `init_cache` and
passed in and out, so decoding stays a pure function:
    logits, cache = model.apply({"params": p}, tokens_BT, segment_ids_BT=real_BT, cache=cache)
appends T tokens to every row. All rows write the same T slots (cache["index"] onwards, one
dynamic_update_slice per cache array); tokens with segment id 0 are padding: marked invalid in
cache["valid"], never attended to, and not counted in the row's positions (cache["pos"]). Rows of
different lengths therefore share a batch with padding in front (left-padded chunks), and a row can
drop its last tokens later by marking them invalid (speculative decoding's rollback).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.model.config import ModelConfig
from llm_jax.model import blockwise, pipeline
from llm_jax.model.layers import SLOT_AXIS, Block, Embed, Norm, Projection, init, sinusoidal

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


def _layer_cache(cfg: ModelConfig, kind: str, batch: int, slots: int, dtype) -> dict:
  if kind == "C":  # the conv mixer keeps the last conv_kernel - 1 values of each row
    return {"state": jnp.zeros((batch, cfg.conv_kernel - 1, cfg.d_model), jnp.dtype(cfg.dtype))}
  b, s, k, h = batch, slots, cfg.n_kv_heads, cfg.head_dim
  entry = {"k": jnp.zeros((b, k, h, s), dtype), "v": jnp.zeros((b, k, s, h), dtype)}
  if dtype == jnp.int8:
    entry.update(k_scale=jnp.zeros((b, k, s), jnp.float32), v_scale=jnp.zeros((b, k, s), jnp.float32))
  return entry


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype=None) -> dict:
  """An empty cache of `slots` positions per row.

  {"index": int32 (the next slot, shared by all rows), "pos": [B] int32 (each row's next position),
   "valid": [B, S] bool (slots holding a token), "layers": one entry per layer}. Attention entries: keys
  [B, K, H, S] and values [B, K, S, H] (layers.SLOT_AXIS) in the compute dtype (default), another float
  dtype, or "int8" (absmax per row, slot and kv head; scales [B, K, S] in float32). Conv entries: the last
  conv_kernel - 1 values. Separate arrays per layer (not stacked) let decoding update each in place.
  """
  dtype = jnp.dtype(dtype or cfg.dtype)
  return {"index": jnp.zeros((), jnp.int32), "pos": jnp.zeros((batch,), jnp.int32),
          "valid": jnp.zeros((batch, slots), bool),
          "layers": [_layer_cache(cfg, kind, batch, slots, dtype) for kind in cfg.block_kinds]}


def unstack_layers(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
  """(cfg with scan_layers=False, params with the stacked layers split into layer_0, layer_1, ...).

  The same function in the layout decoding wants: with a cache every layer is a separate call anyway, and
  slicing stacked weights inside a decode loop costs a copy of them per step (2x slower at batch 1 on CPU).
  """
  if not cfg.scan_layers:
    return cfg, params
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(cfg.n_layers):
    group, slot = divmod(i, len(cfg.layer_pattern))
    out[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, g=group: x[g], params["layers"][f"block_{slot}"])
  return cfg.replace(scan_layers=False), out


def cache_slots(cache) -> int:
  """The number of slots each row of a cache holds."""
  return cache["valid"].shape[1]


class Transformer(nn.Module):
  cfg: ModelConfig
  pipeline_stages: int = 1  # > 1: the layer stack runs as a pipeline over the mesh's `stage` axis
  pipeline_microbatches: int = 1

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None, last_only: bool = False,
               hidden: bool = False):
    """Next-token logits [B, T, vocab] in float32; with a cache, (logits, updated cache) (module docstring).

    positions default to 0..T-1 (with a cache: each row's next positions, skipping padding); segment_ids
    (0 = padding) default to one segment per row. Attention (and the conv mixer) is causal and never
    crosses segments. With last_only, logits [B, vocab] of the last position only (the head's matmul is
    then done once per row). With hidden (no cache), the final-normed hidden states [B, T, d_model] in float32
    instead of logits: the trunk that model/heads.py puts a scalar head on (the LM head is then not created).
    """
    c = self.cfg
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones_like(tokens_BT)
    if positions_BT is None and cache is not None:  # each row continues from its own position
      positions_BT = jnp.maximum(cache["pos"][:, None] + jnp.cumsum(segment_ids_BT > 0, axis=1) - 1, 0)
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    ways = blockwise.context_ways()
    zigzag = cache is None and c.context_balance == "zigzag" and ways > 1
    if zigzag:  # device i of the context axis gets chunks i and 2c-1-i (attention masks them at their places)
      tokens_BT, positions_BT, segment_ids_BT = (blockwise.zigzag(x, ways) for x in
                                                 (tokens_BT, positions_BT, segment_ids_BT))

    embed = Embed(c.vocab_size, c.d_model, dtype=dtype, param_dtype=pdtype,
                  embedding_init=init(0.02 if c.tie_embeddings else 1.0, ("vocab", "embed")), name="embed")
    x_BTD = embed(tokens_BT)
    if c.positions == "learned":
      x_BTD = x_BTD + Embed(c.max_seq_len, c.d_model, dtype=dtype, param_dtype=pdtype, rows_axis=None,
                            embedding_init=init(0.01, (None, "embed")), name="pos_embed")(positions_BT)
    elif c.positions == "sinusoidal":
      x_BTD = x_BTD + sinusoidal(positions_BT, c.d_model).astype(dtype)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))

    if cache is not None and self.pipeline_stages > 1:
      raise ValueError("decoding with a cache runs the plain layer stack: use model.clone(pipeline_stages=1)")
    if self.pipeline_stages > 1 and not self.is_initializing():
      if not c.scan_layers:
        raise ValueError("pipeline parallelism (mesh.stage > 1) needs model.scan_layers=True")
      group = _PatternGroup(c)
      x_BTD = pipeline.gpipe(lambda p, x, pos, seg: group.apply({"params": p}, x, pos, seg)[0],
                             self.variables["params"]["layers"], x_BTD, positions_BT, segment_ids_BT,
                             stages=self.pipeline_stages, microbatches=self.pipeline_microbatches)
    elif cache is not None:  # decoding: the layers unrolled, so each layer's cache is its own array
      x_BTD, new = self._cached_layers(x_BTD, positions_BT, segment_ids_BT, cache)
    elif c.scan_layers:
      stack = nn.scan(_PatternGroup, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=c.n_layers // len(c.layer_pattern),
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTD, _ = stack(c, name="layers")(x_BTD, positions_BT, segment_ids_BT)
    else:
      for i, kind in enumerate(c.block_kinds):
        x_BTD = _block_cls(c)(c, kind, name=f"layer_{i}")(x_BTD, positions_BT, segment_ids_BT)
    if zigzag:
      x_BTD = nn.with_logical_constraint(blockwise.unzigzag(x_BTD, ways), ("batch", "length", "embed"))

    if last_only:
      x_BTD = x_BTD[:, -1:]
    if c.norm_position == "pre":  # post-norm blocks already end in a norm
      x_BTD = Norm(c, name="final_norm")(x_BTD)
    if hidden:
      return nn.with_logical_constraint(x_BTD.astype(jnp.float32), ("batch", "length", "embed"))
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = Projection(c, (c.vocab_size,), ("embed", "vocab"), c.d_model ** -0.5 / 4, False,
                              name="head")(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))
    if last_only:
      logits_BTV = logits_BTV[:, 0]
    if cache is None:
      return logits_BTV
    write = lambda name, old, upd: (jax.lax.dynamic_update_slice_in_dim(old, upd, cache["index"], SLOT_AXIS[name])
                                    if name in SLOT_AXIS else upd)
    layers = [{name: write(name, layer[name], entry[name]) for name in layer}
              for layer, entry in zip(cache["layers"], new)]
    real_BT = segment_ids_BT > 0
    return logits_BTV, {"index": cache["index"] + tokens_BT.shape[1],
                        "pos": cache["pos"] + jnp.sum(real_BT, axis=1, dtype=jnp.int32),
                        "valid": jax.lax.dynamic_update_slice_in_dim(cache["valid"], real_BT, cache["index"], 1),
                        "layers": layers}

  def _cached_layers(self, x_BTD, positions_BT, segment_ids_BT, cache):
    """Runs every block on its own layer cache; returns (x, the new cache entries of every layer)."""
    c, new = self.cfg, []
    if c.scan_layers:  # sliced here on every call: the engine unstacks once instead (unstack_layers)
      _, per_layer = unstack_layers(c, self.variables["params"])
    for i, kind in enumerate(c.block_kinds):
      if c.scan_layers:
        block = functools.partial(Block(c, kind).apply, {"params": per_layer[f"layer_{i}"]})
      else:
        block = _block_cls(c)(c, kind, name=f"layer_{i}")
      x_BTD, entry = block(x_BTD, positions_BT, segment_ids_BT, cache["layers"][i], cache["valid"])
      new.append(entry)
    return x_BTD, new
