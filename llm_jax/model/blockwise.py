"""Memory-lean attention in pure JAX: FlashAttention-2's algorithm (blocks, online softmax, recomputation in
the backward pass), for any backend, with the causal and packed-segment mask of layers.attention_mask.

    out_BTKGH = attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block=512)
    out_BTKGH = context_parallel(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block=512)  # T split over `context`

Plain attention materialises float32 logits and probabilities of [B, K, G, T, T] and keeps them for the
backward pass: at T = 32k and 32 heads that is 128 GiB per sequence. Here the forward pass walks query blocks
(lax.map) and, inside each, the key blocks at or before it (a fori_loop whose bound is the query block:
blocks above the diagonal are skipped, not masked), keeping a running max, normaliser and output; it saves
only the output and the log-sum-exp per query ([B, K, G, T]). The backward pass (a custom VJP) recomputes
each block's probabilities from them: it walks key blocks, and for each the query blocks at or after it,
accumulating dK and dV per key block and dQ across all. Work memory is O(block^2) per (batch, head) and the
residuals O(T). Skipping the blocks past the diagonal halves the score FLOPs of the forward pass
(plain attention computes all T x T and masks half); the backward pass recomputes the scores once more.

Under a mesh with a `context` axis (sharding.RULES: length -> context) the model's attention always runs
here, through context_parallel: each device's queries against the all-gathered keys and values.

Queries of padding (segment id 0) attend to nothing; their output is 0 here (plain attention averages every
value there). Nothing reads those positions: losses mask them out.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = jnp.finfo(jnp.float32).min


def _blocks(x, n: int, block: int, axis: int):
  """x with `axis` split into (n, block), the block index moved to the front."""
  shape = x.shape[:axis] + (n, block) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _mask(seg_q_BQ, seg_k_BS, i, j, block: int, q_offset):
  """[B, 1, 1, Q, S] causal-and-same-segment mask of query block i (its first query at q_offset + i * block
  of the whole sequence) against key block j."""
  q_idx = q_offset + i * block + jnp.arange(block)
  k_idx = j * block + jnp.arange(block)
  causal = q_idx[:, None] >= k_idx[None, :]
  same = (seg_q_BQ[:, :, None] == seg_k_BS[:, None, :]) & (seg_k_BS[:, None, :] > 0)
  return (causal[None] & same)[:, None, None]


def _forward(q, k, v, seg_q, seg_k, q_offset, block: int):
  """(out [B, K, G, Tq, H] in q's dtype, lse [B, K, G, Tq] float32); q as [B, K, G, Tq, H], k and v as
  [B, K, Tk, H]; the queries are positions q_offset.. of the keys' sequence (a multiple of block)."""
  b, kh, g, tq, h = q.shape
  nq, nk = tq // block, k.shape[2] // block
  scale = h ** -0.5
  q_n, seg_q_n = _blocks(q, nq, block, 3), _blocks(seg_q, nq, block, 1)
  k_n, v_n, seg_k_n = _blocks(k, nk, block, 2), _blocks(v, nk, block, 2), _blocks(seg_k, nk, block, 1)

  def query_block(args):
    i, q_i, seg_i = args

    def key_block(j, carry):
      m, l, acc = carry
      logits = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_n[j], preferred_element_type=jnp.float32) * scale
      logits = jnp.where(_mask(seg_i, seg_k_n[j], i, j, block, q_offset), logits, _NEG)
      m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
      p = jnp.exp(logits - m_new[..., None]) * (logits > _NEG)  # masked entries count 0, even in a masked row
      correction = jnp.exp(m - m_new)
      acc = acc * correction[..., None] + jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), v_n[j],
                                                     preferred_element_type=jnp.float32)
      return m_new, l * correction + jnp.sum(p, axis=-1), acc

    init = (jnp.full((b, kh, g, block), _NEG), jnp.zeros((b, kh, g, block)), jnp.zeros((b, kh, g, block, h)))
    m, l, acc = jax.lax.fori_loop(0, q_offset // block + i + 1, key_block, init)  # blocks past the diagonal: none
    safe = jnp.where(l > 0, l, 1.0)
    return (acc / safe[..., None]).astype(q.dtype), jnp.where(l > 0, m + jnp.log(safe), -jnp.inf)

  out_n, lse_n = jax.lax.map(query_block, (jnp.arange(nq), q_n, seg_q_n))
  return jnp.moveaxis(out_n, 0, 3).reshape(q.shape), jnp.moveaxis(lse_n, 0, 3).reshape(b, kh, g, tq)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, seg_q, seg_k, q_offset, block):
  return _forward(q, k, v, seg_q, seg_k, q_offset, block)[0]


def _attention_fwd(q, k, v, seg_q, seg_k, q_offset, block):
  out, lse = _forward(q, k, v, seg_q, seg_k, q_offset, block)
  return out, (q, k, v, seg_q, seg_k, q_offset, out, lse)


def _attention_bwd(block, residuals, d_out):
  q, k, v, seg_q, seg_k, q_offset, out, lse = residuals
  b, kh, g, tq, h = q.shape
  nq, nk = tq // block, k.shape[2] // block
  scale = h ** -0.5
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, Tq]
  q_n, do_n = _blocks(q, nq, block, 3), _blocks(d_out, nq, block, 3)
  lse_n, delta_n, seg_q_n = _blocks(lse, nq, block, 3), _blocks(delta, nq, block, 3), _blocks(seg_q, nq, block, 1)
  k_n, v_n, seg_k_n = _blocks(k, nk, block, 2), _blocks(v, nk, block, 2), _blocks(seg_k, nk, block, 1)

  def key_block(dq_n, j):
    def query_block(i, carry):
      dk, dv, dq_n = carry
      logits = jnp.einsum("bkgqh,bksh->bkgqs", q_n[i], k_n[j], preferred_element_type=jnp.float32) * scale
      p = jnp.where(_mask(seg_q_n[i], seg_k_n[j], i, j, block, q_offset), jnp.exp(logits - lse_n[i][..., None]), 0.0)
      dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p, do_n[i].astype(jnp.float32))
      dp = jnp.einsum("bkgqh,bksh->bkgqs", do_n[i].astype(jnp.float32), v_n[j].astype(jnp.float32))
      ds = p * (dp - delta_n[i][..., None]) * scale
      dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, q_n[i].astype(jnp.float32))
      dq_n = dq_n.at[i].add(jnp.einsum("bkgqs,bksh->bkgqh", ds, k_n[j].astype(jnp.float32)))
      return dk, dv, dq_n

    zeros = jnp.zeros((b, kh, block, h), jnp.float32)
    first = jnp.clip(j - q_offset // block, 0, nq)  # query blocks before it cannot see key block j
    dk, dv, dq_n = jax.lax.fori_loop(first, nq, query_block, (zeros, zeros, dq_n))
    return dq_n, (dk, dv)

  dq_n = jnp.zeros((nq, b, kh, g, block, h), jnp.float32)
  dq_n, (dk_n, dv_n) = jax.lax.scan(key_block, dq_n, jnp.arange(nk))
  dq = jnp.moveaxis(dq_n, 0, 3).reshape(q.shape).astype(q.dtype)
  dk = jnp.moveaxis(dk_n, 0, 2).reshape(k.shape).astype(k.dtype)
  dv = jnp.moveaxis(dv_n, 0, 2).reshape(v.shape).astype(v.dtype)
  return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _pad(x, pad: int, axis: int = 1):
  return jnp.pad(x, [(0, 0)] * axis + [(0, pad)] + [(0, 0)] * (x.ndim - axis - 1)) if pad else x


def attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block: int = 512, *, keys_segment_ids_BS=None,
              q_offset=0):
  """Causal attention within segments (segment id 0: padding), [B, T, K, G, H] out, equal to layers'
  plain attention on every non-padding query. T is padded to a multiple of `block` (a shorter T is one
  block).

  With keys_segment_ids_BS, the keys and values [B, S, K, H] are the whole sequence and the T queries its
  positions q_offset.. (a multiple of `block`, may be traced): one device's part under context parallelism.
  """
  t = q_BTKGH.shape[1]
  if keys_segment_ids_BS is None:
    block = min(block, t)
    pad = -t % block
    q_BTKGH, k_BTKH, v_BTKH = (_pad(x, pad) for x in (q_BTKGH, k_BTKH, v_BTKH))
    segment_ids_BT = keys_segment_ids_BS = _pad(segment_ids_BT, pad)
  elif t % block or keys_segment_ids_BS.shape[1] % block:
    raise ValueError(f"model.attention_block={block} must divide each device's part of the sequence ({t} "
                     f"tokens) and the sequence ({keys_segment_ids_BS.shape[1]})")
  q = jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4))
  k, v = jnp.transpose(k_BTKH, (0, 2, 1, 3)), jnp.transpose(v_BTKH, (0, 2, 1, 3))
  out = _attention(q, k, v, segment_ids_BT.astype(jnp.int32), keys_segment_ids_BS.astype(jnp.int32),
                   jnp.asarray(q_offset, jnp.int32), block)
  return jnp.transpose(out, (0, 3, 1, 2, 4))[:, :t]


def context_ways() -> int:
  """The size of the `context` axis of the mesh being traced under (sharding.activation_rules), else 1."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty or "context" not in mesh.axis_names else mesh.shape["context"]


def context_parallel(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block: int = 512):
  """attention() with the sequence split over the mesh's `context` axis (sharding.RULES: length -> context).

  Each device keeps its queries and all-gathers the keys, values and segment ids of the whole sequence
  (2 x T x kv_heads x head_dim per row: small next to the activations for GQA models), then runs the
  blockwise kernel on its part at its offset, skipping key blocks past its diagonal. The gradient of the
  all-gather is a reduce-scatter, so each device ends up with dK and dV of its own part.

  Not done: ring attention (passing K/V blocks around with ppermute, overlapping transfer with compute; it
  keeps 1/c of K/V per device instead of all of it) and causal load balancing (the last device's queries see
  every key block, the first device's only its own: a zigzag split would even that out).
  """
  mesh = jax.sharding.get_abstract_mesh()
  spec = jax.sharding.PartitionSpec(None, "context")

  def local(q, k, v, seg):
    gather = lambda x: jax.lax.all_gather(x, "context", axis=1, tiled=True)
    part = q.shape[1]
    return attention(q, gather(k), gather(v), seg, min(block, part), keys_segment_ids_BS=gather(seg),
                     q_offset=jax.lax.axis_index("context") * part)

  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, axis_names={"context"},
                       check_vma=False)(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT)
