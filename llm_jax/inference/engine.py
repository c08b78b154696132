"""The inference engine: a preallocated KV cache, prefill, and a jitted `lax.while_loop` decode.

Pure functions (jittable; later stages call them inside their own jit, e.g. RL rollouts):

    state = prefill(model, params, tokens_BT, lengths_B, slots, rng)     # ragged prompts, left-padded
    state, tokens_BN = decode(model, params, state, sampling, stop_ids, steps=N)
    state = extend(model, params, state, tokens_BT, lengths_B)            # the host forces tokens
    state = restart(state, rows_B); state = compact(state)                # continuous batching (batching.py)

A `State` holds the cache (model/transformer.py `init_cache`: keys/values in the compute dtype, another
float dtype or int8 with per-head scales), the next-token logits of every row, per-row `done` flags and the
rng. Each row has its own length, so prompts of different lengths decode together; a row stops on its
first stop token (which is fed and kept in the cache, as a chat turn needs) or when its cache is full, and
its later outputs are -1. Sampling (greedy at temperature 0; temperature, top-k, top-p, min-p) takes its
settings as traced values, so changing them does not recompile.

`Engine` is the host-side wrapper: jitted functions (compiled once per shape bucket), token lists in and
out, streaming in chunks of decode steps, forced tokens (a tool's output) between chunks, and parameters
and cache sharded over a mesh for tensor-parallel inference.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import sharding
from llm_jax.model.layers import SLOT_AXIS
from llm_jax.model.transformer import cache_slots, init_cache, unstack_layers

NO_TOKEN = -1  # in decode outputs: the row had stopped (or the chunk ended early)

# XLA:CPU's default copy insertion copies every cache array that is both read (attention) and updated in
# place (the new slot) in one step: ~10x slower decoding at batch 32. Region analysis sees that the reads
# come first. Pass these to jax.jit(..., compiler_options=...) when jitting the pure functions on CPU.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@flax.struct.dataclass
class Sampling:
  """temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 switch those filters off (HF's order)."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0


@flax.struct.dataclass
class State:
  cache: dict
  logits: jax.Array  # [B, V] float32: the distribution of each row's next token
  done: jax.Array  # [B] bool
  rng: jax.Array


def _rows(value, rows: int):
  """A sampling setting as a scalar or, when it has one value per row, as [rows, 1]."""
  value = jnp.asarray(value)
  return value.reshape(rows, 1) if value.ndim else value


def filtered_logits(logits_BV, sampling: Sampling):
  """logits / temperature (any leading dims) with the tokens outside top-k, top-p and min-p set to -inf.

  Applied in order temperature -> top-k -> top-p (on the top-k distribution) -> min-p (relative to the most
  likely token), as Hugging Face's logits processors do; ties at a threshold are kept. Each setting is a
  scalar or has one value per row of logits [B, V] (a server batching requests with their own settings).
  """
  shape, vocab = logits_BV.shape, logits_BV.shape[-1]
  logits_BV = logits_BV.reshape(-1, vocab).astype(jnp.float32)
  rows = logits_BV.shape[0]
  temperature, top_k, top_p, min_p = (_rows(v, rows) for v in (sampling.temperature, sampling.top_k,
                                                                 sampling.top_p, sampling.min_p))
  logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)

  def apply(logits_BV):
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    sorted_BV = jnp.where(jnp.arange(vocab) < k, sorted_BV, -jnp.inf)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    keep_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p  # the first one always stays
    kept_B = jnp.maximum(jnp.sum(keep_BV & (jnp.arange(vocab) < k), axis=-1), 1)
    threshold_B = jnp.take_along_axis(sorted_BV, kept_B[:, None] - 1, axis=-1)[:, 0]
    min_p_B = jnp.reshape(min_p, (-1,))
    min_p_B = jnp.where(min_p_B > 0, sorted_BV[:, 0] + jnp.log(jnp.maximum(min_p_B, 1e-30)), -jnp.inf)
    return jnp.where(logits_BV >= jnp.maximum(threshold_B, min_p_B)[:, None], logits_BV, -jnp.inf)

  active = jnp.any((top_k > 0) | (top_p < 1) | (min_p > 0))
  return jax.lax.cond(active, apply, lambda x: x, logits_BV).reshape(shape)


def argmax(logits_BV):
  """jnp.argmax's result (the first maximum) from two plain reductions, which XLA:CPU runs faster than
  argmax's paired (value, index) reduction (it was ~5% of a batch-32 decode step)."""
  best_B1 = jnp.max(logits_BV, axis=-1, keepdims=True)
  index_V = jnp.arange(logits_BV.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(logits_BV == best_B1, index_V, logits_BV.shape[-1]), axis=-1)


def sample_tokens(logits_BV, rng, sampling: Sampling):
  """[B] int32 tokens: argmax at temperature 0, else a draw from the filtered distribution (per row when
  the temperature has one value per row)."""
  temperature = jnp.asarray(sampling.temperature)
  draw = lambda: jax.random.categorical(rng, filtered_logits(logits_BV, sampling)).astype(jnp.int32)
  if temperature.ndim:
    return jax.lax.cond(jnp.any(temperature > 0), lambda: jnp.where(temperature > 0, draw(), argmax(logits_BV)),
                        lambda: argmax(logits_BV))
  return jax.lax.cond(temperature > 0, draw, lambda: argmax(logits_BV))


def new_state(model, batch: int, slots: int, rng, cache_dtype=None) -> State:
  return State(cache=init_cache(model.cfg, batch, slots, cache_dtype),
               logits=jnp.zeros((batch, model.cfg.vocab_size), jnp.float32),
               done=jnp.zeros((batch,), bool), rng=rng)


def extend(model, params, state: State, tokens_BT, lengths_B) -> State:
  """Appends the last lengths_B[b] tokens of tokens_BT[b] to row b (chunks are left-padded; 0 tokens
  leaves a row as it was, though the chunk's slots are used up for every row).

  A row given tokens becomes active again (unless its cache is full), so a host can force a tool's output
  after the model stopped on its tool-call token and let it continue.
  """
  t = tokens_BT.shape[1]
  real_BT = (jnp.arange(t)[None, :] >= t - lengths_B[:, None]).astype(jnp.int32)
  logits_BV, cache = model.apply({"params": params}, tokens_BT, segment_ids_BT=real_BT, cache=state.cache,
                                 last_only=True)
  given_B = lengths_B > 0
  full = cache["index"] >= cache_slots(cache)
  return state.replace(cache=cache, logits=jnp.where(given_B[:, None], logits_BV, state.logits),
                       done=jnp.where(given_B, full, state.done | full))


def restart(state: State, rows_B) -> State:
  """Rows in rows_B [B] bool forget everything they held (their slots stop counting, position 0, conv state
  zeroed) and stand stopped until extend() gives them tokens: a finished request's row reused by the next."""
  cache = state.cache
  layers = [{name: (jnp.where(rows_B[:, None, None], 0, x) if name == "state" else x) for name, x in layer.items()}
            for layer in cache["layers"]]
  cache = {**cache, "pos": jnp.where(rows_B, 0, cache["pos"]), "valid": cache["valid"] & ~rows_B[:, None],
           "layers": layers}
  return state.replace(cache=cache, done=state.done | rows_B)


def compact(state: State) -> State:
  """The same cache with every row's slots in use moved to the front, in order, and the shared index set
  just past the longest row's: the slots that finished and restarted rows left behind become free again.

  Each row keeps its entries' order and positions (keys carry their rotary positions), so attention sees
  exactly what it saw before; rows with fewer entries are padded in front, as prefill pads prompts.
  """
  cache = state.cache
  valid_BS = cache["valid"]
  slots = valid_BS.shape[1]
  count_B = jnp.sum(valid_BS, axis=1, dtype=jnp.int32)
  index = jnp.max(count_B)
  order_BS = jnp.argsort(valid_BS, axis=1, stable=True)  # unused slots first, then the used ones in order
  # New slot j < index takes the used entry index - j from the end; slots from index on are free.
  src_BS = order_BS[:, jnp.clip(jnp.arange(slots) + slots - index, 0, slots - 1)]
  new_valid_BS = jnp.take_along_axis(valid_BS, src_BS, axis=1) & (jnp.arange(slots) < index)

  def move(name, x):
    if name not in SLOT_AXIS:
      return x
    axis = SLOT_AXIS[name]
    src = src_BS.reshape(src_BS.shape[:1] + (1,) * (axis - 1) + src_BS.shape[1:] + (1,) * (x.ndim - axis - 1))
    return jnp.take_along_axis(x, src, axis=axis)

  layers = [{name: move(name, x) for name, x in layer.items()} for layer in cache["layers"]]
  return state.replace(cache={**cache, "index": index, "valid": new_valid_BS, "layers": layers})


def prefill(model, params, tokens_BT, lengths_B, slots: int, rng, cache_dtype=None) -> State:
  """A fresh state of `slots` cache positions per row holding the (left-padded) prompts."""
  # The barrier keeps XLA from constant-folding attention over the all-zero fresh cache (slow to compile).
  state = jax.lax.optimization_barrier(new_state(model, tokens_BT.shape[0], slots, rng, cache_dtype))
  return extend(model, params, state, tokens_BT, lengths_B)


def decode(model, params, state: State, sampling: Sampling, stop_ids, steps: int):
  """Up to `steps` tokens per row ([B, steps], NO_TOKEN after a row stops); stops early once all rows have.

  Each step samples every row's next token from state.logits and feeds it through the model (one cache
  slot for all rows; stopped rows write padding), so the returned state continues where this one stopped.
  """
  batch = state.logits.shape[0]
  stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
  slots = cache_slots(state.cache)

  def cond(carry):
    i, state, _ = carry
    return (i < steps) & ~jnp.all(state.done)

  def body(carry):
    i, state, out_BN = carry
    rng, key = jax.random.split(state.rng)
    token_B = jnp.where(state.done, NO_TOKEN, sample_tokens(state.logits, key, sampling))
    out_BN = jax.lax.dynamic_update_slice(out_BN, token_B[:, None], (0, i))
    active_B = ~state.done
    logits_BV, cache = model.apply({"params": params}, jnp.maximum(token_B, 0)[:, None],
                                   segment_ids_BT=active_B[:, None].astype(jnp.int32), cache=state.cache,
                                   last_only=True)
    stopped_B = jnp.any(token_B[:, None] == stop_ids[None, :], axis=-1) | (cache["index"] >= slots)
    state = State(cache=cache, logits=jnp.where(active_B[:, None], logits_BV, state.logits),
                  done=state.done | stopped_B, rng=rng)
    return i + 1, state, out_BN

  out_BN = jnp.full((batch, steps), NO_TOKEN, jnp.int32)
  _, state, out_BN = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out_BN))
  return state, out_BN


def _bucket(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def pad_rows(rows: Sequence[Sequence[int]], multiple: int = 16):
  """(tokens [B, T] left-padded with 0 to a multiple of `multiple`, lengths [B]) as numpy int32."""
  lengths = np.array([len(r) for r in rows], np.int32)
  tokens = np.zeros((len(rows), _bucket(int(lengths.max(initial=1)), multiple)), np.int32)
  for i, row in enumerate(rows):
    if len(row):
      tokens[i, -len(row):] = row
  return tokens, lengths


class Engine:
  """Host-side decoding: token lists in, token lists out, jitted once per shape bucket.

      engine = Engine(model, params)                      # or mesh=..., cache_dtype="int8"
      outs = engine.generate([[bos, 5, 9], [bos, 7]], max_new_tokens=32, sampling=Sampling(0.8, top_p=0.95))
      for new_tokens in engine.stream(prompts, max_new_tokens=64, chunk=8): ...

  Parameters of a scan_layers model are split per layer first (transformer.unstack_layers). With a mesh,
  parameters are placed by the model's logical axis names (sharding.RULES: heads, kv_heads
  and mlp over `tensor`, batch over `data`) and the cache's kv heads follow the tensor axis, so a model
  too big for one device decodes tensor-parallel; the jitted functions trace inside
  sharding.activation_rules(mesh).
  """

  def __init__(self, model, params, *, mesh=None, cache_dtype=None, slot_multiple: int = 64,
               prompt_multiple: int = 16):
    self._given_cfg = model.cfg
    self.model = model.clone(cfg=model.cfg.replace(scan_layers=False), pipeline_stages=1)  # decoding runs the plain layer stack
    self.mesh, self.cache_dtype = mesh, cache_dtype
    self.slot_multiple, self.prompt_multiple = slot_multiple, prompt_multiple
    self.set_params(params)
    self._prefill = self._jit(prefill, static_argnames=("slots", "cache_dtype"))
    self._extend = self._jit(extend, donate_argnums=(1,))
    self._decode = self._jit(decode, static_argnames=("steps",), donate_argnums=(1,))
    self._restart, self._compact = jax.jit(restart, donate_argnums=0), jax.jit(compact, donate_argnums=0)

  def set_params(self, params):
    """Decodes with `params` from now on (e.g. an RL policy after each update); the same shapes reuse the
    compiled functions."""
    _, params = unstack_layers(self._given_cfg, params)  # one array per layer: no slicing inside the loop
    if self.mesh is not None:
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
      params = jax.device_put(params, sharding.logical_sharding(boxed["params"], self.mesh))
    self.params = params

  def _jit(self, fn, **jit_kwargs):
    platform = (self.mesh.devices.flat[0] if self.mesh is not None else jax.devices()[0]).platform
    return jax.jit(functools.partial(_traced, self.mesh, fn, self.model), **jit_kwargs,
                   compiler_options=CPU_COMPILER_OPTIONS if platform == "cpu" else None)

  def empty(self, batch: int, slots: int, seed: int = 0) -> State:
    """`batch` idle (stopped) rows of `slots` free cache slots: continuous batching fills a row with
    restart() and force() and frees it with restart() (llm_jax/inference/batching.py)."""
    state = new_state(self.model, batch, _bucket(slots, self.slot_multiple), jax.random.PRNGKey(seed),
                      self.cache_dtype)
    state = state.replace(done=jnp.ones((batch,), bool))
    return jax.device_put(state, self._state_sharding(state)) if self.mesh is not None else state

  def restart(self, state: State, rows: Sequence[bool]) -> State:
    """The rows where `rows` is True forget what they held and stand stopped (engine.restart)."""
    # A copy: on CPU a jitted call may read a numpy argument after it returns, and callers reuse their masks.
    return self._restart(state, np.array(rows, bool))

  def compact(self, state: State) -> State:
    """Frees the slots no row uses any more (engine.compact)."""
    return self._compact(state)

  def start(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seed: int = 0,
            extra_slots: int = 0) -> State:
    """Prefilled state for `prompts` (token lists) with room for max_new_tokens (+ extra_slots) more slots."""
    longest = max((len(p) for p in prompts), default=0)
    max_len = self.model.cfg.max_seq_len
    if longest + max_new_tokens > max_len:
      raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                       f"max_seq_len={max_len}")
    tokens, lengths = pad_rows(prompts, self.prompt_multiple)
    slots = _bucket(tokens.shape[1] + max_new_tokens + extra_slots, self.slot_multiple)
    state = self._prefill(self.params, tokens, lengths, slots=slots, rng=jax.random.PRNGKey(seed),
                          cache_dtype=self.cache_dtype)
    if self.mesh is not None:
      state = jax.device_put(state, self._state_sharding(state))
    return state

  def _state_sharding(self, state: State):
    """Rows over the mesh's batch axes (where they divide), kv heads over `tensor`; the rest replicated."""
    mesh, cfg = self.mesh, self.model.cfg
    batch_axes = sharding.batch_sharding(mesh).spec[0]
    row_ways = int(np.prod([mesh.shape[a] for a in np.atleast_1d(batch_axes)]))
    rows = batch_axes if state.logits.shape[0] % row_ways == 0 else None
    heads = "tensor" if cfg.n_kv_heads % mesh.shape["tensor"] == 0 else None

    def spec(path, x):
      name = jax.tree_util.keystr(path[-1:])
      if "layers" not in jax.tree_util.keystr(path):  # pos [B], valid [B, S], logits [B, V], done [B]; index, rng
        per_row = x.ndim and name != ".rng" and x.shape[0] == state.logits.shape[0]
        dims = (rows,) + (None,) * (x.ndim - 1) if per_row else (None,) * x.ndim
      elif name != "['state']":  # keys [B, K, H, S], values [B, K, S, H], scales [B, K, S]
        dims = (rows, heads) + (None,) * (x.ndim - 2)
      else:  # conv states [B, K-1, D]
        dims = (rows, None, None)
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*dims))
    return jax.tree_util.tree_map_with_path(spec, state)

  def decode(self, state: State, steps: int, sampling: Sampling = Sampling(), stop_ids: Sequence[int] = ()):
    """(state, tokens [B, steps] numpy, NO_TOKEN after a row stopped)."""
    state, out = self._decode(self.params, state, sampling, np.asarray(list(stop_ids) or [NO_TOKEN], np.int32),
                              steps=steps)
    return state, np.asarray(out)

  def force(self, state: State, rows: Sequence[Sequence[int]]) -> State:
    """Feeds rows[b] (possibly empty) to row b, e.g. a tool's output; a row given tokens continues.

    The chunk takes the same slots in every row; start() with extra_slots leaves room for forced tokens.
    """
    tokens, lengths = pad_rows(rows, self.prompt_multiple)
    free = cache_slots(state.cache) - int(state.cache["index"])
    if tokens.shape[1] > free:
      raise ValueError(f"forcing {int(lengths.max())} tokens (a chunk of {tokens.shape[1]} slots) but the cache "
                       f"has {free} free slots: start() with extra_slots for forced tokens")
    return self._extend(self.params, state, tokens, lengths)

  def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_ids: Sequence[int] = (), seed: int = 0, chunk: int = 8) -> Iterator[list[list[int]]]:
    """Yields, after every `chunk` decode steps, the new tokens of each row (stop tokens included)."""
    check_prompts(prompts)
    state = self.start(prompts, max_new_tokens, seed)
    left = max_new_tokens
    while left > 0:
      state, out = self.decode(state, min(chunk, left), sampling, stop_ids)
      left -= out.shape[1]
      yield [[int(t) for t in row if t != NO_TOKEN] for row in out]
      if bool(np.all(np.asarray(state.done))):
        return

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
               stop_ids: Sequence[int] = (), seed: int = 0) -> list[list[int]]:
    """Each row's generated tokens (up to and including its first stop token), in one jitted loop."""
    check_prompts(prompts)
    state = self.start(prompts, max_new_tokens, seed)
    _, out = self.decode(state, max_new_tokens, sampling, stop_ids)
    return [[int(t) for t in row if t != NO_TOKEN] for row in out]


def check_prompts(prompts):
  """ValueError unless there is at least one prompt and every prompt has a token."""
  if not prompts or min(len(p) for p in prompts) == 0:
    raise ValueError("every prompt needs at least one token (start it with BOS)")


def _traced(mesh, fn, model, params, *args, **kwargs):
  """fn(model, params, ...), traced inside the mesh's activation rules when there is a mesh."""
  if mesh is None:
    return fn(model, params, *args, **kwargs)
  with sharding.activation_rules(mesh):
    return fn(model, params, *args, **kwargs)
