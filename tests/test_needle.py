"""The needle-in-a-haystack eval (llm_jax/eval/needle.py): sample layout, training documents, scoring that
agrees with scoring each answer token from its prefix alone, and the context-extension recipe end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.eval import needle
from llm_jax.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def haystack(corpus):
  return [d["text"] for d in corpus[200:260]]


def test_samples_place_the_needle_at_its_depth_and_end_with_the_key(small_tokenizer, haystack):
  tok = small_tokenizer
  stream = np.asarray([i for t in haystack[:10] for i in tok.encode(t)], np.int32)
  ids, answer_at, depths = needle.samples(tok, stream, 160, 8, seed=1)
  assert ids.shape == (8, 160) and (ids[:, 0] == tok.bos_id).all()
  np.testing.assert_allclose(depths, (np.arange(8) + 0.5) / 8)
  for row, at, depth in zip(ids, answer_at, depths):
    key = tok.decode(row[at].tolist())
    assert len(key) == 6 and key[0] == " " and key[1:].isdigit() and at[-1] == 159
    needle_ids = tok.encode(needle.needle(key[1:]))
    starts = [i for i in range(160) if row[i:i + len(needle_ids)].tolist() == needle_ids]
    assert len(starts) == 1
    fill = 160 - 1 - len(needle_ids) - len(tok.encode(needle.QUESTION)) - len(at)
    assert starts[0] == 1 + round(depth * fill)
    assert tok.decode(row[at[0] - len(tok.encode(needle.QUESTION)):at[0]].tolist()) == needle.QUESTION
  with pytest.raises(ValueError, match="shorter than the needle"):
    needle.samples(tok, stream, 20, 1)


def test_documents_ask_for_their_own_key_within_the_token_budget(small_tokenizer, haystack):
  docs = needle.documents(haystack, 30, min_chars=100, max_chars=400, seed=3, tokenizer=small_tokenizer,
                          max_tokens=200)
  assert len(docs) == 30 and {d["source"] for d in docs} == {"needle"}
  for d in docs:
    body, answer = d["text"].rsplit(needle.QUESTION, 1)
    key = answer.strip()
    assert len(key) == 5 and key.isdigit() and needle.needle(key) in body and answer == f" {key}\n"
    assert len(small_tokenizer.encode(d["text"])) + 1 <= 200
  with pytest.raises(ValueError, match="no haystack text"):
    needle.documents(["short"], 1, min_chars=100, max_chars=200)


def test_scores_equal_each_answer_token_scored_from_its_prefix(small_tokenizer, haystack):
  """One teacher-forced pass (what evaluate does) against a pass per answer token that sees only the prefix
  before it: same log-probabilities, same greedy hits. An off-by-one in either reading fails."""
  tok = small_tokenizer
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=96)
  params = Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  results = needle.evaluate(cfg, params, tok, haystack, [96], samples_per_length=4, batch_size=3, seed=5)
  ids, answer_at, _ = needle.samples(tok, needle.haystack_stream(tok, haystack, 4 * 96 * 4), 96, 4, seed=5)
  # One row per (sample, answer token j): the sample up to j, then noise where the answer and beyond were.
  rng = np.random.RandomState(0)
  masked = np.stack([np.concatenate([row[:j], rng.randint(0, tok.vocab_size, 96 - j)]) for row, at in
                     zip(ids, answer_at) for j in at]).astype(np.int32)
  logp = np.asarray(jax.nn.log_softmax(Transformer(cfg).apply({"params": params}, jnp.asarray(masked))))
  steps = logp[np.arange(len(masked)), answer_at.reshape(-1) - 1].reshape(*answer_at.shape, -1)
  targets = ids[np.arange(len(ids))[:, None], answer_at]
  logprobs = np.take_along_axis(steps, targets[..., None], -1)[..., 0].sum(-1)
  hits = (steps.argmax(-1) == targets).all(-1)
  assert results[96]["answer_logprob"] == pytest.approx(np.mean(logprobs), rel=1e-4)
  assert results[96]["accuracy"] == np.mean(hits) and len(results[96]["by_depth"]) == needle.DEPTH_BINS


def test_context_extension_recipe_and_the_cli(tmp_path, capsys):
  """README "Long context": a run at 32 tokens, continued at 128 with YaRN (init_from lets RoPE change and
  says so), then the needle CLI on it, with and without a RoPE override; bad input exits 2 naming it."""
  from llm_jax import config as config_lib, train  # pylint: disable=import-outside-toplevel
  micro = os.path.join(os.path.dirname(os.path.abspath(__file__)), "micro_config.py")
  base = config_lib.load_file(micro)
  base.train.steps = base.train.eval_every = base.train.checkpoint_every = 2
  base.sample.prompts = ()
  train.pretrain(base, str(tmp_path / "base"))
  long = config_lib.load_file(micro)
  long.init_from = str(tmp_path / "base")
  long.data.seq_len, long.data.batch_size, long.data.chunk_chars = 128, 2, 8192
  long.model.rope_scaling, long.model.rope_scaling_factor, long.model.rope_original_max_len = "yarn", 4.0, 32
  long.train.steps = long.train.eval_every = long.train.checkpoint_every = 2
  long.sample.prompts = ()
  train.pretrain(long, str(tmp_path / "long"))
  assert "RoPE changed" in capsys.readouterr().out
  saved = json.loads((tmp_path / "long" / "config.json").read_text())
  assert (saved["model"]["rope_scaling"], saved["data"]["seq_len"]) == ("yarn", 128)

  for extra in ([], ["--rope_scaling", "none"]):
    needle.main(["--workdir", str(tmp_path / "long"), "--lengths", "128,256", "--samples", "4", *extra])
    results = json.loads(capsys.readouterr().out)
    assert sorted(results) == ["128", "256"]
    assert all(0 <= r["accuracy"] <= 1 and r["answer_logprob"] < 0 for r in results.values())
  extended = str(tmp_path / "long")
  for bad, named in ((["--workdir", str(tmp_path / "nothing")], "config.json"),
                     (["--workdir", extended, "--rope_scaling", "alibi"], "rope_scaling"),
                     (["--workdir", extended, "--lengths", "16"], "length 16 is shorter than the needle")):
    with pytest.raises(SystemExit) as e:
      needle.main(["--lengths", "128", *bad])
    assert e.value.code == 2 and named in capsys.readouterr().err
