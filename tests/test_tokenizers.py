"""Every tokenizer kind we train (BPE, unigram, byte, char): lossless round trips on arbitrary Unicode, special
tokens that text cannot produce, byte accounting, training edge cases, save/load, the CLI and a training run."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_jax import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNICODE_SAMPLE = "naïve café – 字符 🙂👍🏽 e\u0301 \u200d ß Ωμέγα привет ﷺ\t\x00\x1b[0m"


@pytest.fixture(scope="module")
def tokenizers(corpus, small_tokenizer):
  texts = [d["text"] for d in corpus[:120]] + [UNICODE_SAMPLE * 3]
  return {
      "bpe": small_tokenizer,
      "unigram": tokenizer_lib.train(texts, vocab_size=512, model_type="unigram", max_chars=300_000),
      "byte": tokenizer_lib.train(texts, model_type="byte"),
      "char": tokenizer_lib.train(texts, vocab_size=300, model_type="char", max_chars=10**8),
  }


KINDS = ("bpe", "unigram", "byte", "char")
# Arbitrary text (every code point but lone surrogates), plus the cases that break tokenizers most often.
TEXTS = st.one_of(
    st.text(),
    st.text(st.sampled_from("🙂👍🏽🇫🇷\u200d\ufe0f")),  # emoji, skin tones, flags, joiners
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)),  # CJK
    st.text(st.sampled_from("aeo\u0301\u0308\u0327\u20dd")),  # combining marks
    st.text(st.characters(max_codepoint=0x1F)),  # control characters
    st.builds(lambda c, n: c * n, st.sampled_from(["a", " ", "\n", "字", "🙂", "\t", "0"]),
              st.integers(1000, 20_000)),  # very long runs
)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_encode_decode_round_trips_any_unicode(tokenizers, kind, text):
  tok = tokenizers[kind]
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert set(ids).isdisjoint(tok.special.values())
  assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


@pytest.mark.parametrize("kind", KINDS)
def test_lone_surrogates_become_the_replacement_character(tokenizers, kind):
  tok = tokenizers[kind]
  bad = "ok \ud800 and \udfff!"  # e.g. from errors="surrogateescape"; no UTF-8 form
  assert tok.decode(tok.encode(bad)) == "ok \ufffd and \ufffd!"
  assert tok.encode_batch([bad, "x"]) == [tok.encode(bad), tok.encode("x")]


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_are_single_ids_that_text_never_produces(tokenizers, kind):
  tok = tokenizers[kind]
  names = (tokenizer_lib.UNK, tokenizer_lib.BOS, tokenizer_lib.EOS, tokenizer_lib.PAD) + tokenizer_lib.CONTROL_TOKENS
  assert [tok.special[n] for n in names] == list(range(len(names)))  # the documented order, same for all kinds
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
  typed = "".join(names) + " <|assistant_start|>hi<|tool_call_end|>"
  ids = tok.encode(typed)
  assert set(ids).isdisjoint(tok.special.values()) and tok.decode(ids) == typed
  assert all(tok.token_bytes()[i] == 0 for i in tok.special.values())
  assert tok.decode([tok.bos_id, *tok.encode("a"), tok.special["<|user_end|>"]]) == "a"


def test_baselines_cost_what_they_claim(tokenizers):
  byte, char = tokenizers["byte"], tokenizers["char"]
  assert byte.vocab_size == 276 and char.vocab_size == 300  # the corpus has more than 24 non-ASCII characters
  text = "strawberry 字符"
  assert len(byte.encode(text)) == len(text.encode("utf-8"))
  assert byte.decode([*byte.encode("ab"), 300, 4000]) == "ab"  # a padded model's extra ids read as nothing
  assert len(char.encode(text)) == len(text)  # the sample's CJK characters made it into the vocabulary
  assert len(char.encode("鬱")) == 3  # an unseen character falls back to its bytes
  assert len(tokenizers["bpe"].encode("strawberry")) < len("strawberry")


def test_long_lines_are_cut_for_sentencepiece_not_skipped():
  line = "zqxjv" * 40_000  # one 200,000-character line: SentencePiece skips sentences over 65,536 bytes
  pieces = list(tokenizer_lib._sentences([line], max_chars=10**9))  # pylint: disable=protected-access
  assert "".join(pieces) == line + "\n" and max(len(p.encode("utf-8")) for p in pieces) <= 1 << 16
  tok = tokenizer_lib.train([line, "plain words here\n" * 50], vocab_size=300, max_chars=10**9)
  assert len(tok.encode("zqxjv" * 4)) <= 4  # it learned merges from the long line


def test_training_reads_an_iterator_only_as_far_as_it_needs():
  pulled = []

  def documents():
    for i in range(10**9):
      pulled.append(i)
      yield f"document {i} with some words\n"

  tok = tokenizer_lib.train(documents(), vocab_size=320, max_chars=20_000)
  assert tok.decode(tok.encode("document 7")) == "document 7"
  assert len(pulled) < 1000  # ~30 characters each: it stopped at max_chars


@pytest.mark.parametrize("kind", ["byte", "char"])
def test_baselines_save_and_load(tokenizers, kind, tmp_path):
  tok = tokenizers[kind]
  tok.save(str(tmp_path))
  loaded = tokenizer_lib.load(str(tmp_path))
  assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
  assert loaded.encode(UNICODE_SAMPLE) == tok.encode(UNICODE_SAMPLE)
  (tmp_path / tokenizer_lib.BASELINE_FILE).write_text(json.dumps({"kind": "char", "chars": "aa"}))
  with pytest.raises(ValueError, match="baseline.json"):
    tokenizer_lib.load(str(tmp_path))


def test_bad_model_type_or_size_is_refused():
  with pytest.raises(ValueError, match="model_type='wordpiece'"):
    tokenizer_lib.train(["text"], model_type="wordpiece")
  with pytest.raises(ValueError, match="could not train a 280-token bpe tokenizer"):
    tokenizer_lib.train(["some text"], vocab_size=280)


def test_cli_trains_and_shows_pieces(corpus, tmp_path):
  docs = tmp_path / "docs.jsonl"
  docs.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus[:300]))
  run = lambda *args: subprocess.run([sys.executable, "-m", "llm_jax.tokenizer", *args], cwd=ROOT, text=True,
                                     capture_output=True, timeout=300, check=False)
  out = run("train", "--source", str(docs), "--out", str(tmp_path / "tok"), "--model-type", "unigram",
            "--vocab-size", "512")
  assert out.returncode == 0, out.stderr
  assert "trained a 512-token unigram tokenizer on 300 documents" in out.stdout
  too_big = run("train", "--source", str(docs), "--out", str(tmp_path / "big"), "--vocab-size", "900000")
  assert too_big.returncode == 2 and "900000-token bpe" in too_big.stderr and "Traceback" not in too_big.stderr
  shown = run("encode", str(tmp_path / "tok"), "strawberry")
  assert shown.returncode == 0 and "bytes" in shown.stdout
  pieces = [eval(line.split(None, 1)[1]) for line in shown.stdout.splitlines()[1:]]  # pylint: disable=eval-used
  assert "".join(pieces) == "strawberry"
  missing = run("encode", str(tmp_path / "nowhere"), "x")
  assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_pretraining_runs_with_the_byte_tokenizer(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "llm_jax.train", f"--config={os.path.join(ROOT, 'tests', 'micro_config.py')}",
         f"--workdir={workdir}", "--config.tokenizer.model_type=byte", "--config.train.steps=4",
         "--config.train.eval_every=4", "--config.sample.max_new_tokens=4"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  assert isinstance(tokenizer_lib.load(str(workdir / "tokenizer")), tokenizer_lib.CharTokenizer)
  evals = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8") if "eval/bpb" in line]
  assert evals and all(0 < e["eval/bpb"] < 12 for e in evals)


def test_config_accepts_the_baselines_and_names_bad_values():
  from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  c.tokenizer.model_type, c.tokenizer.vocab_size = "byte", 276
  config_lib.validate(c)
  c.tokenizer.model_type = "bpe"
  with pytest.raises(config_lib.ConfigError, match="tokenizer.vocab_size"):
    config_lib.validate(c)
  c.tokenizer.model_type = "wordpiece"
  with pytest.raises(config_lib.ConfigError, match="tokenizer.model_type"):
    config_lib.validate(c)
