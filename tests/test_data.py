"""Corpus, split, chunking, tokenizer and the grain pipeline."""

import numpy as np
import pytest

from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import pipeline, sources


def test_stdlib_corpus_has_docs_and_code(corpus):
  assert {d["source"] for d in corpus} == {"docs", "code"}
  assert sum(d["source"] == "docs" for d in corpus) > 50
  assert all(d["text"].strip() for d in corpus)


def test_stdlib_walk_skips_tests_and_site_packages(tmp_path, monkeypatch):
  for rel in ("os.py", "json/__init__.py", "test/test_os.py", "json/tests/test_x.py", "site-packages/pkg/m.py",
              "notes.txt", "empty.py"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("" if rel == "empty.py" else f"# {rel}\n")
  monkeypatch.setattr(sources.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
  code = [d["text"] for d in sources.stdlib_documents() if d["source"] == "code"]
  assert sorted(code) == ["# json/__init__.py\n", "# os.py\n"]


def test_split_is_deterministic_and_disjoint(corpus):
  train, val = sources.split(corpus, 0.1)
  train2, val2 = sources.split(list(reversed(corpus)), 0.1)
  assert {d["text"] for d in val} == {d["text"] for d in val2}
  assert len(train) + len(val) == len(corpus) and 0 < len(val) < len(corpus) * 0.2
  assert not {d["text"] for d in train} & {d["text"] for d in val}


@pytest.mark.parametrize("max_chars", [1, 7, 100, 10_000])
def test_chunk_is_lossless_and_bounded(max_chars):
  text = "def f():\n    return 1\n\n" * 20 + "x" * 250
  parts = list(sources.chunk(text, max_chars))
  assert "".join(parts) == text
  assert all(0 < len(p) <= max_chars for p in parts)


def test_file_source_reports_bad_jsonl_line(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
  with pytest.raises(ValueError, match=r"a\.jsonl:2"):
    sources.load_documents(str(tmp_path))


def test_tokenizer_round_trip_and_special_tokens(small_tokenizer):
  tok = small_tokenizer
  text = "class A:\n    def f(self, x):\n\t\treturn x + 12345  # ünïcødé → 字\n\n"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert set(ids).isdisjoint(tok.special.values())
  # Control tokens written as text are not turned into control ids.
  assert tok.special["<|user_start|>"] not in tok.encode("<|user_start|>")
  assert tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 3
  # Digits are split one per token.
  assert all(len(tok.decode([i]).strip()) <= 1 for i in tok.encode("1234567") if tok.decode([i]).strip())
  # Byte lengths add up to the UTF-8 length of the text.
  assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
  assert all(tok.token_bytes()[i] == 0 for i in tok.special.values())


def test_tokenizer_save_load(small_tokenizer, tmp_path):
  small_tokenizer.save(str(tmp_path))
  tok = tokenizer_lib.load(str(tmp_path))
  assert tok.encode("import os\n") == small_tokenizer.encode("import os\n")
  with pytest.raises(FileNotFoundError, match="no tokenizer"):
    tokenizer_lib.load(str(tmp_path / "missing"))


def test_pipeline_packs_full_rows_with_segments(corpus, small_tokenizer):
  texts = pipeline.pieces(corpus[:40], 300)
  ds = pipeline.train_dataset(texts, small_tokenizer, seq_len=64, batch_size=4, seed=0)
  batch = next(iter(ds))
  assert set(batch) == set(pipeline.FEATURES)
  assert all(v.shape == (4, 64) for v in batch.values())
  assert (batch["segment_ids"] > 0).all()  # training rows are full: no padding
  # targets are inputs shifted by one within each segment.
  seg, inp, tgt = batch["segment_ids"], batch["inputs"], batch["targets"]
  same = seg[:, 1:] == seg[:, :-1]
  np.testing.assert_array_equal(tgt[:, :-1][same], inp[:, 1:][same])
  # positions restart at 0 where a segment starts.
  starts = np.concatenate([np.ones((4, 1), bool), ~same], axis=1)
  assert (batch["positions"][starts] == 0).all()
  assert (np.diff(batch["positions"], axis=1)[same] == 1).all()
  # a segment starting in a row starts with BOS (unless it is a continuation at column 0).
  assert (inp[:, 1:][~same] == small_tokenizer.bos_id).all()


def test_pipeline_iterator_state_restores_exactly(corpus, small_tokenizer):
  texts = pipeline.pieces(corpus[:40], 300)
  ds = pipeline.train_dataset(texts, small_tokenizer, seq_len=64, batch_size=4, seed=0)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(ds)
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


class _PieceTokenizer:
  """Piece "i" -> (i % 5 + 1) tokens of value 4 + i: every target token names the piece it came from."""
  bos_id, eos_id = 1, 2

  def encode(self, text):
    return [4 + int(text)] * (int(text) % 5 + 1)


def _pieces_in(batch) -> set[int]:
  return {int(t) - 4 for t in batch["targets"][batch["segment_ids"] > 0]}


def _assert_batches_equal(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _host_datasets(texts, hosts, batch_size=8, **kw):
  per = batch_size // hosts
  return [pipeline.train_dataset(texts, _PieceTokenizer(), seq_len=8, batch_size=batch_size, seed=0,
                                 rows=range(h * per, (h + 1) * per), **kw) for h in range(hosts)]


def test_hosts_rows_concatenate_to_the_global_batch_and_read_disjoint_pieces():
  texts = [str(i) for i in range(256)]
  [one] = _host_datasets(texts, 1)
  full, hosts = iter(one), [iter(ds) for ds in _host_datasets(texts, 2)]
  seen = [set(), set()]
  for _ in range(6):  # inside the first epoch: each row stream holds 32 pieces (~96 tokens) of it
    parts = [next(it) for it in hosts]
    assert all(p["inputs"].shape == (4, 8) for p in parts)
    _assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, next(full))
    for h, part in enumerate(parts):
      seen[h] |= _pieces_in(part)
  assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])  # each piece is tokenized by one host only


def test_every_piece_reaches_training_once_per_epoch():
  texts = [str(i) for i in range(40)]
  it = iter(pipeline.train_dataset(texts, _PieceTokenizer(), seq_len=8, batch_size=4, seed=0))
  seen, tokens = [], 0
  while tokens < 4 * 40:  # one epoch holds ~40 x 3 input tokens: this covers it with room to spare
    batch = next(it)
    seen.append(_pieces_in(batch))
    tokens += batch["inputs"].size
  assert set().union(*seen) == set(range(40))


def test_state_saved_by_two_hosts_restores_onto_one_and_back():
  texts = [str(i) for i in range(64)]
  hosts = [iter(ds) for ds in _host_datasets(texts, 2)]
  for _ in range(5):
    for it in hosts:
      next(it)
  states = [it.get_state() for it in hosts]
  merged = {**states[0], "rows": {**states[0]["rows"], **states[1]["rows"]}}  # what checkpoint.DataHandler does
  expected = [[next(it) for it in hosts] for _ in range(3)]
  [one] = [iter(ds) for ds in _host_datasets(texts, 1)]
  one.set_state(merged)
  for parts in expected:
    _assert_batches_equal(next(one), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  # ... and one host's state restores onto any host's rows (the other rows are ignored).
  state = one.get_state()
  want = next(one)
  second = iter(_host_datasets(texts, 2)[1])
  second.set_state(state)
  _assert_batches_equal(next(second), {k: v[4:] for k, v in want.items()})
  with pytest.raises(ValueError, match="data.batch_size=8, now 4"):
    iter(pipeline.train_dataset(texts, _PieceTokenizer(), seq_len=8, batch_size=4, seed=0)).set_state(state)
  with pytest.raises(ValueError, match=r"lacks rows \[4, 5, 6, 7\]"):
    second.set_state(states[0])


def test_eval_rows_of_hosts_concatenate_to_the_global_batches(corpus, small_tokenizer):
  texts = pipeline.pieces(corpus[:10], 300)
  kw = {"seq_len": 32, "batch_size": 4, "num_batches": 3}
  full = pipeline.eval_batches(texts, small_tokenizer, **kw)
  halves = [pipeline.eval_batches(texts, small_tokenizer, rows=rows, **kw) for rows in ([0, 1], [2, 3])]
  assert len(full) == 3
  for whole, a, b in zip(full, *halves):
    _assert_batches_equal({k: np.concatenate([a[k], b[k]]) for k in whole}, whole)


def test_eval_batches_are_padded_and_masked(corpus, small_tokenizer):
  batches = pipeline.eval_batches(["a short text\n"], small_tokenizer, seq_len=32, batch_size=4, num_batches=3)
  assert len(batches) == 1
  b = batches[0]
  assert b["inputs"].shape == (4, 32)
  assert (b["segment_ids"][1:] == 0).all() and (b["segment_ids"][0] > 0).sum() > 0
