"""Memory-lean attention in pure JAX: FlashAttention-2's algorithm (blocks, online softmax, recomputation in
the backward pass), for any backend, with the causal and packed-segment mask of layers.attention_mask.

    out_BTKGH = attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block=512)
    out_BTKGH = context_parallel(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block=512, impl="ring")  # T split

Plain attention materialises float32 logits and probabilities of [B, K, G, T, T] and keeps them for the
backward pass: at T = 32k and 32 heads that is 128 GiB per sequence. Here the forward pass walks query blocks
(lax.map) and, inside each, the key blocks at or before it (a fori_loop whose bound is the query block:
blocks above the diagonal are skipped, not masked), keeping a running max, normaliser and output; it saves
only the output and the log-sum-exp per query ([B, K, G, T]). The backward pass (a custom VJP) recomputes
each block's probabilities from them: it walks key blocks, and for each the query blocks at or after it,
accumulating dK and dV per key block and dQ across all. Work memory is O(block^2) per (batch, head) and the
residuals O(T). Skipping the blocks past the diagonal halves the score FLOPs of the forward pass
(plain attention computes all T x T and masks half); the backward pass recomputes the scores once more.

Under a mesh with a `context` axis of c devices (sharding.RULES: length -> context) the model's attention
always runs here, through context_parallel: each device holds T/c queries and sees the keys one of two ways
(model.context_impl):
  allgather  (the default) keys, values and segment ids gathered whole, the kernel on the local queries at
             their offset; the gradient of the gather is a reduce-scatter. Per device: all of K/V and dK/dV,
             2 x T x kv_heads x head_dim each.
  ring       keys, values and their segment ids travel round the ring (c - 1 ppermutes); at each
             hop the local queries meet the visiting chunk (the kernel at both chunks' true offsets: a chunk
             wholly in their future costs nothing) and the results merge by log-sum-exp. The backward pass is
             its own custom VJP, not autodiff through the loop (which would save every visiting chunk and
             partial output): the ring again, dK and dV travelling with K and V, every block's probabilities
             exact from the final lse. Per device: 1/c of K/V; each hop's transfer can overlap its compute.
All-gather is the default because for the GQA models this is for, memory per device comes out the same: the
whole training step of Llama 3.1 8B at 131,072 tokens on v5p:2x2x2 (llm_jax/aot.py, README) needs 26.89 GiB
of temporaries per chip either way (its peak lies outside attention; the gathered K/V of 8 kv heads are a
few hundred MiB), while ring sends dK/dV round in float32 in the backward pass (all-gather: one
reduce-scatter) and took 123 s to compile, not 72 (a busy machine). One attention layer alone on 8
simulated CPU devices (README "Meshes") shows what ring saves: 5-31% of its temporaries at 8k-64k tokens, at
the same compute. Ring is for where the gathered K/V and dK/dV are a real share of memory: MHA, or millions
of tokens. Neither measurement shows communication time (free between simulated devices; TPU was compiled
for, not run): ring's hops can each hide behind a chunk's compute, the all-gather sits between the K/V
projection and the attention that waits for it.

model.context_balance=zigzag evens out causal work: on a contiguous split device i's queries see i + 1 of the
c parts of keys, so the last device does 2c/(c+1) times the mean (1.8x at c = 8) and the rest wait for it.
Zigzag cuts the sequence into 2c chunks and gives device i chunks i and 2c-1-i (the Transformer reorders
tokens, positions and segment ids at its input and the hidden states back before the head; zigzag()), so
every device does the same work. On simulated CPU devices, whose wall time is all devices' work on shared
cores, it cannot show (and its two pieces per device cost some memory): it is off by default, to be turned
on where devices are real and attention dominates.

Queries of padding (segment id 0) attend to nothing; their output is 0 here (plain attention averages every
value there). Nothing reads those positions: losses mask them out.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm_jax.model.config import CONTEXT_IMPLS

_NEG = jnp.finfo(jnp.float32).min


def _blocks(x, n: int, block: int, axis: int):
  """x with `axis` split into (n, block), the block index moved to the front."""
  shape = x.shape[:axis] + (n, block) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _mask(seg_q_BQ, seg_k_BS, i, j, block: int, q_offset, k_offset):
  """[B, 1, 1, Q, S] causal-and-same-segment mask of query block i (its first query at q_offset + i * block
  of the whole sequence) against key block j (its first key at k_offset + j * block)."""
  q_idx = q_offset + i * block + jnp.arange(block)
  k_idx = k_offset + j * block + jnp.arange(block)
  causal = q_idx[:, None] >= k_idx[None, :]
  same = (seg_q_BQ[:, :, None] == seg_k_BS[:, None, :]) & (seg_k_BS[:, None, :] > 0)
  return (causal[None] & same)[:, None, None]


def _forward(q, k, v, seg_q, seg_k, q_offset, k_offset, block: int):
  """(out [B, K, G, Tq, H] in q's dtype, lse [B, K, G, Tq] float32); q as [B, K, G, Tq, H], k and v as
  [B, K, Tk, H]; the queries are positions q_offset.. of the sequence, the keys its positions k_offset..
  (both multiples of block). Key blocks wholly after a query block are skipped; keys that all follow the
  queries cost nothing (out 0, lse -inf), as does a query that sees no key."""
  b, kh, g, tq, h = q.shape
  nq, nk = tq // block, k.shape[2] // block
  scale = h ** -0.5
  diagonal = (q_offset - k_offset) // block  # query block i sees key blocks up to diagonal + i
  q_n, seg_q_n = _blocks(q, nq, block, 3), _blocks(seg_q, nq, block, 1)
  k_n, v_n, seg_k_n = _blocks(k, nk, block, 2), _blocks(v, nk, block, 2), _blocks(seg_k, nk, block, 1)

  def query_block(args):
    i, q_i, seg_i = args

    def key_block(j, carry):
      m, l, acc = carry
      logits = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_n[j], preferred_element_type=jnp.float32) * scale
      logits = jnp.where(_mask(seg_i, seg_k_n[j], i, j, block, q_offset, k_offset), logits, _NEG)
      m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
      p = jnp.exp(logits - m_new[..., None]) * (logits > _NEG)  # masked entries count 0, even in a masked row
      correction = jnp.exp(m - m_new)
      acc = acc * correction[..., None] + jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), v_n[j],
                                                     preferred_element_type=jnp.float32)
      return m_new, l * correction + jnp.sum(p, axis=-1), acc

    init = (jnp.full((b, kh, g, block), _NEG), jnp.zeros((b, kh, g, block)), jnp.zeros((b, kh, g, block, h)))
    m, l, acc = jax.lax.fori_loop(0, jnp.clip(diagonal + i + 1, 0, nk), key_block, init)  # past the diagonal: none
    safe = jnp.where(l > 0, l, 1.0)
    return (acc / safe[..., None]).astype(q.dtype), jnp.where(l > 0, m + jnp.log(safe), -jnp.inf)

  out_n, lse_n = jax.lax.map(query_block, (jnp.arange(nq), q_n, seg_q_n))
  return jnp.moveaxis(out_n, 0, 3).reshape(q.shape), jnp.moveaxis(lse_n, 0, 3).reshape(b, kh, g, tq)


def _delta(d_out, out):
  """rowsum(dO * O) [B, K, G, T]: with lse, all the backward pass needs of a query's softmax row."""
  return jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)


def _backward(q, k, v, seg_q, seg_k, q_offset, k_offset, lse, delta, d_out, block: int):
  """float32 (dq, dk, dv) of the queries against these keys (placed as in _forward), from the statistics of
  each query's whole softmax row: lse and delta (_delta), which may cover more keys than these."""
  b, kh, g, tq, h = q.shape
  nq, nk = tq // block, k.shape[2] // block
  scale = h ** -0.5
  diagonal = (q_offset - k_offset) // block
  q_n, do_n = _blocks(q, nq, block, 3), _blocks(d_out, nq, block, 3)
  lse_n, delta_n, seg_q_n = _blocks(lse, nq, block, 3), _blocks(delta, nq, block, 3), _blocks(seg_q, nq, block, 1)
  k_n, v_n, seg_k_n = _blocks(k, nk, block, 2), _blocks(v, nk, block, 2), _blocks(seg_k, nk, block, 1)

  def key_block(dq_n, j):
    def query_block(i, carry):
      dk, dv, dq_n = carry
      logits = jnp.einsum("bkgqh,bksh->bkgqs", q_n[i], k_n[j], preferred_element_type=jnp.float32) * scale
      mask = _mask(seg_q_n[i], seg_k_n[j], i, j, block, q_offset, k_offset)
      p = jnp.where(mask, jnp.exp(logits - lse_n[i][..., None]), 0.0)
      dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p, do_n[i].astype(jnp.float32))
      dp = jnp.einsum("bkgqh,bksh->bkgqs", do_n[i].astype(jnp.float32), v_n[j].astype(jnp.float32))
      ds = p * (dp - delta_n[i][..., None]) * scale
      dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, q_n[i].astype(jnp.float32))
      dq_n = dq_n.at[i].add(jnp.einsum("bkgqs,bksh->bkgqh", ds, k_n[j].astype(jnp.float32)))
      return dk, dv, dq_n

    zeros = jnp.zeros((b, kh, block, h), jnp.float32)
    first = jnp.clip(j - diagonal, 0, nq)  # query blocks before it cannot see key block j
    dk, dv, dq_n = jax.lax.fori_loop(first, nq, query_block, (zeros, zeros, dq_n))
    return dq_n, (dk, dv)

  dq_n = jnp.zeros((nq, b, kh, g, block, h), jnp.float32)
  dq_n, (dk_n, dv_n) = jax.lax.scan(key_block, dq_n, jnp.arange(nk))
  return (jnp.moveaxis(dq_n, 0, 3).reshape(q.shape), jnp.moveaxis(dk_n, 0, 2).reshape(k.shape),
          jnp.moveaxis(dv_n, 0, 2).reshape(v.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attention(q, k, v, seg_q, seg_k, q_offset, k_offset, block):
  return _forward(q, k, v, seg_q, seg_k, q_offset, k_offset, block)[0]


def _attention_fwd(q, k, v, seg_q, seg_k, q_offset, k_offset, block):
  out, lse = _forward(q, k, v, seg_q, seg_k, q_offset, k_offset, block)
  return out, (q, k, v, seg_q, seg_k, q_offset, k_offset, out, lse)


def _attention_bwd(block, residuals, d_out):
  q, k, v, seg_q, seg_k, q_offset, k_offset, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, seg_q, seg_k, q_offset, k_offset, lse, _delta(d_out, out), d_out, block)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _pad(x, pad: int, axis: int = 1):
  return jnp.pad(x, [(0, 0)] * axis + [(0, pad)] + [(0, 0)] * (x.ndim - axis - 1)) if pad else x


def _to_kernel(q_BTKGH, k_BTKH, v_BTKH):
  """q [B, K, G, T, H], k and v [B, K, T, H]: the layout the kernel blocks along T."""
  to_kh = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731
  return jnp.transpose(q_BTKGH, (0, 2, 3, 1, 4)), to_kh(k_BTKH), to_kh(v_BTKH)


def attention(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block: int = 512):
  """Causal attention within segments (segment id 0: padding), [B, T, K, G, H] out, equal to layers'
  plain attention on every non-padding query. T is padded to a multiple of `block` (a shorter T is one
  block)."""
  t = q_BTKGH.shape[1]
  block = min(block, t)
  pad = -t % block
  q, k, v = _to_kernel(*(_pad(x, pad) for x in (q_BTKGH, k_BTKH, v_BTKH)))
  seg = _pad(segment_ids_BT, pad).astype(jnp.int32)
  zero = jnp.zeros((), jnp.int32)
  return jnp.transpose(_attention(q, k, v, seg, seg, zero, zero, block), (0, 3, 1, 2, 4))[:, :t]


# Context parallelism: the sequence split over the mesh's `context` axis.


def context_ways() -> int:
  """The size of the `context` axis of the mesh being traced under (sharding.activation_rules), else 1."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty or "context" not in mesh.axis_names else mesh.shape["context"]


def zigzag(x, ways: int, axis: int = 1):
  """x with its sequence `axis` cut into 2 x ways chunks and reordered 0, 2w-1, 1, 2w-2, ...: split into
  `ways` equal parts, part i holds chunks i and 2w-1-i (unzigzag undoes it)."""
  n = x.shape[axis]
  chunks = x.reshape(x.shape[:axis] + (2 * ways, n // (2 * ways)) + x.shape[axis + 1:])
  early = jax.lax.slice_in_dim(chunks, 0, ways, axis=axis)
  late = jnp.flip(jax.lax.slice_in_dim(chunks, ways, 2 * ways, axis=axis), axis)
  return jnp.stack([early, late], axis=axis + 1).reshape(x.shape)


def unzigzag(x, ways: int, axis: int = 1):
  """The natural order of a sequence `axis` in zigzag order."""
  n = x.shape[axis]
  pairs = x.reshape(x.shape[:axis] + (ways, 2, n // (2 * ways)) + x.shape[axis + 1:])
  early = jnp.take(pairs, 0, axis=axis + 1)
  late = jnp.flip(jnp.take(pairs, 1, axis=axis + 1), axis)
  return jnp.concatenate([early, late], axis=axis).reshape(x.shape)


def _split(x, n: int, axis: int) -> tuple:
  return tuple(jnp.split(x, n, axis=axis)) if n > 1 else (x,)


def _offsets(device, ways: int, piece: int, zigzag_: bool) -> tuple:
  """Where in the sequence the pieces (of `piece` tokens) that `device` holds start: one, or two if zigzag."""
  return (device * piece, (2 * ways - 1 - device) * piece) if zigzag_ else (device * piece,)


def _allgather(q, k, v, seg, block: int, ways: int, zigzag_: bool):
  """Local queries (kernel layout) against the all-gathered keys and values, in natural order."""
  k_all, v_all, seg_all = _gather(k, 2), _gather(v, 2), _gather(seg, 1)
  if zigzag_:
    k_all, v_all, seg_all = unzigzag(k_all, ways, 2), unzigzag(v_all, ways, 2), unzigzag(seg_all, ways, 1)
  n = 2 if zigzag_ else 1
  q_n, seg_n = _split(q, n, 3), _split(seg, n, 1)
  offsets = _offsets(jax.lax.axis_index("context"), ways, q_n[0].shape[3], zigzag_)
  zero = jnp.zeros((), jnp.int32)
  return jnp.concatenate([_attention(q_a, k_all, v_all, seg_a, seg_all, off, zero, block)
                          for q_a, seg_a, off in zip(q_n, seg_n, offsets)], axis=3)


def _gather(x, axis: int):
  """x all-gathered over the `context` axis. On the CPU bfloat16 travels as float32: XLA:CPU aborts compiling
  the training step's gradient of a bf16 all-gather ("Invalid binary instruction opcode copy"; jax 0.10)."""
  gather = lambda x: jax.lax.all_gather(x, "context", axis=axis, tiled=True)  # noqa: E731
  if x.dtype == jnp.float32 or not jnp.issubdtype(x.dtype, jnp.floating):
    return gather(x)
  return jax.lax.platform_dependent(x, cpu=lambda x: gather(x.astype(jnp.float32)).astype(x.dtype), default=gather)


def _rotate(xs: tuple, ways: int) -> tuple:
  """Each device's xs to the next device of the context ring."""
  perm = [(i, (i + 1) % ways) for i in range(ways)]
  return tuple(jax.lax.ppermute(x, "context", perm) for x in xs)


def _merge(out, lse, out_new, lse_new):
  """Two softmax-normalised results over disjoint keys (out float32, lse -inf where no key was seen) -> the
  result over both."""
  top = jnp.maximum(lse, lse_new)
  top = jnp.where(top == -jnp.inf, 0.0, top)
  w, w_new = jnp.exp(lse - top), jnp.exp(lse_new - top)
  total = w + w_new
  safe = jnp.where(total > 0, total, 1.0)
  out = (out * w[..., None] + out_new.astype(jnp.float32) * w_new[..., None]) / safe[..., None]
  return out, jnp.where(total > 0, top + jnp.log(safe), -jnp.inf)


def _ring_forward(q, k, v, seg, block: int, ways: int, zigzag_: bool):
  """(out, lse) of the local queries (kernel layout) against every device's keys and values, which visit
  each device in turn around the ring (ways - 1 ppermutes, each free to overlap the step's compute)."""
  n = 2 if zigzag_ else 1
  me = jax.lax.axis_index("context")
  q_n, seg_q_n = _split(q, n, 3), _split(seg, n, 1)
  piece = q_n[0].shape[3]
  q_offsets = _offsets(me, ways, piece, zigzag_)

  def visit(r, results, k, v, seg_k):  # merge in the keys of device me - r
    k_offsets = _offsets((me - r) % ways, ways, piece, zigzag_)
    k_n, v_n, seg_k_n = _split(k, n, 2), _split(v, n, 2), _split(seg_k, n, 1)
    merged = []
    for q_a, seg_a, q_off, (out, lse) in zip(q_n, seg_q_n, q_offsets, results):
      for k_b, v_b, seg_b, k_off in zip(k_n, v_n, seg_k_n, k_offsets):
        out, lse = _merge(out, lse, *_forward(q_a, k_b, v_b, seg_a, seg_b, q_off, k_off, block))
      merged.append((out, lse))
    return tuple(merged)

  def step(r, carry):
    results, kv = carry
    return visit(r, results, *kv), _rotate(kv, ways)

  empty = (jnp.zeros(q_n[0].shape, jnp.float32), jnp.full(q_n[0].shape[:-1], -jnp.inf, jnp.float32))
  results, kv = jax.lax.fori_loop(0, ways - 1, step, ((empty,) * n, (k, v, seg)))
  results = visit(ways - 1, results, *kv)
  return (jnp.concatenate([out for out, _ in results], axis=3).astype(q.dtype),
          jnp.concatenate([lse for _, lse in results], axis=3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring(q, k, v, seg, block, ways, zigzag_):
  return _ring_forward(q, k, v, seg, block, ways, zigzag_)[0]


def _ring_fwd(q, k, v, seg, block, ways, zigzag_):
  out, lse = _ring_forward(q, k, v, seg, block, ways, zigzag_)
  return out, (q, k, v, seg, out, lse)


def _ring_bwd(block, ways, zigzag_, residuals, d_out):
  """The ring again: keys and values visit with their dK and dV accumulators, which each device adds its
  queries' part to (from the final lse, so every block's probabilities are exact); a last ppermute brings
  dK and dV home. Residuals are the local q, k, v, out and lse only, whatever `ways` is."""
  q, k, v, seg, out, lse = residuals
  n = 2 if zigzag_ else 1
  me = jax.lax.axis_index("context")
  q_n, seg_q_n, do_n = _split(q, n, 3), _split(seg, n, 1), _split(d_out, n, 3)
  lse_n, delta_n = _split(lse, n, 3), _split(_delta(d_out, out), n, 3)
  piece = q_n[0].shape[3]
  q_offsets = _offsets(me, ways, piece, zigzag_)

  def visit(r, dq_n, k, v, seg_k, dk, dv):
    k_offsets = _offsets((me - r) % ways, ways, piece, zigzag_)
    k_n, v_n, seg_k_n = _split(k, n, 2), _split(v, n, 2), _split(seg_k, n, 1)
    dq_n, dk_n, dv_n = list(dq_n), list(_split(dk, n, 2)), list(_split(dv, n, 2))
    for a in range(n):
      for b in range(n):
        dq, dk_ab, dv_ab = _backward(q_n[a], k_n[b], v_n[b], seg_q_n[a], seg_k_n[b], q_offsets[a], k_offsets[b],
                                     lse_n[a], delta_n[a], do_n[a], block)
        dq_n[a], dk_n[b], dv_n[b] = dq_n[a] + dq, dk_n[b] + dk_ab, dv_n[b] + dv_ab
    return tuple(dq_n), jnp.concatenate(dk_n, axis=2), jnp.concatenate(dv_n, axis=2)

  def step(r, carry):
    dq_n, (k, v, seg_k, dk, dv) = carry
    dq_n, dk, dv = visit(r, dq_n, k, v, seg_k, dk, dv)
    return dq_n, _rotate((k, v, seg_k, dk, dv), ways)

  zeros_kv = jnp.zeros(k.shape, jnp.float32)
  dq_n, (k, v, seg_k, dk, dv) = jax.lax.fori_loop(
      0, ways - 1, step, ((jnp.zeros(q_n[0].shape, jnp.float32),) * n, (k, v, seg, zeros_kv, zeros_kv)))
  dq_n, dk, dv = visit(ways - 1, dq_n, k, v, seg_k, dk, dv)
  dk, dv = _rotate((dk, dv), ways)
  return jnp.concatenate(dq_n, axis=3).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def context_parallel(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT, block: int = 512, *, impl: str = "allgather",
                     balance: bool = False):
  """attention() with the sequence split over the mesh's `context` axis (sharding.RULES: length -> context),
  by `impl` ("allgather" | "ring", module docstring). With balance, the sequence is in zigzag order (the
  model reorders its input, Transformer.__call__): each device holds chunks i and 2c-1-i of 2c, and each
  chunk is masked at its true place in the sequence.

  The gradient of the all-gather is a reduce-scatter, and the ring's backward pass sends dK and dV round
  with K and V, so either way each device ends up with dK and dV of its own part.
  """
  if impl not in CONTEXT_IMPLS:
    raise ValueError(f"model.context_impl={impl!r}: must be one of {CONTEXT_IMPLS}")
  mesh, ways = jax.sharding.get_abstract_mesh(), context_ways()
  spec = jax.sharding.PartitionSpec(None, "context")

  def local(q_BTKGH, k_BTKH, v_BTKH, seg_BT):
    piece = q_BTKGH.shape[1] // (2 if balance else 1)
    part_block = min(block, piece)
    if piece % part_block or piece * (2 if balance else 1) != q_BTKGH.shape[1]:
      raise ValueError(f"model.attention_block={block} must divide each device's part of the sequence "
                       f"({q_BTKGH.shape[1]} tokens{', in 2 chunks: model.context_balance=zigzag' if balance else ''})")
    out = (_ring if impl == "ring" else _allgather)(*_to_kernel(q_BTKGH, k_BTKH, v_BTKH), seg_BT.astype(jnp.int32),
                                                    part_block, ways, balance)
    return jnp.transpose(out, (0, 3, 1, 2, 4))

  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, axis_names={"context"},
                       check_vma=False)(q_BTKGH, k_BTKH, v_BTKH, segment_ids_BT)
