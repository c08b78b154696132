"""Loading foreign tokenizers: a Llama-3-style tiktoken BPE file and a Hugging Face tokenizer.json.

Both are built here from a few lines of text (no downloads) and loaded through `tokenizer.load`, which must
detect the format and give the same interface as our SentencePiece tokenizer.
"""

import base64
import collections
import json
import re

import pytest

from llm_jax import tokenizer as tokenizer_lib

TRAIN_TEXT = (
    "def tokenize(text):\n    return [t for t in text.split() if t]\n\n"
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
    "for i in range(10):\n    print(i, i * i)  # squares\n"
    "Héllo wörld, ünïcødé text → 字 and more text about the fox and the dog.\n"
) * 4
SAMPLES = (
    "The quick brown fox, again: 12345 + 678 = 13023.\n",
    "ünïcødé → 字 🙂 ß Ωmega\tтекст\n",
    "class A:\n    def f(self, x):\n\t\treturn {'k': x ** 2}  # comment\n\n",
    "  leading spaces and trailing   \n\n\n",
)


def _learn_bpe_ranks(text: str, num_merges: int) -> dict[bytes, int]:
  """The 256 single bytes, then merges in the order BPE learns them, so every merge's parts rank lower."""
  ranks = {bytes([b]): b for b in range(256)}
  words = [[bytes([b]) for b in w.encode("utf-8")] for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text)]
  for _ in range(num_merges):
    pairs = collections.Counter(p for w in words for p in zip(w, w[1:]))
    if not pairs:
      break
    (a, b), _ = pairs.most_common(1)[0]
    ranks.setdefault(a + b, len(ranks))
    merged_words = []
    for w in words:
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
          out.append(a + b)
          i += 2
        else:
          out.append(w[i])
          i += 1
      merged_words.append(out)
    words = merged_words
  return ranks


def _check_round_trip_and_bytes(tok):
  for text in SAMPLES:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert set(ids).isdisjoint(tok.special.values())
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
  assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
  assert all(tok.token_bytes()[i] == 0 for i in tok.special.values())
  assert tok.token_bytes().shape == (tok.vocab_size,)
  assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"  # a lone surrogate reads as U+FFFD, as documented


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory):
  pytest.importorskip("tiktoken")
  ranks = _learn_bpe_ranks(TRAIN_TEXT, 60)
  assert len(ranks) > 256 + 40  # a few dozen real merges
  path = tmp_path_factory.mktemp("llama3") / "tokenizer.model"
  path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda x: x[1])))
  return path, len(ranks)


def test_llama3_special_tokens_match_meta_layout():
  specials = tokenizer_lib.LLAMA3_SPECIAL_TOKENS
  assert len(specials) == len(set(specials)) == 256
  assert specials[4] == "<|finetune_right_pad_id|>" and specials[5] == "<|reserved_special_token_2|>"
  assert specials[9] == "<|eot_id|>" and specials[11] == "<|reserved_special_token_3|>"
  assert specials[-1] == "<|reserved_special_token_247|>"


def test_tiktoken_bpe_file(tiktoken_file, tmp_path):
  path, num_ranks = tiktoken_file
  tok = tokenizer_lib.load(str(path))  # the file itself
  assert isinstance(tok, tokenizer_lib.TiktokenTokenizer)
  assert tok.vocab_size == num_ranks + 256 and len(tok.special) == 256
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (num_ranks, num_ranks + 1, num_ranks + 4)
  assert tok.special["<|eot_id|>"] == num_ranks + 9
  _check_round_trip_and_bytes(tok)
  assert len(tok.encode("the fox and the dog")) < len("the fox and the dog")  # merges are used
  # Special-token text typed by a user stays text.
  ids = tok.encode("<|begin_of_text|>hi<|eot_id|>")
  assert tok.bos_id not in ids and tok.decode(ids) == "<|begin_of_text|>hi<|eot_id|>"
  assert tok.decode([tok.bos_id] + tok.encode("hi") + [tok.eos_id]) == "hi"
  # Runs longer than tiktoken's regex can take are cut, not crashed on.
  long = "x" * 60_000 + " " * 60_000 + "y"
  assert tok.decode(tok.encode(long)) == long
  # save() writes the original file back; a directory load finds it.
  saved = tok.save(str(tmp_path))
  assert open(saved, "rb").read() == path.read_bytes()
  again = tokenizer_lib.load(str(tmp_path))
  assert isinstance(again, tokenizer_lib.TiktokenTokenizer)
  assert again.encode(SAMPLES[2]) == tok.encode(SAMPLES[2]) and again.special == tok.special


def _train_hf_byte_level_bpe():
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TRAIN_TEXT], trainer)
  tok.add_tokens(["<think>"])  # an added token that is text, not special
  return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  tok = _train_hf_byte_level_bpe()
  tok.enable_truncation(8)  # saved in the file; the loader must switch it off
  directory = tmp_path_factory.mktemp("hf")
  tok.save(str(directory / "tokenizer.json"))
  config = {"bos_token": "<|bos|>", "eos_token": {"content": "<|eos|>", "special": True}, "pad_token": "<|pad|>"}
  (directory / "tokenizer_config.json").write_text(json.dumps(config))
  return directory


def test_hf_tokenizer_json(hf_dir, tmp_path):
  tok = tokenizer_lib.load(str(hf_dir))
  assert isinstance(tok, tokenizer_lib.HFTokenizer)
  assert tok.special == {"<|bos|>": 0, "<|eos|>": 1, "<|pad|>": 2}
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
  _check_round_trip_and_bytes(tok)
  assert len(tok.encode(TRAIN_TEXT)) > 8  # truncation from the file is off
  ids = tok.encode("<|bos|>x<think>")
  assert tok.bos_id not in ids and tok.decode(ids) == "<|bos|>x<think>"
  think = tok.tok.token_to_id("<think>")
  assert think in ids and tok.token_bytes()[think] == len("<think>")
  assert tok.decode([tok.bos_id] + tok.encode("hi") + [tok.eos_id]) == "hi"
  # save() writes both files; loading them back gives the same tokenizer.
  tok.save(str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
  again = tokenizer_lib.load(str(tmp_path / "tokenizer.json"))  # the file path works too
  assert again.encode(SAMPLES[1]) == tok.encode(SAMPLES[1])
  assert (again.bos_id, again.eos_id, again.pad_id, again.special) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.special)


def test_hf_without_config_has_no_bos_eos_pad(tmp_path):
  _train_hf_byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
  tok = tokenizer_lib.load(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, None, None)
  assert tok.special["<|eos|>"] == 1


def test_byte_level_alphabet_matches_hf():
  tokenizers = pytest.importorskip("tokenizers")
  assert set(tokenizer_lib._BYTE_OF_CHAR) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  text = "é 字\n\t~ÿ"
  pieces = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
  assert b"".join(bytes(tokenizer_lib._BYTE_OF_CHAR[c] for c in p) for p, _ in pieces) == text.encode("utf-8")


def test_unrecognised_paths_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(repr(str(tmp_path)))):
    tokenizer_lib.load(str(tmp_path))  # a directory with no tokenizer files
  bad = tmp_path / "vocab.model"
  bad.write_text("this is not a tokenizer\n")
  with pytest.raises(ValueError, match=re.escape(repr(str(bad)))):
    tokenizer_lib.load(str(bad))
  bad.write_bytes(b"")
  with pytest.raises(ValueError, match="empty"):
    tokenizer_lib.load(str(bad))
