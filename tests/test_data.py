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
    sources.file_documents(str(tmp_path))


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


def test_hosts_read_disjoint_data(corpus, small_tokenizer):
  texts = [f"document number {i}\n" for i in range(50)]
  rows = []
  for host in range(2):
    ds = pipeline.train_dataset(texts, small_tokenizer, seq_len=16, batch_size=1, seed=0, process_index=host,
                                process_count=2)
    it = iter(ds)
    rows.append({small_tokenizer.decode(t for t in next(it)["inputs"][0] if t > 3) for _ in range(4)})
  assert rows[0].isdisjoint(rows[1])


def test_eval_batches_are_padded_and_masked(corpus, small_tokenizer):
  batches = pipeline.eval_batches(["a short text\n"], small_tokenizer, seq_len=32, batch_size=4, num_batches=3)
  assert len(batches) == 1
  b = batches[0]
  assert b["inputs"].shape == (4, 32)
  assert (b["segment_ids"][1:] == 0).all() and (b["segment_ids"][0] > 0).sum() > 0
