"""Deduplication (exact, MinHash + LSH), reading sources with bad records, python -m llm_jax.data.prepare, and
weighted mixtures in the input pipeline."""

import json
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import train
from llm_jax.data import dedup, pipeline, prepare, sources
from llm_jax.data.tasks import spelling


def _prose(rng: random.Random, n_words: int) -> str:
  """English-like text: a sentence per line, of corpus words and stop words, ending in a period."""
  vocab, lines, n = spelling.words(), [], 0
  while n < n_words:
    sentence = [rng.choice(vocab) for _ in range(rng.randint(6, 14))]
    sentence[rng.randrange(len(sentence))] = rng.choice(("the", "and", "of", "to", "with"))
    lines.append(" ".join(sentence).capitalize() + ".")
    n += len(sentence)
  return "\n".join(lines) + "\n"


def _edit(rng: random.Random, text: str, n_edits: int) -> str:
  """n small edits: a word replaced, inserted or deleted."""
  words, vocab = text.split(), spelling.words()
  for _ in range(n_edits):
    i, op = rng.randrange(len(words)), rng.choice("rid")
    if op == "r":
      words[i] = rng.choice(vocab)
    elif op == "i":
      words.insert(i, rng.choice(vocab))
    else:
      del words[i]
  return " ".join(words)


def test_exact_key_ignores_case_and_whitespace_only():
  assert dedup.exact_key("Hello  world\n") == dedup.exact_key("hello world")
  assert dedup.exact_key("hello world") != dedup.exact_key("hello world!")


def test_signatures_are_deterministic_and_estimate_jaccard():
  rng = random.Random(1)
  a = _prose(rng, 300)
  b = _edit(rng, a, 12)
  h1, h2 = dedup.MinHasher(seed=3), dedup.MinHasher(seed=3)
  assert (h1.signature(a) == h2.signature(a)).all()  # no process-salted hashing
  j = dedup.jaccard(a, b)
  estimate = float(np.mean(h1.signature(a) == h1.signature(b)))
  assert 0.3 < j < 0.9 and abs(estimate - j) < 0.12  # 112 hashes: standard error <= 0.05


def test_near_duplicate_recall_and_false_positive_rate():
  """Issue #5: recall >= 0.95 on planted pairs with Jaccard >= 0.8, false positives <= 0.01 at Jaccard <= 0.5."""
  rng = random.Random(0)
  docs, pairs = [], []
  for i in range(700):
    base = _prose(rng, rng.randint(150, 500))
    n_words = len(base.split())
    # Near (about 0.8-1.0) or far (<= 0.5) edits, scaled to the length: each edit touches up to 5 shingles.
    n_edits = rng.randint(1, max(1, n_words // 45)) if i % 2 else rng.randint(n_words // 12, n_words // 6)
    docs += [base, _edit(rng, base, n_edits)]
    pairs.append((2 * i, 2 * i + 1))
  hasher = dedup.MinHasher()
  roots = dedup.clusters(np.stack([hasher.signature(d) for d in docs]), bands=14, rows=8)
  jac = [dedup.jaccard(docs[a], docs[b]) for a, b in pairs]
  near = [roots[a] == roots[b] for (a, b), j in zip(pairs, jac) if j >= 0.8]
  far = [roots[a] == roots[b] for (a, b), j in zip(pairs, jac) if j <= 0.5]
  assert len(near) >= 200 and len(far) >= 200, (len(near), len(far))
  recall, fpr = np.mean(near), np.mean(far)
  print(f"near-duplicate recall {recall:.3f} on {len(near)} pairs (J >= 0.8), false positives {fpr:.4f} on "
        f"{len(far)} pairs (J <= 0.5)")
  assert recall >= 0.95 and fpr <= 0.01
  # Unrelated documents never cluster, and the survivor of each cluster is its first document.
  assert all(roots[i] in (i, i - i % 2) for i in range(len(docs)))


def test_clusters_are_transitive_and_checks_shape():
  rng = random.Random(2)
  a = _prose(rng, 400)
  b = _edit(rng, a, 3)
  c = _edit(rng, b, 3)
  sigs = np.stack([dedup.MinHasher().signature(t) for t in (_prose(rng, 200), a, b, c)])
  assert dedup.clusters(sigs).tolist() == [0, 1, 1, 1]
  with pytest.raises(ValueError, match="bands \\* rows"):
    dedup.clusters(sigs, bands=10, rows=10)


def test_stream_counts_bad_records_and_load_names_them(tmp_path):
  good = {"text": "fine"}
  (tmp_path / "a.jsonl").write_bytes(b"\n".join([
      json.dumps(good).encode(), b'{"text": "broken', b'["not an object"]', b'{"text": "caf\xe9"}',
      json.dumps({"text": "labelled", "source": "mine"}).encode(), b""]))
  (tmp_path / "b.txt").write_bytes(b"\xff\xfe binary")
  got = list(sources.stream(str(tmp_path)))
  skips = [(g.reason, str(g)) for g in got if isinstance(g, sources.Skipped)]
  assert [r for r, _ in skips] == ["malformed_json", "no_text", "invalid_utf8", "invalid_utf8"]
  assert "a.jsonl:2" in skips[0][1] and "a.jsonl:3" in skips[1][1] and "a.jsonl:4" in skips[2][1]
  assert "b.txt" in skips[3][1]
  docs = [g for g in got if isinstance(g, dict)]
  assert [(d["text"], d["source"]) for d in docs] == [("fine", tmp_path.name), ("labelled", "mine")]
  with pytest.raises(ValueError, match="a.jsonl:2: not JSON"):
    sources.load_documents(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    list(sources.stream(str(tmp_path / "missing")))


def test_parquet_source_and_unreadable_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")  # the [dev] and [parquet] extras install it
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  pq.write_table(pa.table({"text": ["one", None, "three"], "id": [1, 2, 3]}), tmp_path / "web.parquet")
  got = list(sources.stream(str(tmp_path / "web.parquet")))
  assert [g["text"] for g in got if isinstance(g, dict)] == ["one", "three"]
  assert [g.reason for g in got if isinstance(g, sources.Skipped)] == ["no_text"]
  assert "web.parquet:row 2" in str(got[1])
  (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
  with pytest.raises(ValueError, match="bad.parquet: unreadable parquet"):
    list(sources.stream(str(tmp_path / "bad.parquet")))
  pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
  with pytest.raises(ValueError, match="no 'text' column"):
    list(sources.stream(str(tmp_path / "nocol.parquet")))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A small dirty corpus through prepare.run with 2 worker processes."""
  root = tmp_path_factory.mktemp("corpus")
  rng = random.Random(5)
  keep = [_prose(rng, 200) for _ in range(6)]
  near = _edit(rng, keep[0], 2)
  records = [{"text": t} for t in keep] + [
      {"text": keep[1]},  # exact duplicate
      {"text": keep[2].upper().replace("\n", "  \n")},  # exact duplicate after case / whitespace folding
      {"text": near},
      {"text": "Lorem ipsum dolor sit amet. " + keep[3]},
      {"text": "Buy the best watches now, click here.\n" * 30},
      {"text": "   \n\t "},
  ]
  lines = [json.dumps(r) for r in records] + ['{"text": oops}']
  (root / "web.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  code = 'def f(x):\n    return {"a": x}  # a dict\n\n\nclass A:\n    pass\n' * 3
  (root / "snippets.jsonl").write_text(json.dumps({"text": code}) + "\n", encoding="utf-8")
  config = config_lib.base_config()
  config.data.source = f"{root / 'web.jsonl'},{root / 'snippets.jsonl'}"
  config.clean.code_sources = "snippets"
  out = tmp_path_factory.mktemp("prepared")
  stats = prepare.run(config, str(out), workers=2, progress=False, log=lambda *_: None)
  return {"stats": stats, "out": out, "keep": keep, "code": code, "near": near}


def test_prepare_keeps_good_documents_and_removes_the_rest(prepared):
  docs = sources.load_documents(str(prepared["out"]))  # what training reads
  assert [d["text"] for d in docs] == prepared["keep"] + [prepared["code"]]
  assert [d["source"] for d in docs] == ["web"] * 6 + ["snippets"]  # labels survive for data.mixture
  reasons = prepared["stats"]["reasons"]
  assert {k: v["documents"] for k, v in reasons.items()} == {
      "exact_duplicate": 2, "near_duplicate": 1, "c4_lorem_ipsum": 1, "gopher_dup_lines": 1, "empty": 1}


def test_prepare_stats_add_up(prepared):
  s = prepared["stats"]
  assert s["input"]["documents"] == 13
  malformed = s["skipped"]["malformed_json"]
  assert malformed["records"] == 1 and "web.jsonl:13" in malformed["examples"][0]
  rules = s["rules"]
  assert list(rules)[0] == "normalize" and list(rules)[-2:] == ["exact_dedup", "near_dedup"]
  for r in rules.values():
    assert r["documents_out"] <= r["documents_in"] and r["bytes_out"] <= r["bytes_in"]
  dropped = sum(v["documents"] for v in s["reasons"].values())
  assert s["input"]["documents"] - dropped == s["output"]["documents"] == 7
  assert rules["near_dedup"]["documents_out"] == 7
  assert s["sources"]["snippets"] == {"documents_in": 1, "bytes_in": len(prepared["code"]),
                                      "documents_out": 1, "bytes_out": len(prepared["code"])}
  assert s["near_dedup"] == {"clusters": 1, "largest_cluster": 2}
  assert s["mb_per_s"] > 0 and s["peak_rss_mb"]["main"] > 0
  on_disk = json.loads((prepared["out"] / "stats.json").read_text())
  assert on_disk["output"] == s["output"]


def test_prepare_report_names_reasons_and_examples(prepared):
  report = (prepared["out"] / "report.md").read_text()
  for reason in ("exact_duplicate", "near_duplicate", "c4_lorem_ipsum", "gopher_dup_lines", "malformed_json"):
    assert reason in report
  assert "web.jsonl:9` (cluster of 2, kept " in report  # the near duplicate's line and the one it repeats
  assert "web.jsonl:1)" in report


def test_prepare_cli_errors_name_the_problem(tmp_path):
  run = lambda *args: subprocess.run([sys.executable, "-m", "llm_jax.data.prepare", *args], capture_output=True,
                                     text=True, timeout=120, check=False)
  r = run("--out", str(tmp_path / "o"), "--config", "configs/tiny.py", f"--config.data.source={tmp_path / 'nope'}")
  assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
  r = run("--out", str(tmp_path / "o"), "--config", "configs/tiny.py", "--config.clean.text_rules=gopher_quality,shiny")
  assert r.returncode == 2 and "shiny" in r.stderr and "Traceback" not in r.stderr
  r = run("--out", str(tmp_path / "o"))
  assert r.returncode != 0 and "--config is required" in r.stderr


def test_mixture_weights_set_the_share_of_each_source(small_tokenizer):
  texts = {"a": ["x" * 40 + "\n"] * 7, "b": ["y" * 40 + "\n"] * 50}  # b has 7x the pieces of a ...
  ds = pipeline.train_dataset(texts, small_tokenizer, seq_len=64, batch_size=4, seed=0, prefetch=0,
                              weights={"a": 3, "b": 1})  # ... but a is read 3x as often
  x_ids, y_ids = set(small_tokenizer.encode("x" * 40)), set(small_tokenizer.encode("y" * 40))
  it = iter(ds)
  counts = np.zeros(2)
  for _ in range(20):
    targets = next(it)["targets"].ravel()
    counts += [np.isin(targets, list(x_ids)).sum(), np.isin(targets, list(y_ids)).sum()]
  assert abs(counts[0] / counts.sum() - 0.75) < 0.05
  with pytest.raises(ValueError, match="'c'"):
    pipeline.train_dataset(texts, small_tokenizer, seq_len=64, batch_size=4, seed=0, weights={"a": 1, "c": 1})


def test_config_checks_sources_and_mixture():
  c = config_lib.base_config()
  c.data.source = "stdlib,synthetic"
  c.data.mixture = "docs:2,code:1,synthetic:0.5"
  config_lib.validate(c)
  c.data.mixture = "docs:-1"
  with pytest.raises(config_lib.ConfigError, match="data.mixture"):
    config_lib.validate(c)
  c.data.mixture, c.data.source = "", "stdlib,/no/such/dir"
  with pytest.raises(config_lib.ConfigError, match="/no/such/dir"):
    config_lib.validate(c)


def test_training_reads_prepared_shards_with_a_mixture(tmp_path):
  config = config_lib.base_config()
  config.data.source = "docs,synthetic"
  stats = prepare.run(config, str(tmp_path / "data"), workers=1, progress=False, log=lambda *_: None)
  assert stats["sources"]["synthetic"]["documents_out"] > 1000  # trusted: not put through the prose rules
  root = pathlib.Path(__file__).parent.parent
  cmd = [sys.executable, "-m", "llm_jax.train", f"--config={root / 'tests' / 'micro_config.py'}",
         f"--workdir={tmp_path / 'run'}", f"--config.data.source={tmp_path / 'data'}", "--config.train.steps=2",
         "--config.train.eval_every=2", "--config.data.mixture=docs:3,synthetic:1"]
  proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "data mixture: docs weight 3 (" in out and "synthetic weight 1 (" in out
  config.data.mixture = "docs:1,web:1"  # a label no document has: named before any training state is built
  with pytest.raises(config_lib.ConfigError, match="'web'.*labels of data.source"):
    train._training_texts(config, sources.load_documents(str(tmp_path / "data")))  # pylint: disable=protected-access


def test_resuming_with_another_mixture_is_refused(tmp_path):
  config = config_lib.base_config()
  saved = json.loads(config_lib.to_json(config))
  del saved["data"]["mixture"]  # a workdir from before data.mixture existed: it trained without one
  (tmp_path / "config.json").write_text(json.dumps(saved))
  train.check_resumable(str(tmp_path), config)
  config.data.mixture = "docs:1,code:1"
  with pytest.raises(config_lib.ConfigError, match="data.mixture"):
    train.check_resumable(str(tmp_path), config)
