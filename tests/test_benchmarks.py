"""Benchmarks from user JSONL files (llm_jax/eval/benchmarks.py): format detection, restricted-logit choice and
ending likelihoods against direct computations from the model's logits, the accuracy plumbing with oracle
runners that favour the right (or a wrong) answer, file:line errors, GSM8K answers, and the CLI on a workdir.

No training: a random micro model with the byte-level tokenizer (its workdir is written directly).
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import tokenizer as tokenizer_lib
from llm_jax.data import chat
from llm_jax.data.tasks.base import Example
from llm_jax.eval import benchmarks
from llm_jax.model import ModelConfig, Transformer
from llm_jax.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEN = 256

GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
         {"question": "A farm sells 1,000 eggs a day. How many in two days?", "answer": "2 * 1000 = 2000\n#### 2,000"}]
ARC = [{"id": "q1", "question": {"stem": "Which gas do plants take in?", "choices": [
            {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"},
            {"text": "helium", "label": "C"}, {"text": "neon", "label": "D"}]}, "answerKey": "B"},
       {"question": {"stem": "What melts ice?", "choices": [{"text": "heat", "label": "1"},
                                                             {"text": "cold", "label": "2"}]}, "answerKey": "1"}]
ARC_FLAT = [{"question": "2 + 2 = ?", "choices": ["3", "4", "5"], "answer": 1},
            {"question": "The sky is usually", "choices": ["green", "blue"], "answer": "B"}]
HELLASWAG = [{"ctx": "A man pours water into a glass. He", "endings": ["drinks it.", "eats the table.", "flies."],
              "label": "0"},
             {"ctx": "She ties her shoes and", "endings": ["melts.", "starts to run."], "label": 1}]


def _write(path, records, blank_lines=False):
  lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
  path.write_text("".join(line + ("\n\n" if blank_lines else "\n") for line in lines))  # [] -> an empty file
  return str(path)


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.CharTokenizer()  # bytes: " A" is two tokens, "A" one


@pytest.fixture(scope="module")
def model_and_params(tok):
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                    max_seq_len=MAX_LEN)
  model = Transformer(cfg)
  return model, nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.fixture(scope="module")
def runner(model_and_params, tok):
  return benchmarks.Runner(*model_and_params, tok, rows=2)  # 3 items: a full group and a filled-up one


def _logits(model_and_params, ids):
  model, params = model_and_params
  return np.asarray(model.apply({"params": params}, jnp.asarray([ids], jnp.int32))[0], np.float64)


def test_formats_are_detected_from_the_first_record(tmp_path):
  fmt, items = benchmarks.read(_write(tmp_path / "g.jsonl", GSM8K, blank_lines=True))
  assert fmt == "gsm8k" and [i.answer for i in items] == ["7", "2000"] and items[1].where.endswith("g.jsonl:3")
  fmt, items = benchmarks.read(_write(tmp_path / "arc.jsonl", ARC))
  assert fmt == "arc" and [(i.labels, i.answer) for i in items] == [(("A", "B", "C", "D"), 1), (("1", "2"), 0)]
  assert items[0].options[1] == "carbon dioxide" and items[0].prompt == "Which gas do plants take in?"
  fmt, items = benchmarks.read(_write(tmp_path / "flat.jsonl", ARC_FLAT))
  assert fmt == "arc" and [(i.labels, i.answer) for i in items] == [(("A", "B", "C"), 1), (("A", "B"), 1)]
  fmt, items = benchmarks.read(_write(tmp_path / "h.jsonl", HELLASWAG))
  assert fmt == "hellaswag" and [i.answer for i in items] == [0, 1] and items[1].options == ("melts.", "starts to run.")
  assert len(benchmarks.read(str(tmp_path / "h.jsonl"), limit=1)[1]) == 1
  # A named format reads every record as that format: a GSM8K file is no HellaSwag file.
  with pytest.raises(benchmarks.BenchmarkError, match=r'g\.jsonl:1: missing key "ctx"'):
    benchmarks.read(str(tmp_path / "g.jsonl"), "hellaswag")


def test_restricted_logits_pick_the_argmax_among_the_label_tokens(tmp_path, runner, model_and_params, tok):
  _, items = benchmarks.read(_write(tmp_path / "arc.jsonl", ARC + ARC_FLAT[:1]))
  chosen = benchmarks.choose(runner, items)
  unrestricted_is_a_label = []
  for item, choice in zip(items, chosen):
    ids, label_ids = benchmarks.arc_prompt(runner, item)
    assert tok.decode(ids).endswith("\nAnswer: ") and label_ids == [tok.encode(label)[0] for label in item.labels]
    last = _logits(model_and_params, ids)[-1]
    assert choice == int(np.argmax(last[label_ids]))
    unrestricted_is_a_label.append(int(np.argmax(last)) in label_ids)
  assert not all(unrestricted_is_a_label)  # the restriction mattered for some record


def test_ending_likelihood_is_the_sum_of_its_token_log_probs(tmp_path, runner, model_and_params, tok):
  _, items = benchmarks.read(_write(tmp_path / "h.jsonl", HELLASWAG))
  scores = benchmarks.ending_scores(runner, items)
  item = items[0]
  context = [tok.bos_id] + tok.encode(item.prompt)
  for (logprob, num_bytes), ending in zip(scores[0], item.options):
    ids = context + tok.encode(" " + ending)
    logp = np.asarray(jax.nn.log_softmax(_logits(model_and_params, ids)))
    direct = sum(logp[t - 1, ids[t]] for t in range(len(context), len(ids)))
    assert logprob == pytest.approx(direct, rel=1e-4) and num_bytes == len(ending) + 1
  assert scores[0][0][0] != pytest.approx(scores[0][1][0])


class OracleRunner:
  """A stand-in model that puts its mass on one option of every record: the gold one, or the one after it."""

  def __init__(self, tok, items, fmt, right: bool, max_len: int = 1000):
    self.tokenizer, self.start, self.max_len, self.chat_prompts = tok, [tok.bos_id], max_len, False
    self.favoured = {}
    for item in items:
      pick = item.answer if right or fmt == "gsm8k" else (item.answer + 1) % len(item.options)
      if fmt == "arc":
        ids, label_ids = benchmarks.arc_prompt(self, item)
        self.favoured[tuple(ids)] = label_ids[pick]
      elif fmt == "hellaswag":
        self.favoured[item.prompt] = item.options[pick]
      else:
        self.favoured[item.prompt] = f"so it is {item.answer if right else item.answer + '1'}."

  def next_logits(self, rows, bar=None):
    logits = np.zeros((len(rows), self.tokenizer.vocab_size), np.float32)
    logits[:, 0] = 100.0  # the best token overall is no label: the restriction must ignore it
    for i, row in enumerate(rows):
      logits[i, self.favoured[tuple(row)]] = 5.0
    return logits

  def logprobs(self, rows, starts, bar=None):
    # The favoured ending gets -2 in all, the others -3.
    out = []
    for row, start in zip(rows, starts):
      context, ending = self.tokenizer.decode(row[:start]), self.tokenizer.decode(row[start:])
      out.append(-2.0 if ending == " " + self.favoured[context] else -3.0)
    return np.asarray(out)

  def prompt(self, question):
    return self.start + self.tokenizer.encode(question)

  def generate(self, prompts, max_new_tokens, sampling=benchmarks.Sampling(), seed=0, bar=None):
    texts = [self.favoured[self.tokenizer.decode(p)] for p in prompts]
    if sampling.temperature > 0:  # every other sample is wrong
      texts = [t if i % 2 == 0 else "no idea, 0" for i, t in enumerate(texts)]
    return texts


@pytest.mark.parametrize("fmt, records", [("arc", ARC + ARC_FLAT), ("hellaswag", HELLASWAG), ("gsm8k", GSM8K)])
def test_oracle_runners_score_one_and_zero(tmp_path, tok, fmt, records):
  _, items = benchmarks.read(_write(tmp_path / f"{fmt}.jsonl", records))
  right = benchmarks.evaluate(OracleRunner(tok, items, fmt, True), fmt, items, path="f.jsonl")
  wrong = benchmarks.evaluate(OracleRunner(tok, items, fmt, False), fmt, items, path="f.jsonl")
  n = len(records)
  assert right["file"] == "f.jsonl" and right["format"] == fmt and "skipped" not in right
  assert (right["read"], right["scored"], right["correct"], right["accuracy"]) == (n, n, n, 1.0)
  assert (wrong["read"], wrong["scored"], wrong["correct"], wrong["accuracy"]) == (n, n, 0, 0.0)


def test_accuracy_norm_divides_by_the_endings_bytes(tmp_path, tok):
  """The oracle gives the gold ending -2 and the others -3 in all: the gold " a" (2 bytes) has the higher sum
  but, per byte, loses to the 11 bytes of " bbbbbbbbbb"; the gold " ccccccccc" wins either way."""
  records = [{"ctx": "x", "endings": ["a", "bbbbbbbbbb"], "label": 0},
             {"ctx": "y", "endings": ["d", "ccccccccc"], "label": "1"}]
  _, items = benchmarks.read(_write(tmp_path / "h.jsonl", records))
  result = benchmarks.evaluate(OracleRunner(tok, items, "hellaswag", True), "hellaswag", items)
  assert (result["accuracy"], result["correct_norm"], result["accuracy_norm"]) == (1.0, 1, 0.5)


def test_pass_at_k_and_skipped_records_are_counted(tmp_path, tok):
  _, items = benchmarks.read(_write(tmp_path / "g.jsonl", GSM8K))
  oracle = OracleRunner(tok, items, "gsm8k", True)
  result = benchmarks.evaluate(oracle, "gsm8k", items, samples=2, temperature=0.7)
  # Greedy is always right; of each question's 2 samples one is: pass@1 = 1/2, pass@2 = 1.
  assert (result["accuracy"], result["pass@1"], result["pass@2"], result["samples"]) == (1.0, 0.5, 1.0, 2)
  oracle.max_len = len(oracle.prompt(GSM8K[1]["question"])) + 256  # the first, longer question does not fit
  result = benchmarks.evaluate(oracle, "gsm8k", items)
  assert (result["read"], result["scored"], result["skipped"], result["accuracy"]) == (2, 1, {"too_long": 1}, 1.0)
  oracle.max_len = 10
  result = benchmarks.evaluate(oracle, "gsm8k", items)
  assert (result["scored"], result["accuracy"], result["skipped"]) == (0, None, {"too_long": 2})
  with pytest.raises(ValueError, match="temperature > 0"):
    benchmarks.evaluate(oracle, "gsm8k", items, samples=4, temperature=0.0)


ARC_BAD_KEY = ARC[:1] * 2 + [{**ARC[0], "answerKey": "E"}]


@pytest.mark.parametrize("name, lines, message", [
    ("arc.jsonl", ARC_BAD_KEY, "arc.jsonl:3: \"answerKey\" 'E' is not one of the choice labels A, B, C, D"),
    ("flat.jsonl", [{**ARC_FLAT[0], "answer": 3}], 'flat.jsonl:1: "answer" 3 is not an index of the 3 choices'),
    ("flat.jsonl", [{**ARC_FLAT[0], "choices": ["3", 4]}], 'flat.jsonl:1: "choices"[1] must be str, got int'),
    ("arc.jsonl", [ARC[0], {"question": {"stem": "x"}, "answerKey": "A"}],
     'arc.jsonl:2: missing key "question.choices"'),
    ("h.jsonl", [HELLASWAG[0], {"ctx": "x", "label": 0}], 'h.jsonl:2: missing key "endings"'),
    ("h.jsonl", [{**HELLASWAG[0], "label": "3"}], "h.jsonl:1: \"label\" '3' is not an index of the 3 endings"),
    ("h.jsonl", [{**HELLASWAG[0], "label": "zero"}], 'h.jsonl:1: "label" must be an index'),
    ("g.jsonl", [GSM8K[0], {"question": "q", "answer": "7"}], 'g.jsonl:2: "answer" must end with "#### <number>"'),
    ("g.jsonl", [{"question": "q", "answer": 7}], 'g.jsonl:1: "answer" must be str, got int'),
    ("x.jsonl", [GSM8K[0], "{not json"], "x.jsonl:2: not JSON"),
    ("x.jsonl", ["[1, 2]"], "x.jsonl:1: a record must be a JSON object, got list"),
    ("x.jsonl", [{"text": "hi"}], "x.jsonl:1: cannot tell the format from the keys ['text']"),
    ("empty.jsonl", [], "empty.jsonl: no records"),
    ("blank.jsonl", ["", "  "], "blank.jsonl: no records"),
])
def test_malformed_records_name_file_line_and_key(tmp_path, name, lines, message):
  with pytest.raises(benchmarks.BenchmarkError) as e:
    benchmarks.read(_write(tmp_path / name, lines))
  assert str(e.value).startswith(f"{tmp_path}/{message}")


def test_labels_must_be_single_tokens(tmp_path, runner, tok):
  record = {"question": {"stem": "?", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "BB"}]},
            "answerKey": "A"}
  _, items = benchmarks.read(_write(tmp_path / "arc.jsonl", [ARC[0], record]))
  with pytest.raises(benchmarks.BenchmarkError, match=r"arc\.jsonl:2: choice label 'BB' does not encode to a single"):
    benchmarks.choose(runner, items)

  class SpaceLabels:  # a tokenizer with " A" and " B" as single tokens (as BPE vocabularies have)
    def encode(self, text):
      return [{" A": 7, " B": 8}[text]] if text in (" A", " B") else [ord(c) for c in text]
  assert benchmarks.label_tokens(SpaceLabels(), ["A", "B"], "w") == ("Answer:", [7, 8])
  assert benchmarks.label_tokens(tok, ["A", "B"], "w") == ("Answer: ", tok.encode("A") + tok.encode("B"))


def test_gsm8k_gold_numbers_and_answer_text(model_and_params, tok, runner):
  assert benchmarks.gsm8k_gold("5 * 246.8 = 1234\n#### 1,234", "w") == "1234"
  assert benchmarks.gsm8k_gold("#### -12.5 ", "w") == "-12.5"
  with pytest.raises(benchmarks.BenchmarkError, match='w: "answer" must end with'):
    benchmarks.gsm8k_gold("#### twelve", "w")
  check = Example([], "1234").check
  assert check("It costs $1,234 in all.") and check("first 7, then 1234")
  assert not check("1234 then 12") and not check("12345") and not check("no number")
  # A base model's answer ends at its first blank line (where it goes on to make up the next question).
  generated = tok.encode("It is 12.\n\nQuestion: then 99") + [tok.eos_id]
  assert runner.answer_text(generated) == "It is 12." and Example([], "12").check(runner.answer_text(generated))
  assert runner.prompt("Why?") == [tok.bos_id] + tok.encode("Why?\nAnswer:")
  chatty = benchmarks.Runner(*model_and_params, tok, chat_prompts=True)
  m = chat.Markers.of(tok)
  assert chatty.prompt("Why?") == chat.render_for_completion([{"role": "user", "content": "Why?"}], tok)
  assert chatty.stop_ids == [m.assistant[1]]
  assert chatty.answer_text(tok.encode("So 12") + [m.assistant[1]] + tok.encode("99")) == "So 12"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, model_and_params, tok):
  """A pretraining workdir of the random micro model (config.json, tokenizer/, checkpoints/0) without training."""
  workdir = tmp_path_factory.mktemp("bench_workdir")
  config = config_lib.base_config()
  config.tokenizer.model_type, config.tokenizer.vocab_size, config.data.seq_len = "byte", tok.vocab_size, MAX_LEN
  model, params = model_and_params
  for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
    config.model[key] = getattr(model.cfg, key)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  tok.save(str(workdir / "tokenizer"))
  checkpoint.save_params(str(workdir), params)
  return workdir


def test_cli_prints_one_json_object_per_file(tmp_path, workdir, capsys):
  long_question = {"question": "How many? " * 30, "answer": "#### 3"}  # 300 tokens: more than the context
  files = [_write(tmp_path / "gsm8k.jsonl", GSM8K + [long_question]), _write(tmp_path / "arc.jsonl", ARC + ARC_FLAT),
           _write(tmp_path / "hellaswag.jsonl", HELLASWAG)]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "llm_jax.eval.benchmarks", "--workdir", str(workdir), *files,
                        "--max_new_tokens", "8", "--samples", "2", "--rows", "4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  results = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(r["file"], r["format"], r["read"]) for r in results] == [(files[0], "gsm8k", 3), (files[1], "arc", 4),
                                                                      (files[2], "hellaswag", 2)]
  gsm8k, arc, hellaswag = results
  assert (gsm8k["scored"], gsm8k["skipped"], gsm8k["prompt"]) == (2, {"too_long": 1}, "plain")
  assert {"pass@1", "pass@2"} <= set(gsm8k) and arc["scored"] == 4 and hellaswag["scored"] == 2
  for r in results:
    assert 0 <= r["accuracy"] <= 1 and r["correct"] == round(r["accuracy"] * r["scored"])
  assert 0 <= hellaswag["accuracy_norm"] <= 1 and "skipped" not in arc

  bad = _write(tmp_path / "bad.jsonl", ARC_BAD_KEY)
  with pytest.raises(SystemExit) as e:  # files are read before the model loads: no workdir needed to fail
    benchmarks.main(["--workdir", str(tmp_path / "nowhere"), files[0], bad])
  assert e.value.code == 2 and "bad.jsonl:3: \"answerKey\" 'E'" in capsys.readouterr().err
