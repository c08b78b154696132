"""Hallucination, measured on people whose truth we control (llm_jax/data/tasks/people.py).

    assistant = Assistant.from_workdir("/tmp/llm_jax_experiments/grounding/sft_idk", tools=None)
    world = people.World(250)
    questions = world.questions(world.group("unknown_held"))   # (person, attribute) pairs
    answers = hallucination.ask(assistant, questions)                      # one greedy answer each
    hallucination.rates(questions, answers)   # {"right": .., "idk": .., "wrong": .., "n": ..}

Every answer is graded by people.grade: "right" (names the true value), "idk" (says it does not know and names
no value), "wrong" (anything else). On people the model never read, every "wrong" is a confident made-up
answer: the hallucination rate is the share of "wrong" there.

Also here, the seed's other checks on an answer, all measured by experiments/grounding.py:
  probe            ask each question k times (sampled); a fact is "known" when the majority answer is right
  majority         self-consistency: the most frequent value among k sampled answers (a tie: the first seen)
  agreement        the share of the k answers that agree with the majority: low agreement flags a guess
  rank_by_likelihood  of k candidate answers, the one the model itself finds most likely (mean log-prob per
                   token of the answer given the question, teacher-forced; llm_jax/eval/benchmarks.py Runner)

    python -m llm_jax.eval.hallucination --workdir /tmp/llm_jax_experiments/grounding/sft_idk [--people 250] \
        [--groups known_held,unknown_held]
"""

from __future__ import annotations

import collections
import random
from typing import Sequence

from llm_jax.data import chat
from llm_jax.data.tasks import people
from llm_jax.inference.engine import Sampling

GRADES = ("right", "idk", "wrong")


def prompts(questions: Sequence[tuple], seed: int = 0) -> list[list[dict]]:
  """One user turn per (person, attribute), its phrasing drawn from a seeded rng (the same for every model)."""
  rng = random.Random(f"questions/{seed}")
  return [people.question(p, a, rng).prompt for p, a in questions]


def ask(assistant, questions: Sequence[tuple], *, samples: int = 1, sampling: Sampling = Sampling(), seed: int = 0,
        max_new_tokens: int = 32, batch: int = 128) -> list[list[str]]:
  """Per question, `samples` answers (the assistant's final text after any tool call), in batches of `batch`
  conversations. Greedy sampling with samples > 1 repeats the same answer."""
  convs = [c for c in prompts(questions, seed) for _ in range(samples)]
  texts = []
  for at in range(0, len(convs), batch):
    replies = assistant.respond(convs[at:at + batch], max_new_tokens, sampling, seed=seed + at)
    texts += [chat.final_text(parts) for parts in replies]
  return [texts[i * samples:(i + 1) * samples] for i in range(len(questions))]


def grades(questions: Sequence[tuple], answers: Sequence[Sequence[str]]) -> list[list[str]]:
  return [[people.grade(text, p.value(a), a) for text in texts] for (p, a), texts in zip(questions, answers)]


def rates(questions: Sequence[tuple], answers: Sequence[Sequence[str]]) -> dict:
  """The share of right / idk / wrong answers over all questions and samples, and n (answers graded)."""
  flat = [g for row in grades(questions, answers) for g in row]
  if not flat:
    raise ValueError("rates: no answers to grade")
  counts = collections.Counter(flat)
  return {**{g: counts[g] / len(flat) for g in GRADES}, "n": len(flat)}


def stated_value(text: str, attribute: str) -> str:
  """The value of `attribute` an answer states ("idk" for a refusal, "" when it names none; the first one
  named when several are)."""
  found = [(text.find(v), v) for v in people.VALUES[attribute] if people.mentions(text, v)]
  if found:
    return min(found)[1]
  return "idk" if people.says_idk(text, attribute) else ""


def majority(texts: Sequence[str], attribute: str) -> tuple[str, float]:
  """(the most frequent stated value among the answers, the share of answers stating it)."""
  values = [stated_value(t, attribute) for t in texts]
  if not values:
    raise ValueError("majority: no answers")
  counts = collections.Counter(values)
  best = max(counts, key=lambda v: (counts[v], -values.index(v)))
  return best, counts[best] / len(values)


def probe(questions: Sequence[tuple], answers: Sequence[Sequence[str]]) -> list[bool]:
  """Per question, whether the fact is known: the majority of its sampled answers states the true value."""
  return [majority(texts, a)[0] == p.value(a) for (p, a), texts in zip(questions, answers)]


def rank_by_likelihood(runner, questions: Sequence[tuple], candidates: Sequence[Sequence[str]],
                       seed: int = 0) -> list[str]:
  """Per question, the candidate answer with the highest mean log-probability per token under the model
  (a benchmarks.Runner with chat prompts): the model's own ranking of its sampled answers."""
  convs = prompts(questions, seed)
  rows, starts, owner = [], [], []
  end = runner.markers.assistant[1]
  for i, (conv, texts) in enumerate(zip(convs, candidates)):
    prompt = chat.render_for_completion(conv, runner.tokenizer, runner.markers)
    for text in texts:
      rows.append(prompt + runner.tokenizer.encode(text) + [end])
      starts.append(len(prompt))
      owner.append(i)
  logps = runner.logprobs(rows, starts)
  best: dict[int, tuple[float, str]] = {}
  flat = [t for texts in candidates for t in texts]
  for i, logp, row, start, text in zip(owner, logps, rows, starts, flat):
    score = logp / (len(row) - start)
    if i not in best or score > best[i][0]:
      best[i] = (score, text)
  return [best[i][1] if i in best else "" for i in range(len(candidates))]


def main(argv=None):
  import argparse  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel

  from llm_jax.inference.assistant import Assistant  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(description="Right / I don't know / wrong answers about the synthetic people.")
  parser.add_argument("--workdir", required=True, help="a fine-tuned workdir")
  parser.add_argument("--people", type=int, default=250, help="the world's size (as the study used)")
  parser.add_argument("--seed", type=int, default=0, help="the world's seed")
  parser.add_argument("--groups", default="known_held,unknown_held")
  args = parser.parse_args(argv)
  world = people.World(args.people, args.seed)
  assistant = Assistant.from_workdir(args.workdir, tools=None)
  out = {}
  for group in [g.strip() for g in args.groups.split(",") if g.strip()]:
    questions = world.questions(world.group(group))
    out[group] = rates(questions, ask(assistant, questions))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
