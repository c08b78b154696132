"""Model invariants: shapes, causality through gradients, packed segments never see each other."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.model import ModelConfig, Transformer
from llm_jax.model.layers import rope

CFG = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
                  max_seq_len=16)


def _init(cfg, t=12):
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, t), jnp.int32))["params"])
  return model, params


@pytest.mark.parametrize("scan", [True, False])
def test_output_shape_dtype_and_param_count(scan):
  cfg = ModelConfig(**{**CFG.__dict__, "scan_layers": scan})
  model, params = _init(cfg)
  logits = model.apply({"params": params}, jnp.ones((3, 12), jnp.int32))
  assert logits.shape == (3, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == cfg.num_params()
  assert np.isfinite(np.asarray(logits)).all()


def test_scan_and_loop_compute_the_same_function():
  model_s, params_s = _init(CFG)
  cfg_l = ModelConfig(**{**CFG.__dict__, "scan_layers": False})
  model_l = Transformer(cfg_l)
  layers = params_s["layers"]["block"]
  params_l = {k: v for k, v in params_s.items() if k != "layers"}
  for i in range(CFG.n_layers):
    params_l[f"layer_{i}"] = jax.tree_util.tree_map(lambda x: x[i], layers)  # pylint: disable=cell-var-from-loop
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, CFG.vocab_size)
  np.testing.assert_allclose(model_s.apply({"params": params_s}, tokens), model_l.apply({"params": params_l}, tokens),
                             rtol=1e-5, atol=1e-5)


def test_remat_matches_no_remat():
  cfg_r = ModelConfig(**{**CFG.__dict__, "remat": "full"})
  model, params = _init(CFG)
  model_r = Transformer(cfg_r)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, CFG.vocab_size)
  loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, tokens) ** 2)  # noqa: E731
  g, g_r = jax.grad(loss(model))(params), jax.grad(loss(model_r))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_r)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _grad_wrt_embeddings(model, params, tokens, position, **kwargs):
  """d(log-prob of the token at position+1, predicted at `position`) / d(embedding output), via interception."""
  def loss(delta_BTD):
    def add_delta(next_fun, args, kw, context):
      out = next_fun(*args, **kw)
      return out + delta_BTD if isinstance(context.module, nn.Embed) and context.method_name == "__call__" else out
    with nn.intercept_methods(add_delta):
      logits = model.apply({"params": params}, tokens, **kwargs)
    return jax.nn.log_softmax(logits[0, position])[tokens[0, position + 1]]
  return jax.grad(loss)(jnp.zeros(tokens.shape + (CFG.d_model,)))


def test_causality_gradient_after_t_is_exactly_zero():
  model, params = _init(CFG)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 12), 0, CFG.vocab_size)
  t = 5
  g = np.asarray(_grad_wrt_embeddings(model, params, tokens, t))
  assert np.all(g[0, t + 1:] == 0.0), "a position attended to the future"
  assert np.all(np.abs(g[0, :t + 1]).sum(-1) > 0), "every past position should influence position t"


def test_packed_segments_do_not_attend_across_documents():
  model, params = _init(CFG)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (1, 12), 0, CFG.vocab_size)
  segment_ids = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0]])
  g = np.asarray(_grad_wrt_embeddings(model, params, tokens, 8, positions_BT=positions, segment_ids_BT=segment_ids))
  assert np.all(g[0, :5] == 0.0), "segment 2 attended to segment 1"
  assert np.all(np.abs(g[0, 5:9]).sum(-1) > 0)
  # And a packed document computes the same logits as the document alone.
  packed = model.apply({"params": params}, tokens, positions, segment_ids)
  alone = model.apply({"params": params}, tokens[:, 5:11])
  np.testing.assert_allclose(packed[:, 5:11], alone, rtol=1e-5, atol=1e-5)


def test_rope_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(5), (1, 1, 1, 8))
  def score(pq, pk):
    return float(jnp.sum(rope(q, jnp.array([[pq]]), 10000.0) * rope(k, jnp.array([[pk]]), 10000.0)))
  assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)
