"""The KV-cache engine: cached decoding equals recomputation, sampling filters, stop/stream/force, int8,
speculative decoding, tensor-parallel decoding, and the decode benchmark's CLI."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.inference import engine as E
from llm_jax.inference import speculative
from llm_jax.model import ModelConfig, Transformer, quant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _model(seed=0, **changes):
  cfg = ModelConfig(**{**dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                              max_seq_len=96), **changes})
  model = Transformer(cfg)
  return model, nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"])


def _greedy_by_recompute(model, params, prompt, n):
  """Greedy tokens by running the whole sequence for every token (a fixed causal buffer: one compile)."""
  forward = jax.jit(lambda p, ids, last: jnp.argmax(model.apply({"params": p}, ids)[0, last]))
  ids = list(prompt)
  for _ in range(n):
    buffer = np.zeros((1, 64), np.int32)
    buffer[0, :len(ids)] = ids
    ids.append(int(forward(params, buffer, len(ids) - 1)))
  return ids[len(prompt):]


PROMPTS = [[1, 5, 9], [1, 7, 3, 3, 3, 3, 3, 3, 2, 1, 4, 60, 61, 62, 63, 8, 9], [1]]  # ragged: 3, 17, 1


@pytest.mark.parametrize("changes", [{}, {"layer_pattern": "AC"}, {"layer_pattern": "AC", "scan_layers": False},
                                     {"positions": "learned", "norm": "layernorm", "mlp": "gelu",
                                      "tie_embeddings": True, "attn_bias": True}])
def test_cached_logits_equal_recomputation_for_ragged_chunks(changes):
  model, params = _model(**changes)
  seqs = [np.random.RandomState(i).randint(0, 64, n) for i, n in enumerate((20, 26, 18))]
  padded = np.zeros((3, 26), np.int32)  # right padding: causal logits before it are the unpadded sequence's
  for i, s in enumerate(seqs):
    padded[i, :len(s)] = s
  full = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, padded)
  lengths = np.array([3, 17, 1])
  tokens, lens = E.pad_rows([s[:n] for s, n in zip(seqs, lengths)], 8)
  prefill = jax.jit(functools.partial(E.prefill, model), static_argnums=(3,))
  extend = jax.jit(functools.partial(E.extend, model))
  state = prefill(params, jnp.asarray(tokens), jnp.asarray(lens), 64, jax.random.PRNGKey(0))
  worst = max(float(jnp.max(jnp.abs(state.logits[i] - full[i][n - 1]))) for i, n in enumerate(lengths))
  for step in range(5):  # chunks of different lengths per row, including none
    take = np.array([[1, 2, 0], [1, 0, 3], [2, 1, 1], [0, 0, 1], [1, 1, 1]][step])
    tokens, lens = E.pad_rows([s[c:c + k] for s, c, k in zip(seqs, lengths, take)], 4)
    state = extend(params, state, jnp.asarray(tokens), jnp.asarray(lens))
    lengths = lengths + take
    worst = max(worst, max(float(jnp.max(jnp.abs(state.logits[i] - full[i][n - 1]))) for i, n in enumerate(lengths)))
  assert worst < 1e-5


@pytest.mark.parametrize("changes", [{}, {"layer_pattern": "AC"}])
def test_engine_greedy_equals_recomputed_greedy(changes):
  model, params = _model(**changes)
  out = E.Engine(model, params).generate(PROMPTS, 12)
  assert out == [_greedy_by_recompute(model, params, p, 12) for p in PROMPTS]


def test_stop_tokens_stream_and_forced_tokens():
  model, params = _model()
  engine = E.Engine(model, params)
  free = engine.generate(PROMPTS, 12)
  stop = free[1][4]
  stopped = engine.generate(PROMPTS, 12, stop_ids=[stop])
  for row, out in zip(free, stopped):
    assert out == (row[:row.index(stop) + 1] if stop in row else row)
  streamed = [[] for _ in PROMPTS]
  for chunk in engine.stream(PROMPTS, 12, stop_ids=[stop], chunk=5):
    assert len(chunk) == len(PROMPTS)
    for row, new in zip(streamed, chunk):
      row += new
  assert streamed == stopped
  # Force a "tool output" after row 1 stopped: it continues exactly as if that text had been in its prompt.
  state = engine.start(PROMPTS, 12, extra_slots=16)
  state, out = engine.decode(state, 12, stop_ids=[stop])
  assert bool(state.done[1])
  forced = [[], [11, 12, 13], []]
  state = engine.force(state, forced)
  assert not bool(state.done[1])
  state, more = engine.decode(state, 4, stop_ids=[stop])  # (decode and force consume the state they get)
  history = PROMPTS[1] + stopped[1] + forced[1]
  expected = _greedy_by_recompute(model, params, history, 4)
  expected = expected[:expected.index(stop) + 1] if stop in expected else expected
  assert [t for t in more[1].tolist() if t != E.NO_TOKEN] == expected
  assert (more[0] == E.NO_TOKEN).all()  # rows that were not given tokens stay stopped
  with pytest.raises(ValueError, match="free slots"):
    engine.force(state, [[1] * 40, [], []])


def test_sampling_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda **kw: np.isfinite(np.asarray(E.filtered_logits(logits, E.Sampling(1.0, **kw))))[0].tolist()
  assert kept() == [True] * 5
  assert kept(top_k=2) == [True, True, False, False, False]
  assert kept(top_p=0.65) == [True, True, False, False, False]  # 0.5 + 0.2 reaches 0.65
  assert kept(top_p=0.75) == [True, True, True, False, False]
  assert kept(min_p=0.35) == [True, True, False, False, False]  # >= 0.35 x 0.5
  assert kept(top_k=3, top_p=0.75) == [True, True, False, False, False]  # top-p on the top-3 renormalized
  # Draws follow the filtered distribution (8192 rows; top_k=3 renormalises 0.5/0.2/0.15).
  rows = jnp.broadcast_to(logits, (8192, 5))
  draws = np.asarray(E.sample_tokens(rows, jax.random.PRNGKey(0), E.Sampling(1.0, top_k=3)))
  freq = np.bincount(draws, minlength=5) / len(draws)
  np.testing.assert_allclose(freq, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], atol=0.02)
  assert (np.asarray(E.sample_tokens(rows[:4], jax.random.PRNGKey(0), E.Sampling(0.0))) == 0).all()


def test_sampling_settings_per_row_equal_each_rows_scalar_settings():
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 32)) * 3
  settings = [E.Sampling(1.0), E.Sampling(0.7, top_k=5), E.Sampling(1.3, top_p=0.6), E.Sampling(0.5, min_p=0.2)]
  per_row = E.Sampling(*(np.array([getattr(s, f) for s in settings]) for f in ("temperature", "top_k", "top_p",
                                                                                 "min_p")))
  got = np.asarray(E.filtered_logits(logits, per_row))
  for i, s in enumerate(settings):
    np.testing.assert_allclose(got[i], np.asarray(E.filtered_logits(logits[i:i + 1], s))[0], rtol=1e-6)
  # A greedy row among sampled rows stays greedy; the sampled rows do sample.
  mixed = E.Sampling(np.array([0.0, 5.0, 5.0, 5.0], np.float32), np.zeros(4, np.int32), np.ones(4, np.float32),
                     np.zeros(4, np.float32))
  draws = np.stack([np.asarray(E.sample_tokens(logits, jax.random.PRNGKey(k), mixed)) for k in range(12)])
  assert (draws[:, 0] == int(jnp.argmax(logits[0]))).all()
  assert len(set(draws[:, 1].tolist())) > 1


@pytest.mark.parametrize("pattern", ["A", "AC"])
def test_restarted_rows_start_fresh_and_compaction_keeps_the_logits(pattern):
  model, params = _model(layer_pattern=pattern)
  engine = E.Engine(model, params, slot_multiple=16, prompt_multiple=8)
  state = engine.start(PROMPTS, 8, extra_slots=64)
  state, _ = engine.decode(state, 5)
  # Row 1's request is over: a new prompt takes the row. Its logits are those of the prompt alone.
  new = [1, 11, 12, 13, 14]
  state = engine.force(engine.restart(state, [False, True, False]), [[], new, []])
  alone = engine.start([new], 8)
  np.testing.assert_allclose(state.logits[1], alone.logits[0], atol=1e-5)
  assert bool(state.done[2]) is False and int(state.cache["pos"][1]) == len(new)
  # Compaction frees the slots rows 0-2 no longer use and changes nothing any row attends to.
  index = int(state.cache["index"])
  copy = jax.tree_util.tree_map(jnp.copy, state)
  compacted = engine.compact(copy)
  assert int(compacted.cache["index"]) < index
  assert int(compacted.cache["index"]) == int(np.max(np.sum(np.asarray(state.cache["valid"]), axis=1)))
  after_a, out_a = engine.decode(state, 4)
  after_b, out_b = engine.decode(compacted, 4)
  np.testing.assert_array_equal(out_a, out_b)
  np.testing.assert_allclose(after_a.logits, after_b.logits, atol=1e-5)


def test_sampled_generation_depends_on_seed_and_limits_are_checked():
  model, params = _model()
  engine = E.Engine(model, params)
  outs = {tuple(engine.generate([[1]], 10, E.Sampling(1.0, top_p=0.9), seed=s)[0]) for s in range(4)}
  assert len(outs) > 1
  assert engine.generate([[1]], 10, E.Sampling(1.0, top_k=1), seed=3) == engine.generate([[1]], 10)
  with pytest.raises(ValueError, match="max_seq_len=96"):
    engine.generate([[1] * 90], 10)
  with pytest.raises(ValueError, match="at least one token"):
    engine.generate([[1], []], 4)


def test_int8_weights_and_kv_cache_stay_close_to_float():
  model, params = _model(d_model=64, head_dim=16, d_ff=128)
  w = params["layers"]["block_0"]["attn"]["o"]["kernel"]  # [L, N, H, D]: contracted over N and H
  q, scale = quant.quantize_kernel(w, (1, 2))
  assert q.dtype == jnp.int8 and scale.shape == (2, 64)
  assert float(jnp.max(jnp.abs(q * scale[:, None, None] - w))) <= float(jnp.max(scale)) / 2 + 1e-7
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 24)))
  ref = jax.nn.log_softmax(model.apply({"params": params}, tokens))
  for mode in ("int8", "w8a8"):
    qmodel, qparams = quant.quantize(model, params, mode)
    assert qparams["layers"]["block_0"]["mlp"]["up"]["kernel"].dtype == jnp.int8
    assert qparams["embed"]["embedding"].dtype == jnp.float32  # lookups stay float
    got = jax.nn.log_softmax(qmodel.apply({"params": qparams}, tokens))
    assert 0 < float(jnp.max(jnp.abs(got - ref))) < 0.05, mode
  with pytest.raises(ValueError, match="int4"):
    quant.quantize(model, params, "int4")
  state = E.prefill(model, params, tokens[:, :16], jnp.asarray([16, 16]), 32, jax.random.PRNGKey(0), "int8")
  assert state.cache["layers"][0]["k"].dtype == jnp.int8
  state = E.extend(model, params, state, tokens[:, 16:20], jnp.asarray([4, 4]))
  assert 0 < float(jnp.max(jnp.abs(jax.nn.log_softmax(state.logits) - ref[:, 19]))) < 0.05


def test_speculative_greedy_equals_plain_greedy():
  target, draft = E.Engine(*_model(0)), E.Engine(*_model(1, d_model=16, n_layers=1))
  for stop in ([], [target.generate(PROMPTS, 16)[0][5]]):
    plain = target.generate(PROMPTS, 16, stop_ids=stop)
    for gamma in (1, 3):
      out, stats = speculative.generate(target, draft, PROMPTS, 16, gamma=gamma, stop_ids=stop)
      assert out == plain and stats["rounds"] >= 1
  out, stats = speculative.generate(target, target, PROMPTS, 16, gamma=3)  # a perfect draft
  assert out == target.generate(PROMPTS, 16) and stats["acceptance"] == 1.0 and stats["rounds"] == 4
  with pytest.raises(ValueError, match="layer_pattern"):
    speculative.generate(E.Engine(*_model(layer_pattern="AC")), draft, PROMPTS, 4)


def test_speculative_sampling_follows_the_target_distribution():
  # A sharp draft that disagrees with the target: accepting its tokens blindly would give q, not p.
  target_model, target_params = _model(0, vocab_size=8, max_seq_len=16)
  draft_model, draft_params = _model(5, vocab_size=8, max_seq_len=16)
  draft_params = jax.tree_util.tree_map(lambda x: x * 3, draft_params)
  rows = [[1, 2]] * 3000
  target, draft = E.Engine(target_model, target_params), E.Engine(draft_model, draft_params)
  out, stats = speculative.generate(target, draft, rows, 2, gamma=2, sampling=E.Sampling(1.0), seed=0)
  first = np.bincount([o[0] for o in out], minlength=8) / len(out)
  second = np.bincount([o[1] for o in out], minlength=8) / len(out)
  p = np.asarray(jax.nn.softmax(target_model.apply({"params": target_params}, jnp.asarray([[1, 2]]))[0, -1]))
  q = np.asarray(jax.nn.softmax(draft_model.apply({"params": draft_params}, jnp.asarray([[1, 2]]))[0, -1]))
  assert 0.5 * np.abs(p - q).sum() > 0.15  # the test can tell p from q
  assert 0.5 * np.abs(first - p).sum() < 0.04
  plain = target.generate(rows, 2, E.Sampling(1.0), seed=1)  # the second token's marginal, by plain sampling
  second_plain = np.bincount([o[1] for o in plain], minlength=8) / len(plain)
  assert 0.5 * np.abs(second - second_plain).sum() < 0.06
  assert 0 < stats["acceptance"] < 1


def test_tensor_parallel_decoding_matches_one_device():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "engine_mesh.py")], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "tensor-parallel decoding matches" in out.stdout


def test_bench_decode_cli(tmp_path):
  cfg = os.path.join(ROOT, "tests", "micro_config.py")
  subprocess.run([sys.executable, "-m", "llm_jax.train", f"--config={cfg}", f"--workdir={tmp_path}",
                  "--config.train.steps=2"], cwd=ROOT, env=ENV, check=True, capture_output=True)
  out = subprocess.run([sys.executable, "-m", "llm_jax.bench", "decode", f"--config={cfg}", f"--workdir={tmp_path}",
                        "--repeats=1", "--batch=2", "--new_tokens=4", "--nocache_tokens=4", "--prefill_tokens=8",
                        "--prompt_tokens=4", "--bpb_rows=4", "--variants=float32,w8a8_kv"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ("prefill_tok_s", "decode_b1_tok_s_float32", "decode_b2_tok_s_w8a8_kv", "ratio_b2_vs_b1_float32",
              "nocache_b1_tok_s_at_4", "ratio_cache_vs_nocache_at_4", "bpb_float32", "bpb_w8a8_kv"):
    assert result[key] > 0, key
  assert abs(result["delta_bpb_w8a8_kv_pct"]) < 5
  bad = subprocess.run([sys.executable, "-m", "llm_jax.bench", "bogus", f"--config={cfg}"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "usage" in bad.stderr
