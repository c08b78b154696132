"""Standard benchmarks from JSONL files you supply (GSM8K, ARC, HellaSwag in their official layouts), on a workdir.

    python -m llm_jax.eval.benchmarks --workdir runs/sft_tiny gsm8k_test.jsonl ARC-Easy-Test.jsonl hellaswag_val.jsonl
        [--format auto|gsm8k|arc|hellaswag] [--limit 200] [--samples 8 --temperature 1.0] [--max_new_tokens 256]

    runner = benchmarks.Runner.from_workdir("runs/sft_tiny")
    fmt, items = benchmarks.read("gsm8k_test.jsonl")
    benchmarks.evaluate(runner, fmt, items)   # {"file", "format", "read", "scored", "correct", "accuracy", ...}

Nothing is downloaded: the files are the user's. The format is told from the first record's keys (or named by
--format); every record is then read as that format.

  gsm8k      {"question": str, "answer": "... #### 1,234"}. Generative: the model answers through the KV-cache
             engine, greedily; the answer is right when its last number equals the number after "####", commas
             stripped (data/tasks/base.Example.check). A chat workdir (stage sft, dpo, ppo or grpo) gets the
             question as a user turn (data/chat.py) and answers in its assistant turn, with tools off; a base
             model gets "<question>\\nAnswer:" and its continuation up to its first blank line. With --samples
             K > 1, K answers per question at --temperature also give pass@k (rl/rollout.pass_at_k) for
             k = 1, 2, 4, ... <= K.
  arc        {"question": {"stem": str, "choices": [{"text": str, "label": "A"}, ...]}, "answerKey": "A"}, or
             flat {"question": str, "choices": [str, ...], "answer": index or label} (labels A, B, C, ...).
             Multiple choice by restricted logits: "Question: <stem>\\nA. <text>\\n...\\nAnswer:" and the label
             whose token has the highest logit at the next position, among the labels' tokens only. A label's
             token is that of " A" when every label's " <label>" is one token, else that of "A" after a prompt
             ending in "Answer: "; a label that is one token neither way is an error.
  hellaswag  {"ctx": str, "endings": [str, ...], "label": int or digit string}. Multiple choice by likelihood:
             the sum of the log-probabilities of the tokens of " <ending>" after the context; "accuracy" picks
             the highest sum and "accuracy_norm" the highest sum per UTF-8 byte of the ending (lm-eval-harness's
             acc and acc_norm). The context is used as given (no lm-eval-style cleanup of "[title]" etc).

Every prompt starts with the tokenizer's BOS, as training documents do; multiple-choice prompts are plain text
for every workdir. A malformed record is an error naming file:line and the key; an empty file is an error;
blank lines are skipped. A record that does not fit the model's context (for gsm8k: its prompt plus
max_new_tokens; for hellaswag: the context with its longest ending) is skipped and counted under
"skipped": {"too_long": n}, never truncated; "accuracy" is over the scored records (null when none were).

The forward passes run a few rows at a time (`Runner.rows`), sorted by length and right-padded to a multiple
of 32 tokens, so each jitted function compiles once per length bucket; generation goes through the Engine,
which buckets the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax.data import chat, pipeline
from llm_jax.data.tasks.base import Example
from llm_jax.inference.engine import Engine, Sampling
from llm_jax.rl.rollout import pass_at_k

FORMATS = ("gsm8k", "arc", "hellaswag")
CHAT_STAGES = ("sft", "dpo", "ppo", "grpo")  # stages whose model answers in chat turns
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class BenchmarkError(ValueError):
  """A benchmark file or record is malformed; the message names file:line and the key."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One record, normalized: `where` is "file:line"."""
  where: str
  prompt: str  # the question (gsm8k, arc) or the context (hellaswag)
  answer: str | int  # the gold number as text (gsm8k) or the index of the right option (arc, hellaswag)
  options: tuple[str, ...] = ()  # the choices' texts (arc) or the endings (hellaswag)
  labels: tuple[str, ...] = ()  # the choices' labels (arc)


# --- reading ------------------------------------------------------------------------------------------------

def _get(record: dict, key: str, kind: type | tuple, where: str, name: str | None = None):
  name = name or key
  if key not in record:
    raise BenchmarkError(f'{where}: missing key "{name}"')
  value = record[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise BenchmarkError(f'{where}: "{name}" must be {wanted}, got {type(value).__name__} {value!r:.60}')
  return value


def gsm8k_gold(answer: str, where: str) -> str:
  """The number after the last "####" of a GSM8K answer, commas stripped ("#### 1,234" -> "1234")."""
  tail = answer.rpartition("####")[2].strip().replace(",", "") if "####" in answer else None
  if tail is None or not _NUMBER.fullmatch(tail):
    raise BenchmarkError(f'{where}: "answer" must end with "#### <number>" (the GSM8K layout), got '
                         f'{answer[-40:]!r}')
  return tail


def _gsm8k(record: dict, where: str) -> Item:
  question = _get(record, "question", str, where)
  return Item(where, question, gsm8k_gold(_get(record, "answer", str, where), where))


def _options(values: list, name: str, where: str) -> tuple[str, ...]:
  if len(values) < 2:
    raise BenchmarkError(f'{where}: "{name}" needs at least 2 options, got {len(values)}')
  for i, v in enumerate(values):
    if not isinstance(v, str):
      raise BenchmarkError(f'{where}: "{name}"[{i}] must be str, got {type(v).__name__} {v!r:.60}')
  return tuple(values)


def _arc(record: dict, where: str) -> Item:
  question = _get(record, "question", (str, dict), where)
  if isinstance(question, dict):  # the official layout
    stem = _get(question, "stem", str, where, "question.stem")
    choices = _get(question, "choices", list, where, "question.choices")
    for i, c in enumerate(choices):
      if not isinstance(c, dict):
        raise BenchmarkError(f'{where}: "question.choices"[{i}] must be an object with "text" and "label"')
    texts = _options([_get(c, "text", str, where, f"question.choices[{i}].text") for i, c in enumerate(choices)],
                     "question.choices", where)
    labels = tuple(_get(c, "label", str, where, f"question.choices[{i}].label") for i, c in enumerate(choices))
    key, gold = "answerKey", _get(record, "answerKey", str, where)
  else:  # flat: {"question": str, "choices": [str, ...], "answer": index or label}
    stem, texts = question, _options(_get(record, "choices", list, where), "choices", where)
    if len(texts) > 26:
      raise BenchmarkError(f'{where}: "choices" has {len(texts)} options; labels run A to Z')
    labels = tuple(chr(ord("A") + i) for i in range(len(texts)))
    key, gold = "answer", _get(record, "answer", (int, str), where)
    if isinstance(gold, int):
      if not 0 <= gold < len(texts):
        raise BenchmarkError(f'{where}: "answer" {gold} is not an index of the {len(texts)} choices')
      gold = labels[gold]
  if len(set(labels)) != len(labels) or not all(labels):
    raise BenchmarkError(f'{where}: the choice labels {", ".join(labels)} are not distinct non-empty strings')
  if gold not in labels:
    raise BenchmarkError(f'{where}: "{key}" {gold!r} is not one of the choice labels {", ".join(labels)}')
  return Item(where, stem, labels.index(gold), texts, labels)


def _hellaswag(record: dict, where: str) -> Item:
  ctx = _get(record, "ctx", str, where)
  endings = _options(_get(record, "endings", list, where), "endings", where)
  label = _get(record, "label", (int, str), where)
  if isinstance(label, str) and not label.strip().isdigit():
    raise BenchmarkError(f'{where}: "label" must be an index (int or digit string), got {label!r}')
  if not 0 <= int(label) < len(endings):
    raise BenchmarkError(f'{where}: "label" {label!r} is not an index of the {len(endings)} endings')
  return Item(where, ctx, int(label), endings)


_PARSERS = {"gsm8k": _gsm8k, "arc": _arc, "hellaswag": _hellaswag}


def detect(record: dict, where: str) -> str:
  """The format of a record from its keys."""
  if "ctx" in record and "endings" in record:
    return "hellaswag"
  if "answerKey" in record or "choices" in record or isinstance(record.get("question"), dict):
    return "arc"
  if "question" in record and "answer" in record:
    return "gsm8k"
  raise BenchmarkError(f"{where}: cannot tell the format from the keys {sorted(record)}: expected gsm8k "
                       '("question", "answer"), arc ("question", "choices" or "answerKey") or hellaswag ("ctx", '
                       '"endings", "label"); name it with --format')


def read(path: str, fmt: str = "auto", limit: int | None = None) -> tuple[str, list[Item]]:
  """(format, the first `limit` records as Items) of a JSONL file; BenchmarkError names file:line and key."""
  if fmt != "auto" and fmt not in FORMATS:
    raise BenchmarkError(f"format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if limit is not None and len(items) >= limit:
        break
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise BenchmarkError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise BenchmarkError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
      if fmt == "auto":
        fmt = detect(record, where)
      items.append(_PARSERS[fmt](record, where))
  if not items:
    raise BenchmarkError(f"{path}: no records (the file is empty or blank)")
  return fmt, items


# --- the model ------------------------------------------------------------------------------------------------

def next_token_logits(model, params, tokens_BT, lengths_B):
  """[B, V] float32: the logits after each row's last real token (rows right-padded)."""
  logits_BTV = model.apply({"params": params}, tokens_BT)
  return jnp.take_along_axis(logits_BTV, (lengths_B - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def continuation_logprobs(model, params, tokens_BT, starts_B, lengths_B):
  """[B]: sum over t in [starts, lengths) of log p(tokens[t] | tokens[:t]) (rows right-padded)."""
  logits_BTV = model.apply({"params": params}, tokens_BT)[:, :-1].astype(jnp.float32)
  # target logit - logsumexp: no second [B, T, V] array (a full log_softmax) next to the logits
  target_logp_BT = (jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
                    - jax.nn.logsumexp(logits_BTV, axis=-1))
  t_T = jnp.arange(1, tokens_BT.shape[1])
  scored_BT = (t_T[None] >= starts_B[:, None]) & (t_T[None] < lengths_B[:, None])
  return jnp.sum(jnp.where(scored_BT, target_logp_BT, 0.0), axis=1)


class Runner:
  """The model behind the benchmarks: batched scoring passes and generation (tests substitute their own)."""

  def __init__(self, model, params, tokenizer, *, chat_prompts: bool = False, rows: int = 8,
               length_multiple: int = 32):
    self.engine = Engine(model, params)
    self.tokenizer, self.chat_prompts, self.rows, self.length_multiple = tokenizer, chat_prompts, rows, length_multiple
    self.max_len = model.cfg.max_seq_len
    self.start = pipeline.start_ids(tokenizer)
    self.markers = chat.Markers.of(tokenizer) if chat_prompts else None
    if chat_prompts:
      self.stop_ids = [self.markers.assistant[1]]
    else:
      self.stop_ids = [tokenizer.eos_id] if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 else []
    # The engine's plain layer stack and per-layer parameters serve the scoring passes too (one copy of the weights).
    self._next_logits = jax.jit(functools.partial(next_token_logits, self.engine.model))
    self._continuation = jax.jit(functools.partial(continuation_logprobs, self.engine.model))

  @classmethod
  def from_workdir(cls, workdir: str, prompt: str = "auto", **kwargs) -> "Runner":
    """A workdir's model (llm_jax.load); prompt "auto" renders gsm8k questions as chat turns for CHAT_STAGES."""
    import llm_jax  # pylint: disable=import-outside-toplevel (the package's loader, at call time)
    from llm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    from llm_jax.model import Transformer  # pylint: disable=import-outside-toplevel

    config, params, tok = llm_jax.load(workdir)
    chat_prompts = config.stage in CHAT_STAGES if prompt == "auto" else prompt == "chat"
    return cls(Transformer(config_lib.model_config(config)), params, tok, chat_prompts=chat_prompts, **kwargs)

  def _groups(self, rows: Sequence[Sequence[int]]):
    """(indices, tokens [rows, T] right-padded, lengths) of up to self.rows rows of similar length; T is a
    multiple of length_multiple (at most max_len) and short groups are filled with copies: one shape per bucket."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for at in range(0, len(order), self.rows):
      group = order[at:at + self.rows]
      lengths = np.array([len(rows[i]) for i in group] + [len(rows[group[0]])] * (self.rows - len(group)), np.int32)
      width = min(-(-int(lengths.max()) // self.length_multiple) * self.length_multiple, self.max_len)
      tokens = np.zeros((self.rows, width), np.int32)
      for r, i in enumerate(group + [group[0]] * (self.rows - len(group))):
        tokens[r, :len(rows[i])] = rows[i]
      yield group, tokens, lengths

  def next_logits(self, rows: Sequence[Sequence[int]], bar=None) -> np.ndarray:
    """[len(rows), V]: the next-token logits after each row (each at most max_len tokens)."""
    out = np.zeros((len(rows), self.engine.model.cfg.vocab_size), np.float32)
    for group, tokens, lengths in self._groups(rows):
      out[group] = np.asarray(self._next_logits(self.engine.params, tokens, lengths))[:len(group)]
      if bar is not None:
        bar.update(len(group))
    return out

  def logprobs(self, rows: Sequence[Sequence[int]], starts: Sequence[int], bar=None) -> np.ndarray:
    """[len(rows)]: the log-probability of rows[i][starts[i]:] given rows[i][:starts[i]] (starts >= 1)."""
    out = np.zeros(len(rows), np.float64)
    for group, tokens, lengths in self._groups(rows):
      starts_B = np.array([starts[i] for i in group] + [1] * (self.rows - len(group)), np.int32)
      out[group] = np.asarray(self._continuation(self.engine.params, tokens, starts_B, lengths))[:len(group)]
      if bar is not None:
        bar.update(len(group))
    return out

  def prompt(self, question: str) -> list[int]:
    """A gsm8k question's prompt: a user turn for chat models, "<question>\\nAnswer:" for base models."""
    if self.chat_prompts:
      return chat.render_for_completion([{"role": "user", "content": question}], self.tokenizer, self.markers)
    return self.start + self.tokenizer.encode(question + "\nAnswer:")

  def answer_text(self, tokens: Sequence[int]) -> str:
    """The answer in generated tokens: the assistant's final text, or a base model's text to its first blank line."""
    if self.chat_prompts:
      return chat.final_text(chat.parse_assistant(tokens, self.tokenizer, self.markers))
    return self.tokenizer.decode([t for t in tokens if t not in self.stop_ids]).split("\n\n")[0]

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
               seed: int = 0, bar=None) -> list[str]:
    """The answer text of each prompt (prompt + max_new_tokens must fit max_len)."""
    out = [""] * len(prompts)
    for n, (group, _, _) in enumerate(self._groups(prompts)):
      batch = [prompts[i] for i in group]
      batch += batch[:1] * (self.rows - len(batch))  # always self.rows rows: one compiled shape per bucket
      tokens = self.engine.generate(batch, max_new_tokens, sampling, self.stop_ids, seed=seed + n)
      for i, row in zip(group, tokens):
        out[i] = self.answer_text(row)
      if bar is not None:
        bar.update(len(group))
    return out


# --- scoring ------------------------------------------------------------------------------------------------

def label_tokens(tokenizer, labels: Sequence[str], where: str) -> tuple[str, list[int]]:
  """(what the prompt ends with, one token id per label): " A" after "Answer:" when every label has such a
  single token, else "A" after "Answer: "; BenchmarkError when a label is one token neither way."""
  for space, ending in ((" ", "Answer:"), ("", "Answer: ")):
    ids = [tokenizer.encode(space + label) for label in labels]
    if all(len(i) == 1 for i in ids):
      return ending, [i[0] for i in ids]
  label = next(label for label in labels if len(tokenizer.encode(label)) != 1)
  raise BenchmarkError(f"{where}: choice label {label!r} does not encode to a single token (' {label}' -> "
                       f"{tokenizer.encode(' ' + label)}, '{label}' -> {tokenizer.encode(label)}); restricted-logit "
                       "scoring compares one token per label")


def arc_prompt(runner, item: Item) -> tuple[list[int], list[int]]:
  """(prompt ids, the label tokens) of an arc item."""
  ending, ids = label_tokens(runner.tokenizer, item.labels, item.where)
  text = f"Question: {item.prompt}\n" + "".join(f"{l}. {t}\n" for l, t in zip(item.labels, item.options)) + ending
  return runner.start + runner.tokenizer.encode(text), ids


def choose(runner, items: Sequence[Item], bar=None) -> list[int | None]:
  """Per arc item, the index of the label whose token has the highest next-token logit among the labels'
  tokens (None: the prompt does not fit the model's context)."""
  prompts = [arc_prompt(runner, item) for item in items]
  fit = [i for i, (ids, _) in enumerate(prompts) if len(ids) <= runner.max_len]
  logits = runner.next_logits([prompts[i][0] for i in fit], bar)
  out: list[int | None] = [None] * len(items)
  for row, i in enumerate(fit):
    out[i] = int(np.argmax(logits[row, prompts[i][1]]))
  return out


def ending_scores(runner, items: Sequence[Item], bar=None) -> list[list[tuple[float, int]] | None]:
  """Per hellaswag item, (log-probability, UTF-8 bytes) of " <ending>" after the context, for each ending
  (None: the context with an ending does not fit the model's context)."""
  rows, starts, first = [], [], {}  # first: item index -> its first row
  for i, item in enumerate(items):
    context = runner.start + runner.tokenizer.encode(item.prompt)
    endings = [runner.tokenizer.encode(" " + e) for e in item.options]
    if len(context) + max(map(len, endings)) > runner.max_len:
      continue
    first[i] = len(rows)
    rows += [context + e for e in endings]
    starts += [len(context)] * len(endings)
  logprobs = runner.logprobs(rows, starts, bar)
  out: list[list[tuple[float, int]] | None] = [None] * len(items)
  for i, at in first.items():
    out[i] = [(float(lp), len((" " + e).encode("utf-8"))) for lp, e in zip(logprobs[at:], items[i].options)]
  return out


def evaluate(runner, fmt: str, items: Sequence[Item], *, path: str = "", samples: int = 1,
             temperature: float = 1.0, max_new_tokens: int = 256, seed: int = 0, progress: bool = False) -> dict:
  """{"file", "format", "read", "scored", "correct", "accuracy", ["skipped": {reason: count}], ...} of a file's
  items (module docstring); gsm8k adds "prompt", "max_new_tokens" and, with samples > 1, "pass@k";
  hellaswag adds "correct_norm" and "accuracy_norm"."""
  if samples < 1:
    raise ValueError(f"samples must be at least 1, got {samples}")
  if samples > 1 and temperature <= 0:
    raise ValueError(f"pass@k from {samples} samples needs a temperature > 0, got {temperature}")
  extra = {}
  rows_per_item = {"gsm8k": 1 + (samples if samples > 1 else 0), "arc": 1}
  total = sum(rows_per_item.get(fmt, len(item.options)) for item in items)
  with tqdm(total=total, desc=f"{fmt} {path}", unit="row", disable=not progress, file=sys.stderr) as bar:
    if fmt == "gsm8k":
      prompts = [runner.prompt(item.prompt) for item in items]
      fit = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens <= runner.max_len]
      checks = [Example([], items[i].answer, "gsm8k").check for i in fit]
      answers = runner.generate([prompts[i] for i in fit], max_new_tokens, Sampling(), seed, bar)
      solved = [check(text) for check, text in zip(checks, answers)]
      extra.update(prompt="chat" if runner.chat_prompts else "plain", max_new_tokens=max_new_tokens)
      if samples > 1 and fit:
        sampled = runner.generate([prompts[i] for i in fit for _ in range(samples)], max_new_tokens,
                                  Sampling(temperature), seed + 1, bar)
        right = [sum(check(text) for text in sampled[j * samples:(j + 1) * samples]) for j, check in enumerate(checks)]
        extra.update(samples=samples, temperature=temperature)
        k = 1
        while k <= samples:
          extra[f"pass@{k}"] = float(np.mean([pass_at_k(samples, c, k) for c in right]))
          k *= 2
    elif fmt == "arc":
      chosen = choose(runner, items, bar)
      solved = [c == item.answer for c, item in zip(chosen, items) if c is not None]
    elif fmt == "hellaswag":
      scores = ending_scores(runner, items, bar)
      scored = [(s, item.answer) for s, item in zip(scores, items) if s is not None]
      solved = [int(np.argmax([lp for lp, _ in s])) == gold for s, gold in scored]
      solved_norm = [int(np.argmax([lp / n for lp, n in s])) == gold for s, gold in scored]
      extra.update(correct_norm=sum(solved_norm), accuracy_norm=sum(solved_norm) / len(scored) if scored else None)
    else:
      raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
  result = {"file": path, "format": fmt, "read": len(items), "scored": len(solved), "correct": sum(solved),
            "accuracy": sum(solved) / len(solved) if solved else None, **extra}
  if len(solved) < len(items):
    result["skipped"] = {"too_long": len(items) - len(solved)}
  return result


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description="Accuracy of a workdir's model on GSM8K / ARC / HellaSwag JSONL files "
                                   "(one JSON object per file on stdout).")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("files", nargs="+", metavar="FILE.jsonl")
  parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help="default: from each file's keys")
  parser.add_argument("--limit", type=int, default=None, help="read only the first N records of each file")
  parser.add_argument("--samples", type=int, default=1, help="gsm8k: answers sampled per question for pass@k "
                      "(1: greedy accuracy only)")
  parser.add_argument("--temperature", type=float, default=1.0, help="gsm8k: of the pass@k samples")
  parser.add_argument("--max_new_tokens", type=int, default=256, help="gsm8k: tokens per answer")
  parser.add_argument("--prompt", default="auto", choices=("auto", "chat", "plain"),
                      help=f"gsm8k prompts; auto: chat turns for stages {', '.join(CHAT_STAGES)}, else plain text")
  parser.add_argument("--rows", type=int, default=8, help="rows per forward pass / generation batch")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.limit is not None and args.limit < 1:
    parser.error(f"--limit must be at least 1, got {args.limit}")
  if args.samples < 1 or (args.samples > 1 and args.temperature <= 0):
    parser.error(f"--samples {args.samples} --temperature {args.temperature}: need samples >= 1, and a "
                 "temperature > 0 for samples > 1")
  try:  # every file is read before the model loads: a bad record fails fast
    files = [(path, *read(path, args.format, args.limit)) for path in args.files]
  except (BenchmarkError, OSError) as e:
    parser.error(str(e))
  runner = Runner.from_workdir(args.workdir, args.prompt, rows=args.rows)
  for path, fmt, items in files:
    try:
      result = evaluate(runner, fmt, items, path=path, samples=args.samples, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, progress=True)
    except BenchmarkError as e:
      parser.error(str(e))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
