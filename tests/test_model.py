"""Model invariants over every architectural switch: shapes, exact parameter counts, causality through
gradients, packed segments never seeing each other, blockwise = plain attention, scan = unrolled, remat = no
remat, bf16 ~ fp32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.model import ModelConfig, Transformer
from llm_jax.model.layers import matmul, plain_attention, rope, rope_frequencies

BASE = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
                   max_seq_len=16)
VARIANTS = {
    "llama": BASE,
    "llama3_rope_scaling": BASE.replace(rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_len=8),
    "gpt2": BASE.replace(positions="learned", norm="layernorm", mlp="gelu", attn_bias=True, mlp_bias=True,
                         tie_embeddings=True, n_kv_heads=4),
    "sinusoidal_mqa": BASE.replace(positions="sinusoidal", n_kv_heads=1),
    "nope_post_layernorm": BASE.replace(positions="none", norm="layernorm", norm_position="post"),
    "hybrid_conv": BASE.replace(layer_pattern="AC", n_layers=4, attn_bias=True),
}


def _init(cfg, t=12):
  model = Transformer(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, t), jnp.int32))["params"])
  return model, params


def _tokens(seed, shape=(1, 12)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, BASE.vocab_size)


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shape_and_exact_param_count(name):
  cfg = VARIANTS[name]
  model, params = _init(cfg)
  logits = model.apply({"params": params}, _tokens(1, (3, 12)))
  assert logits.shape == (3, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == cfg.num_params()


def _grad_wrt_embeddings(model, params, tokens, position, **kwargs):
  """d(log-prob of the token at position+1, predicted at `position`) / d(embedding output), via interception."""
  def loss(delta_BTD):
    def add_delta(next_fun, args, kw, context):
      out = next_fun(*args, **kw)
      is_token_embed = isinstance(context.module, nn.Embed) and context.module.name == "embed"
      return out + delta_BTD if is_token_embed and context.method_name == "__call__" else out
    with nn.intercept_methods(add_delta):
      logits = model.apply({"params": params}, tokens, **kwargs)
    return jax.nn.log_softmax(logits[0, position])[tokens[0, position + 1]]
  return jax.jit(jax.grad(loss))(jnp.zeros(tokens.shape + (model.cfg.d_model,)))  # jitted: eager is ~10x slower


@pytest.mark.parametrize("name", VARIANTS)
def test_causality_gradient_after_t_is_exactly_zero(name):
  model, params = _init(VARIANTS[name])
  tokens, t = _tokens(2), 5
  g = np.asarray(_grad_wrt_embeddings(model, params, tokens, t))
  assert np.all(g[0, t + 1:] == 0.0), "a position attended to the future"
  assert np.all(np.abs(g[0, :t + 1]).sum(-1) > 0), "every past position should influence position t"


@pytest.mark.parametrize("name", VARIANTS)
def test_packed_segments_do_not_attend_across_documents(name):
  model, params = _init(VARIANTS[name])
  tokens = _tokens(3)
  segment_ids = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0]])
  g = np.asarray(_grad_wrt_embeddings(model, params, tokens, 8, positions_BT=positions, segment_ids_BT=segment_ids))
  assert np.all(g[0, :5] == 0.0), "segment 2 saw segment 1"
  assert np.all(np.abs(g[0, 5:9]).sum(-1) > 0)
  # And a packed document computes the same logits as the document alone.
  apply = jax.jit(lambda p, *args: model.apply({"params": p}, *args))
  packed = apply(params, tokens, positions, segment_ids)
  alone = apply(params, tokens[:, 5:11])
  np.testing.assert_allclose(packed[:, 5:11], alone, rtol=1e-5, atol=1e-5)


def test_blockwise_attention_equals_plain_attention_values_and_gradients(block=5):  # 12 tokens: 3 blocks, padded
  """Values and gradients of a whole model, on packed segments with padding (positions restart per
  document): the memory-lean attention (model/blockwise.py) computes what plain attention does."""
  model, params = _init(BASE.replace(n_kv_heads=2, n_heads=4))
  lean = Transformer(BASE.replace(n_kv_heads=2, n_heads=4, attention_impl="blockwise", attention_block=block))
  tokens = _tokens(4, (2, 12))
  segment_ids = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0], list(range(12))])
  real = np.asarray(segment_ids > 0)

  def loss(m):  # padding is masked out of the loss, as in training
    return lambda p: jnp.sum(jnp.where(segment_ids[..., None] > 0, jax.nn.log_softmax(
        m.apply({"params": p}, tokens, positions, segment_ids)) ** 2, 0.0))

  want = jax.jit(lambda p: model.apply({"params": p}, tokens, positions, segment_ids))(params)
  got = jax.jit(lambda p: lean.apply({"params": p}, tokens, positions, segment_ids))(params)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
  grads_want = jax.jit(jax.grad(loss(model)))(params)
  grads_got = jax.jit(jax.grad(loss(lean)))(params)
  flat_got, flat_want = jax.tree_util.tree_leaves(grads_got), jax.tree_util.tree_leaves(grads_want)
  for a, b in zip(flat_got, flat_want):  # each gradient within 1e-5 of its norm
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), np.abs(a - b).max()


def _unstack(params_scan, cfg):
  """Scanned params (layers/block_j stacked over repeats of the pattern) -> unrolled layer_i params."""
  out = {k: v for k, v in params_scan.items() if k != "layers"}
  period = len(cfg.layer_pattern)
  for i in range(cfg.n_layers):
    out[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, g=i // period: x[g],
                                               params_scan["layers"][f"block_{i % period}"])
  return out


def _loss(model, tokens):
  return lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens)) ** 2)


@pytest.mark.parametrize("name", ["llama", "hybrid_conv"])
def test_scan_equals_unrolled_outputs_and_gradients(name):
  cfg = VARIANTS[name]
  model_s, params_s = _init(cfg)
  model_l = Transformer(cfg.replace(scan_layers=False))
  params_l = _unstack(params_s, cfg)
  assert jax.tree_util.tree_structure(params_l) == jax.tree_util.tree_structure(_init(cfg.replace(scan_layers=False))[1])
  tokens = _tokens(4, (2, 12))
  apply = lambda model: jax.jit(lambda p: model.apply({"params": p}, tokens))
  np.testing.assert_allclose(apply(model_s)(params_s), apply(model_l)(params_l), rtol=1e-5, atol=1e-5)
  g_s = _unstack(jax.jit(jax.grad(_loss(model_s, tokens)))(params_s), cfg)
  g_l = jax.jit(jax.grad(_loss(model_l, tokens)))(params_l)
  for a, b in zip(jax.tree_util.tree_leaves(g_s), jax.tree_util.tree_leaves(g_l)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_matches_no_remat(remat):
  model, params = _init(BASE)
  model_r = Transformer(BASE.replace(remat=remat))
  tokens = _tokens(5, (2, 12))
  np.testing.assert_array_equal(model.apply({"params": params}, tokens), model_r.apply({"params": params}, tokens))
  g, g_r = jax.grad(_loss(model, tokens))(params), jax.grad(_loss(model_r, tokens))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_r)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_is_close_to_fp32():
  """bf16 compute (fp32 params, fp32 softmax and logits): log-probs within 0.05 nats of fp32 (measured ~0.01)."""
  model, params = _init(BASE)
  model_bf16 = Transformer(BASE.replace(dtype="bfloat16"))
  tokens = _tokens(6, (4, 12))
  lp32 = jax.nn.log_softmax(model.apply({"params": params}, tokens))
  lp16 = jax.nn.log_softmax(model_bf16.apply({"params": params}, tokens))
  assert lp16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(lp32 - lp16))) < 0.05
  assert float(jnp.max(jnp.abs(lp32 - lp16))) > 0  # it really computed in bf16


@pytest.mark.parametrize("n_in,x_shape,k_shape", [(1, (2, 5, 6), (6, 3, 4)), (2, (2, 5, 3, 4), (3, 4, 6))])
def test_matmul_is_tensordot_values_and_gradients(n_in, x_shape, k_shape):
  """layers.matmul (one 2-D dot, float32 accumulation) computes jnp.tensordot, gradients included, and returns
  x's dtype."""
  x, k = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate((x_shape, k_shape)))
  value_and_grads = lambda f: jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
  value, grads = value_and_grads(lambda x, k: matmul(x, k, n_in))
  want_value, want_grads = value_and_grads(lambda x, k: jnp.tensordot(x, k, n_in))
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert matmul(x, k, n_in).shape == x_shape[:len(x_shape) - n_in] + k_shape[n_in:]
  assert matmul(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), n_in).dtype == jnp.bfloat16
  bf16 = lambda x, k: jnp.sum(jnp.sin(matmul(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), n_in).astype(jnp.float32)))
  for g16, g in zip(jax.grad(bf16, (0, 1))(x, k), grads):  # bf16 products (the CPU's own gradient path)
    assert g16.dtype == jnp.float32 and float(jnp.max(jnp.abs(g16 - g))) < 0.05 * float(jnp.max(jnp.abs(g)))


def test_plain_attention_is_softmax_attention():
  """plain_attention against the formula written out per head: softmax(q k^T / sqrt(H) + causal and segment
  mask) v, with grouped query heads sharing their key/value head."""
  b, t, kv, g, h = 2, 6, 2, 3, 4
  q = jax.random.normal(jax.random.PRNGKey(0), (b, t, kv, g, h))
  k, v = (jax.random.normal(jax.random.PRNGKey(i), (b, t, kv, h)) for i in (1, 2))
  seg = jnp.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 3]])
  got = plain_attention(q, k, v, seg)
  visible = (jnp.tril(jnp.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :]))  # [B, T, S]
  for kh in range(kv):
    for gh in range(g):
      scores = jnp.einsum("bth,bsh->bts", q[:, :, kh, gh], k[:, :, kh]) / np.sqrt(h)
      probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
      np.testing.assert_allclose(got[:, :, kh, gh], jnp.einsum("bts,bsh->bth", probs, v[:, :, kh]),
                                 rtol=1e-5, atol=1e-6)


def test_rope_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(5), (1, 1, 1, 8))
  inv_freq, _ = rope_frequencies(ModelConfig(head_dim=8))
  def score(pq, pk):
    return float(jnp.sum(rope(q, jnp.array([[pq]]), inv_freq) * rope(k, jnp.array([[pk]]), inv_freq)))
  assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)


def test_llama3_rope_scaling_bands():
  """High frequencies untouched, low frequencies divided by the factor, the band between interpolated."""
  cfg = ModelConfig(head_dim=128, rope_theta=500000.0)
  base, scaled = (np.asarray(rope_frequencies(c)[0]) for c in (cfg, cfg.replace(rope_scaling="llama3")))
  wavelen = 2 * np.pi / base
  high, low = wavelen < 8192 / 4, wavelen > 8192 / 1
  np.testing.assert_allclose(scaled[high], base[high])
  np.testing.assert_allclose(scaled[low], base[low] / 8, rtol=1e-6)
  mid = ~high & ~low
  assert mid.any() and np.all((scaled[mid] < base[mid]) & (scaled[mid] > base[mid] / 8))


def test_bad_switch_names_the_field():
  with pytest.raises(ValueError, match=r"model\.positions='alibi'"):
    BASE.replace(positions="alibi")
  with pytest.raises(ValueError, match="layer_pattern"):
    BASE.replace(layer_pattern="AAC")  # 3 does not divide n_layers=2
  with pytest.raises(ValueError, match=r"model\.context_balance='zigzag'.*layer_pattern='AC'"):
    BASE.replace(layer_pattern="AC", context_balance="zigzag")  # the conv mixer needs the tokens in order
