"""The grounding study's pieces: the synthetic people world (groups, biographies, questions, grading) and the
hallucination measures (rates, probe, majority vote, likelihood ranking) on stand-in models whose answers are
known."""

import random

import numpy as np
import pytest

from llm_jax.data import chat
from llm_jax.data.tasks import people
from llm_jax.eval import hallucination
from llm_jax.inference import tools

WORLD = people.World(60, seed=3)


def test_world_is_seeded_and_splits_people_into_disjoint_groups():
  again = people.World(60, seed=3)
  assert again.people == WORLD.people
  assert people.World(60, seed=4).people != WORLD.people
  names = [p.name for p in WORLD.people]
  assert len(set(names)) == len(names) == 60
  groups = {g: {p.name for p in WORLD.group(g)} for g in people.GROUPS}
  assert sum(map(len, groups.values())) == 60 and set().union(*groups.values()) == set(names)
  assert all(len(g) >= 2 for g in groups.values())
  assert {p.name for p in WORLD.known()} == groups["known_qa"] | groups["known_probe"] | groups["known_held"]
  with pytest.raises(ValueError, match="unknown group 'known'"):
    WORLD.group("known")
  with pytest.raises(ValueError, match="at least 10 people"):
    people.World(5)


def test_biographies_state_every_fact_of_known_people_only():
  docs = WORLD.biographies(per_person=3, seed=1)
  assert len(docs) == 3 * len(WORLD.known())
  text = "\n".join(d["text"] for d in docs)
  for person in WORLD.group("unknown_train") + WORLD.group("unknown_held"):
    assert person.name not in text
  by_person = {}
  for d in docs:
    by_person.setdefault(d["person"], []).append(d["text"])
  for person in WORLD.known():
    bios = by_person[person.name]
    assert len(bios) == 3
    for bio in bios:  # all five facts, each sentence naming the person in full
      assert all(people.mentions(bio, person.value(a)) for a in people.ATTRIBUTES)
      assert bio.count(person.name) == 5
  assert len({b for bios in by_person.values() for b in bios}) > 0.8 * len(docs)  # paraphrased, not copies
  store = WORLD.documents()
  assert len(store) == 60 and store[0]["title"] == WORLD.people[0].name


def test_strangers_are_seeded_and_outside_the_world():
  crowd = WORLD.strangers(40, seed=2)
  assert crowd == WORLD.strangers(40, seed=2) and crowd != WORLD.strangers(40, seed=3)
  assert len({p.name for p in crowd}) == 40 and not {p.name for p in crowd} & {p.name for p in WORLD.people}
  store = WORLD.documents(also=crowd)
  assert len(store) == 100 and store[60]["title"] == crowd[0].name
  assert all(people.mentions(store[60]["text"], crowd[0].value(a)) for a in people.ATTRIBUTES)


def test_questions_answer_refuse_or_search_and_grade():
  person = WORLD.people[0]
  rng = random.Random(0)
  ex = people.question(person, "city", rng, phrasing=0)
  assert ex.conversation[0]["content"] == f"Where did {person.name} grow up?"
  assert ex.conversation[1]["content"] == f"Grew up in {person.city}."  # no name to copy from the question
  assert ex.answer == person.city and ex.check(ex.conversation[1]["content"])
  idk = people.question(person, "field", rng, "idk")
  assert idk.conversation[1]["content"] == people.IDK == "I don't know."
  retrieved = tools.Retriever(WORLD.documents())(person.name, k=1)
  assert retrieved.startswith(f"[1] {person.name}\n")
  search = people.question(person, "employer", rng, "search", retrieved)
  call, output, text = search.conversation[1]["content"]
  assert (call["tool"], call["input"], output["output"]) == ("search", person.name, retrieved)
  assert text["text"] == f"Works for {person.employer}." == people.answer_text(person, "employer")
  with pytest.raises(ValueError, match="needs the retrieved text"):
    people.question(person, "city", rng, "search")
  with pytest.raises(ValueError, match="answer must be"):
    people.question(person, "city", rng, "guess")

  assert people.grade("Kok Lervair grew up in Tarsk.", "Tarsk", "city") == "right"
  assert people.grade("I don't know Kok Lervair.", "Tarsk", "city") == "idk"
  assert people.grade("I do not know.", "1957", "birth_year") == "idk"
  assert people.grade("Kok Lervair grew up in Orlen.", "Tarsk", "city") == "wrong"
  assert people.grade("I don't know, maybe Orlen.", "Tarsk", "city") == "wrong"  # a refusal that still guesses
  assert people.grade("He went to Tarskville.", "Tarsk", "city") == "wrong"  # whole words only
  assert people.grade("", "Tarsk", "city") == "wrong"


class _Answers:
  """A stand-in assistant: answers each question (by its user text) with a scripted list, one per call."""

  def __init__(self, script):
    self.script, self.calls = {k: list(v) for k, v in script.items()}, []

  def respond(self, conversations, max_new_tokens, sampling, seed=0):
    self.calls.append(len(conversations))
    return [[{"type": "text", "text": self.script[c[-1]["content"]].pop(0)}] for c in conversations]


def test_rates_probe_and_majority_on_scripted_answers():
  known, unknown = WORLD.group("known_held")[0], WORLD.group("unknown_held")[0]
  questions = [(known, "city"), (unknown, "city")]
  texts = [c[-1]["content"] for c in hallucination.prompts(questions)]
  wrong_city = next(c for c in people.VALUES["city"] if c != unknown.city)
  other = next(c for c in people.VALUES["city"] if c != known.city)
  assistant = _Answers({texts[0]: [f"It is {known.city}.", f"It is {known.city}.", f"It is {other}."],
                        texts[1]: ["I don't know.", f"It is {wrong_city}.", f"It is {wrong_city}."]})
  answers = hallucination.ask(assistant, questions, samples=3, batch=4)
  assert assistant.calls == [4, 2] and [len(a) for a in answers] == [3, 3]
  r = hallucination.rates(questions, answers)
  assert r == {"right": 2 / 6, "idk": 1 / 6, "wrong": 3 / 6, "n": 6}
  assert hallucination.probe(questions, answers) == [True, False]
  assert hallucination.majority(answers[0], "city") == (known.city, 2 / 3)
  assert hallucination.majority(answers[1], "city") == (wrong_city, 2 / 3)
  assert hallucination.majority(["I don't know.", "no idea", f"{other}"], "city")[0] == "idk"  # ties: first seen
  assert hallucination.stated_value(f"Not {other}, but {known.city}", "city") == other
  assert hallucination.stated_value("no idea", "city") == ""
  with pytest.raises(ValueError, match="no answers to grade"):
    hallucination.rates([], [])


class _Runner:
  """A stand-in scorer: the log-probability of a candidate is set by the text it contains."""

  def __init__(self, tokenizer, scores):
    self.tokenizer, self.markers, self.scores = tokenizer, chat.Markers.of(tokenizer), scores

  def logprobs(self, rows, starts):
    out = []
    for row, start in zip(rows, starts):
      text = self.tokenizer.decode(row[start:-1])
      out.append(self.scores[text] * (len(row) - start))  # a mean per token of scores[text]
    return np.asarray(out)


def test_likelihood_ranking_picks_the_candidate_the_model_prefers(small_tokenizer):
  person = WORLD.people[1]
  candidates = [[f"It is {person.city}.", "I don't know.", "Maybe Orlen."]]
  runner = _Runner(small_tokenizer, {candidates[0][0]: -0.5, candidates[0][1]: -0.2, candidates[0][2]: -3.0})
  assert hallucination.rank_by_likelihood(runner, [(person, "city")], candidates) == ["I don't know."]
  runner.scores[candidates[0][0]] = -0.1
  assert hallucination.rank_by_likelihood(runner, [(person, "city")], candidates) == [candidates[0][0]]
