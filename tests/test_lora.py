"""LoRA adapters (llm_jax/model/lora.py): identity at init, the merge formula against an independent einsum,
rank of the update, gradients reach only the adapters, Adam on adapters alone lowers the loss, token rows
touch only their rows, the embedding-table target, the trainable share of the tiny model, other architectures,
and input errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax.model import ModelConfig, Transformer, lora

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                  max_seq_len=16)
GELU = CFG.replace(tie_embeddings=True, mlp="gelu", positions="learned", norm="layernorm", attn_bias=True,
                   mlp_bias=True)  # GPT-2's switches
RANK, ALPHA = 4, 8.0
TOKEN_IDS = (5, 7, 11)


@functools.lru_cache(maxsize=None)
def _init(cfg):
  """(model, params) with params drawn by numpy in the shapes `model.init` gives: compiling the model's
  random initialisers costs ~10 s of CPU per config, and no test here depends on their distributions."""
  model = Transformer(cfg)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rng = np.random.default_rng(0)
  fill = lambda path, s: (1.0 if path[-1].key == "scale" else 0.0) + 0.1 * rng.standard_normal(s.shape, np.float32)
  return model, jax.tree_util.tree_map_with_path(lambda path, s: jnp.asarray(fill(path, s), s.dtype), shapes)


def _merge(params, adapters, token_ids=(), rank=RANK):
  return _jitted_merge(tuple(token_ids), rank)(params, adapters)


@functools.lru_cache(maxsize=None)
def _jitted_merge(token_ids, rank):  # one jit object per static setting, so equal shapes reuse its compilation
  return jax.jit(lambda p, a: lora.merge(p, a, rank=rank, alpha=ALPHA, token_ids=token_ids))


def _logits(model, params, tokens_BT):
  return _jitted_apply(model)({"params": params}, tokens_BT)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(model.apply)


def _tokens(shape=(2, 12), seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, CFG.vocab_size)


def _randomize(adapters, seed=2):
  """Nonzero a and b everywhere (b is zero at init, which would hide a wrong merge)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape, np.float32)), adapters)


def _next_token_loss(model, tokens_BT):
  def loss(params):
    logits_BTV = model.apply({"params": params}, tokens_BT[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT[:, 1:]).mean()
  return loss


def test_fresh_adapters_merge_to_the_base_exactly():
  model, params = _init(CFG)
  adapters = lora.init(jax.random.PRNGKey(1), params, rank=RANK, token_ids=(5, 7))
  assert adapters["layers"]["block_0"]["attn"]["q"]["a"].shape == (2, 32, RANK)
  assert adapters["layers"]["block_0"]["attn"]["q"]["b"].shape == (2, RANK, 4, 8)
  assert adapters["layers"]["block_0"]["attn"]["o"]["a"].shape == (2, 4, 8, RANK)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(adapters))
  merged = _merge(params, adapters, token_ids=(5, 7))
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged, params)
  tokens = _tokens()
  np.testing.assert_array_equal(_logits(model, merged, tokens), _logits(model, params, tokens))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merge_matches_an_independent_einsum(scan_layers):
  _, params = _init(CFG.replace(scan_layers=scan_layers))
  adapters = _randomize(lora.init(jax.random.PRNGKey(1), params, rank=RANK))
  merged = _merge(params, adapters)
  # The reference in float64 numpy; "l" (the stacked layer axis) is present only with scan_layers.
  lead, module = ("l", ("layers", "block_0", "attn")) if scan_layers else ("", ("layer_1", "attn"))
  for name, spec in (("q", "dr,rnh->dnh"), ("o", "nhr,rd->nhd")):  # one contracted dim; two (o reads [N, H])
    ins, out = spec.split("->")
    spec = ",".join(lead + x for x in ins.split(",")) + "->" + lead + out
    base, got, pair = (_at(tree, module + (name,)) for tree in (params, merged, adapters))
    delta = np.einsum(spec, np.float64(pair["a"]), np.float64(pair["b"]))
    np.testing.assert_allclose(got["kernel"], np.float64(base["kernel"]) + ALPHA / RANK * delta, rtol=1e-5, atol=1e-6)
  for name in ("embed", "final_norm", "head"):  # untargeted parameters pass through unchanged
    jax.tree_util.tree_map(np.testing.assert_array_equal, merged[name], params[name])


def _at(tree, path):
  return functools.reduce(lambda node, key: node[key], path, tree)


def test_update_has_rank_at_most_r():
  _, params = _init(CFG)
  adapters = _randomize(lora.init(jax.random.PRNGKey(1), params, rank=RANK))
  merged = _merge(params, adapters)
  for name, n_in in (("q", 1), ("o", 2)):
    delta = np.asarray(merged["layers"]["block_0"]["attn"][name]["kernel"][1], np.float64) \
        - np.asarray(params["layers"]["block_0"]["attn"][name]["kernel"][1], np.float64)
    matrix = delta.reshape(int(np.prod(delta.shape[:n_in])), -1)
    singular = np.linalg.svd(matrix, compute_uv=False)
    assert singular[RANK - 1] > 1e-3 and np.all(singular[RANK:] < 1e-5 * singular[0]), singular


@functools.lru_cache(maxsize=None)
def _adapter_loss():
  """(params, jitted value_and_grad w.r.t. the adapters of a next-token loss on a fixed batch through `merge`),
  compiled once for the two tests below; the base params are closed over, so they are never differentiated.
  Unscanned layers: the gradient compiles in 2/3 of the time, and test 2 checks merge on both layouts."""
  model, params = _init(CFG.replace(scan_layers=False))
  loss = _next_token_loss(model, _tokens((4, 16), seed=3))
  merged_loss = lambda ad: loss(lora.merge(params, ad, rank=RANK, alpha=ALPHA, token_ids=TOKEN_IDS))
  return params, jax.jit(jax.value_and_grad(merged_loss))


def test_gradients_reach_adapters_only():
  params, value_and_grad = _adapter_loss()
  before = jax.tree_util.tree_map(np.array, params)
  adapters = lora.init(jax.random.PRNGKey(1), params, rank=RANK, token_ids=TOKEN_IDS)
  pairs = lambda tree: [tree["layer_1"][module][name]
                        for module, names in (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for name in names]
  _, grads = value_and_grad(adapters)
  for g in pairs(grads):  # b = 0 at init, so d/da (a @ b) = g b^T = 0: the known LoRA property
    assert not np.any(g["a"]) and np.any(g["b"])
  assert np.all(np.any(grads["token_rows"]["head"], axis=0))  # every column's logit enters the softmax
  adapters = jax.jit(lambda ad, g: jax.tree_util.tree_map(lambda x, dx: x - 0.1 * dx, ad, g))(adapters, grads)  # SGD
  _, grads = value_and_grad(adapters)
  for g in pairs(grads):
    assert np.any(g["a"]) and np.any(g["b"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)


def test_adam_on_adapters_alone_lowers_the_loss():
  params, value_and_grad = _adapter_loss()
  adapters = lora.init(jax.random.PRNGKey(1), params, rank=RANK, token_ids=TOKEN_IDS)
  tx = optax.adam(1e-2)
  opt_state = tx.init(adapters)  # plain optax on the adapters pytree: every leaf is a float array

  @jax.jit
  def update(adapters, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state

  losses = []
  for _ in range(6):
    value, grads = value_and_grad(adapters)
    adapters, opt_state = update(adapters, opt_state, grads)
    losses.append(float(value))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("tie", [False, True])
def test_token_rows_change_only_their_rows(tie):
  _, params = _init(CFG.replace(tie_embeddings=tie))
  ids = (5, 7)
  adapters = _randomize(lora.init(jax.random.PRNGKey(1), params, rank=RANK, token_ids=ids))
  assert ("head" in adapters["token_rows"]) == (not tie)
  merged = _merge(params, adapters, token_ids=ids)
  changed_rows = np.flatnonzero(np.any(merged["embed"]["embedding"] != params["embed"]["embedding"], axis=1))
  assert changed_rows.tolist() == list(ids)
  if not tie:
    changed_cols = np.flatnonzero(np.any(merged["head"]["kernel"] != params["head"]["kernel"], axis=0))
    assert changed_cols.tolist() == list(ids)


@pytest.mark.parametrize("tie", [False, True])
def test_embed_target_adds_a_low_rank_update_to_the_whole_table(tie):
  """"embed": E + alpha / r * (a @ b) over every row, composed with token rows; identity at init (a = 0)."""
  model, params = _init(CFG.replace(tie_embeddings=tie))
  adapters = lora.init(jax.random.PRNGKey(1), params, rank=RANK, targets=("q", "embed"), token_ids=(5,))
  a, b = adapters["embed"]["a"], adapters["embed"]["b"]
  assert a.shape == (CFG.vocab_size, RANK) and b.shape == (RANK, CFG.d_model)
  assert not np.any(a) and np.std(b) > 0.5  # PEFT's init: the per-token factor at zero, the shared one random
  tokens = _tokens()
  np.testing.assert_array_equal(_logits(model, _merge(params, adapters, token_ids=(5,)), tokens),
                                _logits(model, params, tokens))
  adapters = _randomize(adapters)
  merged = _merge(params, adapters, token_ids=(5,))
  a, b = np.asarray(adapters["embed"]["a"], np.float64), np.asarray(adapters["embed"]["b"], np.float64)
  expected = np.asarray(params["embed"]["embedding"], np.float64) + ALPHA / RANK * a @ b
  expected[5] += np.asarray(adapters["token_rows"]["embed"][0])
  np.testing.assert_allclose(merged["embed"]["embedding"], expected, rtol=1e-5, atol=1e-5)
  assert np.linalg.matrix_rank(np.delete(expected - np.asarray(params["embed"]["embedding"]), 5, axis=0)) == RANK
  grads = jax.grad(lambda ad: _next_token_loss(model, tokens)(lora.merge(params, ad, rank=RANK, alpha=ALPHA,
                                                                          token_ids=(5,))))(adapters)
  touched = np.flatnonzero(np.any(np.asarray(grads["embed"]["a"]) != 0, axis=1))
  # untied, only the rows of tokens the model read get a gradient; tied, the head's use reaches every row
  assert set(touched.tolist()) == (set(range(CFG.vocab_size)) if tie else set(np.asarray(tokens[:, :-1]).ravel()))


def test_trainable_fraction_of_the_tiny_model():
  cfg = ModelConfig()  # configs/tiny.py's shape: abstract (eval_shape) params, nothing is computed
  params = nn.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  params = params["params"]
  assert lora.num_params(params) == cfg.num_params()
  d, kv, f = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
  for rank in (8, 16):
    adapters = jax.eval_shape(
        lambda p, r=rank: lora.init(jax.random.PRNGKey(1), p, rank=r, token_ids=tuple(range(16))), params)
    per_layer = rank * sum(i + o for i, o in ((d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)))
    assert lora.num_params(adapters) == cfg.n_layers * per_layer + 2 * 16 * d  # + 16 embedding rows, head columns
    fraction = lora.trainable_fraction(params, adapters)
    print(f"ModelConfig() LoRA rank {rank} on {', '.join(lora.TARGETS)} + 16 token rows: "
          f"{lora.num_params(adapters)} trainable, {100 * fraction:.2f}% of all parameters")
    if rank == 8:
      assert fraction <= 0.05


@pytest.mark.parametrize("cfg, targets", [
    (GELU, ("q", "k", "v", "o", "up", "down")),  # no gate, no head: token rows are embedding rows only
    (CFG.replace(layer_pattern="AC"), lora.TARGETS + ("value", "out")),  # "value", "out": conv blocks' names
])
def test_other_architectures_merge_and_run(cfg, targets):
  model, params = _init(cfg)
  adapters = lora.init(jax.random.PRNGKey(1), params, rank=RANK, targets=targets, token_ids=(3,))
  assert set(adapters["token_rows"]) == ({"embed"} if cfg.tie_embeddings else {"embed", "head"})
  tokens = _tokens()
  base_BTV = _logits(model, params, tokens)
  np.testing.assert_array_equal(_logits(model, _merge(params, adapters, token_ids=(3,)), tokens), base_BTV)
  changed_BTV = _logits(model, _merge(params, _randomize(adapters), token_ids=(3,)), tokens)
  assert np.all(np.isfinite(changed_BTV)) and not np.allclose(changed_BTV, base_BTV)


def test_targets_match_projection_path_suffixes():
  _, params = _init(CFG.replace(layer_pattern="AC", n_layers=4, scan_layers=False))
  adapted = lambda targets: {"/".join(path) for path in lora._pairs(jax.eval_shape(
      lambda p: lora.init(jax.random.PRNGKey(1), p, rank=RANK, targets=targets), params))}
  conv_gates = {f"layer_{i}/conv/gate" for i in (1, 3)}
  assert adapted(("gate",)) == {f"layer_{i}/mlp/gate" for i in range(4)} | conv_gates
  assert adapted(("mlp/gate", "head")) == {f"layer_{i}/mlp/gate" for i in range(4)} | {"head"}
  assert adapted(("q",)) == {"layer_0/attn/q", "layer_2/attn/q"}  # attention blocks only; conv blocks have none
  assert not any(path.endswith("conv") for path in adapted(lora.TARGETS))  # the depthwise kernel is no projection


def test_bad_input_is_rejected_with_a_clear_message():
  _, params = _init(CFG)
  rng = jax.random.PRNGKey(1)
  for rank in (0, -2):
    with pytest.raises(ValueError, match="rank"):
      lora.init(rng, params, rank=rank)
    with pytest.raises(ValueError, match="rank"):
      _merge(params, {}, rank=rank)
  with pytest.raises(ValueError, match=r"'qq' matches no projection.*down, gate, head, k, o, q, up, v.*'embed'"):
    lora.init(rng, params, rank=RANK, targets=("q", "qq"))
  _, gelu = _init(GELU)
  with pytest.raises(ValueError, match="'gate' matches no projection"):
    lora.init(rng, gelu, rank=RANK)
  with pytest.raises(ValueError, match="distinct"):
    lora.init(rng, params, rank=RANK, token_ids=(5, 5))
  with pytest.raises(ValueError, match="vocab_size"):
    lora.init(rng, params, rank=RANK, token_ids=(CFG.vocab_size,))
  adapters = lora.init(rng, params, rank=RANK, token_ids=(5, 7))
  with pytest.raises(ValueError, match="token_ids"):
    _merge(params, adapters, token_ids=(5,))
  with pytest.raises(ValueError, match="do not fit"):
    _merge(params, adapters, token_ids=(5, 7), rank=RANK + 1)


def test_lora_plus_moves_b_faster_by_the_ratio():
  """LoRA+ (lora.b_lr_ratio): the adapters' optimizer moves every b matrix `ratio` times as far as plain
  LoRA's would, and every a matrix and token row the same."""
  from llm_jax.training import sft  # pylint: disable=import-outside-toplevel
  _, params = _init(CFG)
  adapters = _randomize(lora.init(jax.random.PRNGKey(1), params, rank=RANK, token_ids=(5, 7)))
  grads = _randomize(adapters, seed=3)
  steps = {}
  for ratio in (1.0, 16.0):
    tx = sft.lora_optimizer(optax.adamw(1e-3, weight_decay=0.1), ratio)
    updates, _ = tx.update(grads, tx.init(adapters), adapters)
    steps[ratio] = jax.tree_util.tree_flatten_with_path(updates)[0]
  names = [getattr(path[-1], "key", None) for path, _ in steps[1.0]]
  for name, (_, plain), (_, plus) in zip(names, steps[1.0], steps[16.0]):
    assert float(jnp.abs(plain).max()) > 0
    np.testing.assert_allclose(plus, plain * (16.0 if name == "b" else 1.0), rtol=1e-6)
  assert names.count("b") == names.count("a") > 0 and {"embed", "head"} <= set(names)
