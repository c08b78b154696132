"""LoRA: low-rank adapters as pure functions over the parameter pytree (no change to the model's modules).

    adapters = lora.init(rng, params, rank=8, token_ids=chat_ids)          # the only trainable pytree
    merged = lora.merge(params, adapters, rank=8, alpha=16.0, token_ids=chat_ids)
    logits = model.apply({"params": merged}, tokens)

Each adapted `Projection` kernel W (input dims I..., output dims O...) gets a pair
a [*lead, *I, r] ~ normal(0, 1/sqrt(prod I)) and b [*lead, r, *O] = 0, and the merged kernel is
W + alpha / r * (a @ b) reshaped to W's shape, so the model equals the base at init. `lead` is the stacked
layer axis under `layers` (scan_layers=True). The adapters mirror the parameter paths, e.g.
adapters["layers"]["block_0"]["attn"]["q"] = {"a": ..., "b": ...}, and are float32 whatever the params'
dtype. The train step differentiates `merge` inside the loss with respect to the adapters only; for
inference merge once and run the plain model (no extra matmuls per token).

Targets match a projection by its path suffix: "q" is every attention query projection, "gate" is the
SwiGLU gate and the conv mixer's gate (layer_pattern "AC"), "mlp/gate" only the former. "head" (the untied
output projection) may be targeted too. A target that matches nothing is an error naming the projections
that exist (a gelu MLP has no "gate": pass its names, e.g. ("q", "k", "v", "o", "up", "down")).

"embed" adapts the token embedding table E [V, D] too: E + alpha / r * (a @ b) with a [V, r] (each token's
own r numbers) and b [r, D] shared by all tokens. As in PEFT's embedding LoRA, a starts at zero and b at
normal(0, 1), so the model still equals the base at init and every token seen in a batch moves its row of a
from the first step. Unlike token rows (below), it reaches every token, at about r / D of the table's size.

Token rows: new special tokens (chat roles, tool calls) never appeared in pretraining, and a low-rank
update of the projections cannot give them useful embeddings. `token_ids` makes their embedding rows (and
head columns when untied) trainable: adapters["token_rows"] = {"embed": [n, D], "head": [D, n]} zeros,
added to the base rows in `merge`. The ids themselves are *not* in the adapters: they are static config
(the tokenizer's special-token ids), passed to both `init` and `merge`, so the adapters hold only float
leaves and go through jax.grad, optax and checkpointing without special cases (an int leaf would be
"differentiated" and "updated" by the optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
EMBED = "embed"  # the token embedding table (not a Projection): module docstring

# Contracted (input) dims of a kernel, after the layer axis: the attention output projection reads
# [N, H] (layers.Attention builds it with n_in=2); every other Projection reads one dim.
_N_IN = {"o": 2}

Path = tuple[str, ...]


def _check_rank(rank: int):
  if not isinstance(rank, (int, np.integer)) or rank <= 0:
    raise ValueError(f"LoRA rank={rank!r}: must be a positive integer")


def _projections(params: Mapping, path: Path = ()) -> dict[Path, jax.Array]:
  """{module path: kernel} of every Projection: a `kernel` next to nothing but arrays (bias, int8 scale).

  The conv mixer's depthwise `kernel` sits next to sub-modules, so it is not taken for a projection.
  """
  subs = {k: v for k, v in params.items() if isinstance(v, Mapping)}
  found = {path: params["kernel"]} if "kernel" in params and not subs else {}
  for key, sub in subs.items():
    found.update(_projections(sub, path + (key,)))
  return found


def _dims(path: Path, kernel) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """(lead, input, output) dims of a kernel; lead is the scanned layer axis (transformer.py's "layers")."""
  n_lead = 1 if path[0] == "layers" else 0
  n_in = _N_IN.get(path[-1], 1)
  shape = tuple(kernel.shape)
  return shape[:n_lead], shape[n_lead:n_lead + n_in], shape[n_lead + n_in:]


def _check_float(path: Path, kernel):
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise ValueError(f"LoRA on {'/'.join(path)}: kernel is {kernel.dtype}; merge into the float model, "
                     "then quantize (llm_jax/model/quant.py)")


def _check_token_ids(token_ids: Sequence[int], vocab_size: int) -> np.ndarray:
  ids = np.asarray(token_ids, np.int64).reshape(-1)
  if len(set(ids.tolist())) != len(ids):  # .at[ids] with repeats would add one delta row twice
    raise ValueError(f"LoRA token_ids={tuple(token_ids)}: ids must be distinct")
  if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f"LoRA token_ids={tuple(token_ids)}: ids must be in [0, vocab_size={vocab_size})")
  return ids.astype(np.int32)


def _nest(flat: dict[Path, dict]) -> dict:
  tree = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def _pairs(adapters: Mapping, path: Path = ()) -> dict[Path, Mapping]:
  """{module path: {"a", "b"}} of every adapted kernel (token rows excluded)."""
  if set(adapters) == {"a", "b"}:
    return {path: adapters}
  found = {}
  for key, sub in adapters.items():
    if not (path == () and key == "token_rows"):
      found.update(_pairs(sub, path + (key,)))
  return found


def _init_pairs(rng, shapes: dict[Path, tuple], rank: int) -> dict[Path, dict]:
  """Every `a` sliced from one normal draw: each `normal` of a new shape compiles its own PRNG kernel (~1 s
  of CPU apiece), which would dominate initialisation."""
  sizes = {path: math.prod(lead + dims_in) * rank for path, (lead, dims_in, _) in shapes.items()}
  z = jax.random.normal(rng, (sum(sizes.values()),), jnp.float32)
  flat, start = {}, 0
  for path, (lead, dims_in, dims_out) in shapes.items():
    a = z[start:start + sizes[path]].reshape(lead + dims_in + (rank,)) / math.sqrt(math.prod(dims_in))
    flat[path] = {"a": a, "b": jnp.zeros(lead + (rank,) + dims_out, jnp.float32)}
    start += sizes[path]
  return flat


def init(rng, params, *, rank: int, targets: Sequence[str] = TARGETS, token_ids: Sequence[int] = ()) -> dict:
  """Adapters for every projection matching `targets` (module docstring), plus token rows for `token_ids`.

  Works on concrete params or on `jax.eval_shape` ShapeDtypeStructs (only shapes and dtypes are read).
  """
  _check_rank(rank)
  kernels = _projections(params)
  available = sorted({path[-1] for path in kernels})
  chosen = {}
  for target in targets:
    if target == EMBED:
      continue
    suffix = tuple(target.split("/"))
    matched = {p: k for p, k in kernels.items() if p[-len(suffix):] == suffix}
    if not matched:
      raise ValueError(f"LoRA target {target!r} matches no projection kernel; available: {', '.join(available)}"
                       f" (and {EMBED!r}, the embedding table)")
    chosen.update(matched)

  shapes = {}
  for path, kernel in sorted(chosen.items()):
    _check_float(path, kernel)
    shapes[path] = _dims(path, kernel)
  if EMBED in targets:  # split only then: runs without it keep their initialisation
    rng, embed_rng = jax.random.split(rng)
  adapters = _nest(_init_pairs(rng, shapes, rank))
  if EMBED in targets:
    vocab_size, d_model = params["embed"]["embedding"].shape
    adapters[EMBED] = {"a": jnp.zeros((vocab_size, rank), jnp.float32),
                       "b": jax.random.normal(embed_rng, (rank, d_model), jnp.float32)}

  if len(token_ids):
    vocab_size, d_model = params["embed"]["embedding"].shape
    ids = _check_token_ids(token_ids, vocab_size)
    adapters["token_rows"] = {"embed": jnp.zeros((len(ids), d_model), jnp.float32)}
    if "head" in params:
      adapters["token_rows"]["head"] = jnp.zeros((d_model, len(ids)), jnp.float32)
  return adapters


def _delta(path: Path, kernel, pair: Mapping, rank: int):
  """(a @ b) over r, in W's shape and float32."""
  lead, dims_in, dims_out = _dims(path, kernel)
  a, b = pair["a"], pair["b"]
  if a.shape != lead + dims_in + (rank,) or b.shape != lead + (rank,) + dims_out:
    raise ValueError(f"LoRA adapter {'/'.join(path)}: a {a.shape}, b {b.shape} do not fit kernel "
                     f"{tuple(kernel.shape)} at rank={rank}")
  a_LIR = a.reshape(lead + (math.prod(dims_in), rank))
  b_LRO = b.reshape(lead + (rank, math.prod(dims_out)))
  # HIGHEST: the update is tiny next to the forward pass, and TPUs would otherwise multiply f32 in bf16.
  return jnp.matmul(a_LIR, b_LRO, precision=jax.lax.Precision.HIGHEST).reshape(kernel.shape)


def merge(params, adapters, *, rank: int, alpha: float, token_ids: Sequence[int] = ()) -> dict:
  """params with W + alpha / rank * (a @ b) in every adapted kernel (cast back to W's dtype), and the token
  rows' deltas added to embedding rows / head columns `token_ids`. Pure and jittable; params untouched.
  """
  _check_rank(rank)
  kernels = _projections(params)
  new_kernels, new_embedding = {}, None
  for path, pair in _pairs(adapters).items():
    if path == (EMBED,):  # the table [V, D] is a kernel with one input and one output dim to _delta
      embedding = params["embed"]["embedding"]
      delta = _delta(path, embedding, pair, rank)
      new_embedding = (embedding.astype(jnp.float32) + (alpha / rank) * delta).astype(embedding.dtype)
      continue
    if path not in kernels:
      raise ValueError(f"LoRA adapter {'/'.join(path)} has no projection kernel in params")
    kernel = kernels[path]
    _check_float(path, kernel)
    merged = kernel.astype(jnp.float32) + (alpha / rank) * _delta(path, kernel, pair, rank)
    new_kernels[path] = merged.astype(kernel.dtype)

  rows = adapters.get("token_rows", {})
  if len(token_ids) or rows:
    embedding = params["embed"]["embedding"] if new_embedding is None else new_embedding
    ids = _check_token_ids(token_ids, embedding.shape[0])
    if rows.get("embed") is None or rows["embed"].shape[0] != len(ids):
      raise ValueError(f"LoRA token_ids has {len(ids)} ids but adapters['token_rows'] was made for "
                       f"{None if rows.get('embed') is None else rows['embed'].shape[0]}: pass init's token_ids")
    new_embedding = embedding.at[ids].set((embedding[ids].astype(jnp.float32) + rows["embed"]).astype(embedding.dtype))
    if "head" in params:
      head = new_kernels.get(("head",), params["head"]["kernel"])
      new_kernels[("head",)] = head.at[:, ids].set((head[:, ids].astype(jnp.float32) + rows["head"]).astype(head.dtype))

  def rebuild(node: Mapping, path: Path) -> dict:
    out = {k: rebuild(v, path + (k,)) if isinstance(v, Mapping) else v for k, v in node.items()}
    if path in new_kernels:
      out["kernel"] = new_kernels[path]
    if path == ("embed",) and new_embedding is not None:
      out["embedding"] = new_embedding
    return out

  return rebuild(params, ())


def num_params(tree) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def trainable_fraction(params, adapters) -> float:
  """adapters / (base + adapters), the share of all parameters that is trained (PEFT's "trainable%")."""
  trained = num_params(adapters)
  return trained / (num_params(params) + trained)


def b_mask(adapters) -> dict:
  """True for every `b` matrix of the adapters (False for `a` and token rows): LoRA+ (Hayou et al. 2024)
  trains the b matrices at a larger learning rate than the a matrices (sft.lora_setup, lora.b_lr_ratio)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "b", adapters)
