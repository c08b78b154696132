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


@pytest.fixture(scope="module")
def facts():
  """Facts of differing token lengths: two attributes of six people."""
  from llm_jax.data.tasks import people  # pylint: disable=import-outside-toplevel
  return needle.people_facts(people.World(20, seed=1).people[:6], ["city", "employer"])


def _micro(tok):
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=32)
  return cfg, Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]


def test_fact_rows_put_the_fact_distance_tokens_before_the_question(small_tokenizer, haystack, facts):
  tok = small_tokenizer
  assert len(facts) == 12 and all(f == q + a + "." and a[0] == " " for f, q, a in facts)
  assert facts[0][1].endswith(" grew up in") and facts[1][1].endswith(" works for")
  stream = needle.haystack_stream(tok, haystack, 5000)
  overhead = needle.fact_overhead(tok, facts, lead=4)
  orders = []
  for distance in (0, 7, 40):
    ids, mask, which = needle.fact_samples(tok, stream, facts, distance, 9, lead=4, seed=2)
    length = distance + overhead
    assert ids.shape == mask.shape == (9, length) and (ids[:, 0] == tok.bos_id).all()
    leads = []
    for row, m, i in zip(ids.tolist(), mask, which):
      fact, question, answer = (tok.encode(t) for t in ("\n" + facts[i][0], "\n" + facts[i][1], facts[i][2]))
      assert m.sum() == len(answer) and m[-len(answer):].all() and row[-len(answer):] == answer
      question_at = length - len(answer) - len(question)
      assert row[question_at:question_at + len(question)] == question
      fact_end = question_at - distance  # exactly `distance` filler tokens between the fact and the question
      assert row[fact_end - len(fact):fact_end] == fact
      leads.append(fact_end - len(fact) - 1)
    assert min(leads) == 4  # the longest fact gets just the lead; shorter ones get more filler before them
    orders.append(which.tolist())
  assert orders[0] == orders[1] == orders[2] and len(set(orders[0])) == 9  # paired across distances, no repeat
  with pytest.raises(ValueError, match="the haystack has 50 tokens; distance 60 needs"):
    needle.fact_samples(tok, stream[:50], facts, 60, 2, lead=4)
  with pytest.raises(ValueError, match="must not be negative"):
    needle.fact_samples(tok, stream, facts, -1, 2)
  with pytest.raises(ValueError, match="no facts"):
    needle.fact_samples(tok, stream, [], 0, 2)
  with pytest.raises(ValueError, match="empty answer"):
    needle.fact_samples(tok, stream, [("A is B.", "A is", "")], 0, 2)


def test_fact_distance_scores_what_an_oracle_gets_right(small_tokenizer, haystack, facts, monkeypatch):
  """A stub model: right with probability 1/2 at every answer token and wrong everywhere else, except that it
  answers facts[0]'s value wrong at its last token (probability 1/4 there). accuracy and answer_logprob must
  count just the answer tokens of each row, across batches of 3 (the last one padded)."""
  tok = small_tokenizer
  tails = [(tok.encode("\n" + q), tok.encode(a)) for _, q, a in facts]
  bad = tok.encode(facts[0][2])

  def stub(ids):
    logp, right = np.full((len(ids), ids.shape[1] - 1), np.log(0.5)), np.zeros((len(ids), ids.shape[1] - 1), bool)
    for b, row in enumerate(ids.tolist()):
      answer = next(a for q, a in tails if row[len(row) - len(q) - len(a):] == q + a)
      right[b, -len(answer):] = True  # position t predicts token t + 1
      if answer == bad:
        right[b, -1], logp[b, -1] = False, np.log(0.25)
    return logp, right

  monkeypatch.setattr(needle, "_token_scores", lambda model_config, params, longest: stub)
  results = needle.fact_distance(None, None, tok, haystack, facts, [0, 5], samples_per_distance=7, batch_size=3,
                                 seed=4, lead=2)
  _, _, which = needle.fact_samples(tok, needle.haystack_stream(tok, haystack, 5000), facts, 0, 7, lead=2, seed=4)
  wrong = np.asarray([facts[i][2] == facts[0][2] for i in which])
  logprob = np.mean([len(tok.encode(facts[i][2])) * np.log(0.5) + w * np.log(0.5) for i, w in zip(which, wrong)])
  assert 0 < wrong.sum() < 7
  overhead = needle.fact_overhead(tok, facts, lead=2)
  for distance in (0, 5):
    assert results[distance]["accuracy"] == pytest.approx(1 - wrong.mean())
    assert results[distance]["answer_logprob"] == pytest.approx(logprob)
    assert results[distance]["length"] == distance + overhead


def test_fact_distance_runs_past_max_seq_len(small_tokenizer, haystack, facts):
  """A micro model at max_seq_len 32 scored on rows past it: the same log-probabilities as the model applied
  to the rows directly; a learned position table cannot go past it, a distance cannot exceed the haystack."""
  tok = small_tokenizer
  cfg, params = _micro(tok)
  results = needle.fact_distance(cfg, params, tok, haystack, facts, [40], samples_per_distance=3, seed=1)
  length = 40 + needle.fact_overhead(tok, facts)
  assert results[40]["length"] == length > cfg.max_seq_len
  ids, mask, _ = needle.fact_samples(tok, needle.haystack_stream(tok, haystack, 4 * length * 3), facts, 40, 3,
                                     seed=1)
  apply = jax.jit(Transformer(cfg.replace(max_seq_len=length)).apply)
  logp = np.asarray(jax.nn.log_softmax(apply({"params": params}, jnp.asarray(ids))))
  token_logp = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
  assert results[40]["answer_logprob"] == pytest.approx(np.where(mask[:, 1:], token_logp, 0).sum(-1).mean(),
                                                        rel=1e-4)
  assert results[40]["accuracy"] == np.mean([(logp[r, :-1].argmax(-1) == ids[r, 1:])[mask[r, 1:]].all()
                                             for r in range(3)])
  with pytest.raises(ValueError, match="learned position table"):
    needle.fact_distance(cfg.replace(positions="learned"), None, tok, haystack, facts, [40], samples_per_distance=3)
  with pytest.raises(ValueError, match="the haystack has"):
    needle.fact_distance(cfg, params, tok, haystack[:1], facts, [0, 100_000], samples_per_distance=2)


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
  needle.main(["--workdir", extended, "--distances", "0,40", "--samples", "2", "--people", "20"])
  results = json.loads(capsys.readouterr().out)
  assert sorted(results) == ["0", "40"] and results["40"]["length"] - results["0"]["length"] == 40
  assert all(0 <= r["accuracy"] <= 1 and r["answer_logprob"] < 0 for r in results.values())
  for bad, named in ((["--lengths", "128", "--distances", "0"], "not allowed with"),
                     (["--distances", "0", "--people", "3"], "at least 10 people")):
    with pytest.raises(SystemExit) as e:
      needle.main(["--workdir", extended, *bad])
    assert e.value.code == 2 and named in capsys.readouterr().err
  for bad, named in ((["--workdir", str(tmp_path / "nothing")], "config.json"),
                     (["--workdir", extended, "--rope_scaling", "alibi"], "rope_scaling"),
                     (["--workdir", extended, "--lengths", "16"], "length 16 is shorter than the needle")):
    with pytest.raises(SystemExit) as e:
      needle.main(["--lengths", "128", *bad])
    assert e.value.code == 2 and named in capsys.readouterr().err
