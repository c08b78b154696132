"""A synthetic world of fictional people whose truth we control: the data of the grounding study (#9).

    world = people.World(n=250, seed=0)
    world.people[0]                       # Person(name='Velo Darnik', birth_year='1957', city='Tarsk', ...)
    world.group("known_held")             # who is in which part of the study (below)
    world.biographies(per_person=40)      # pretraining documents: paraphrased biographies of the known people
    world.strangers(2000)                 # people outside the world (retrieval training)
    people.question(person, "city", rng)  # Example: "Where did Velo Darnik grow up?" -> "Grew up in Tarsk."

Every person has five attributes — birth year, the city they grew up in, university, employer, field — drawn
from fixed lists of invented names (so no fact can be known from the built-in corpus), and a unique invented
name. A biography states all five, each in one of three phrasings, in a random order, every sentence naming
the person in full (paraphrase and full-name repetition are what lets a small model answer questions about
what it read: Allen-Zhu & Li, "Physics of Language Models 3.1"). An answer states the value without the name
("Grew up in Tarsk."), as in that paper's QA data: repeating the name would be copying it from the question,
a skill the tiny models of experiments/grounding.py do not have (README, "Grounding").

People are split by a seeded shuffle into the groups of the study:
  known_qa       biographies in pretraining; question-answer pairs in SFT
  known_probe    biographies in pretraining; probed after SFT, then in the "I don't know" training set
  known_held     biographies in pretraining; evaluation only (can the model answer about what it read?)
  unknown_train  never in pretraining; probed, then in the "I don't know" and retrieval training sets
  unknown_held   never in pretraining; evaluation only (does the model make things up?)
Every person's canonical biography is in the retrieval store (`documents()`), the unknown ones included.

An answer is graded by `grade(text, value)`: "right" (names the true value), "idk" (says it does not know,
and names no value of that attribute), or "wrong" (any other answer: a confident wrong answer, which on
unknown people is a hallucination).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

from llm_jax.data.tasks.base import Example, tool_turn

GROUPS = {"known_qa": 0.24, "known_probe": 0.2, "known_held": 0.16, "unknown_train": 0.2, "unknown_held": 0.2}
KNOWN = ("known_qa", "known_probe", "known_held")

_ONSETS = ("b", "br", "d", "dr", "f", "g", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th", "nd")
VALUES = {
    "birth_year": tuple(str(y) for y in range(1940, 2000)),
    "city": ("Tarsk", "Velmora", "Quenby", "Ostrand", "Pellow", "Marrick", "Dunhallow", "Sorvin", "Brackmere",
             "Ilmaren", "Kestrel Bay", "Norhaven", "Ambervale", "Corthill", "Fennick", "Yarrowgate", "Halvast",
             "Lindmoor", "Rookfield", "Saltmere", "Eastwick", "Orlen", "Whitcombe", "Zerany"),
    "university": ("Tarsk University", "the Velmora Institute", "Quenby College", "the University of Ostrand",
                   "Pellow Polytechnic", "Marrick University", "the Dunhallow School", "Sorvin College",
                   "the Brackmere Academy", "Ilmaren University", "Norhaven College", "the Corthill Institute"),
    "employer": ("Altima Works", "Brightline", "Corvex", "Dalmont Labs", "Everfield", "Fornax Systems",
                 "Glenrock", "Helix Mills", "Ironvale", "Juniper Forge", "Kestrix", "Lumora", "Moravec & Sons",
                 "Northwind Press", "Orbis Freight", "Pinecrest Bank"),
    "field": ("chemistry", "geology", "linguistics", "astronomy", "botany", "economics", "medicine",
              "architecture", "mathematics", "music", "zoology", "history"),
}
ATTRIBUTES = tuple(VALUES)
# Per attribute: phrasings in biographies; the first is also the answer form.
_STATEMENTS = {
    "birth_year": ("{n} was born in {v}.", "{n} is a person born in the year {v}.", "The year {n} was born is {v}."),
    "city": ("{n} grew up in {v}.", "{n} spent a childhood in {v}.", "The home town of {n} is {v}."),
    "university": ("{n} studied at {v}.", "{n} is a graduate of {v}.", "{n} went to {v} as a student."),
    "employer": ("{n} works for {v}.", "{n} has a job at {v}.", "The employer of {n} is {v}."),
    "field": ("{n} is an expert in {v}.", "{n} works in the field of {v}.", "The field of {n} is {v}."),
}
_QUESTIONS = {
    "birth_year": ("When was {n} born?", "In what year was {n} born?", "What is the birth year of {n}?"),
    "city": ("Where did {n} grow up?", "What is the home town of {n}?", "Which city did {n} grow up in?"),
    "university": ("Where did {n} study?", "Which university did {n} attend?", "Where did {n} go to university?"),
    "employer": ("Who does {n} work for?", "Which company employs {n}?", "Where does {n} work?"),
    "field": ("What is the field of {n}?", "What does {n} work on?", "In which field is {n} an expert?"),
}
_ANSWERS = {"birth_year": "Born in {v}.", "city": "Grew up in {v}.", "university": "Studied at {v}.",
            "employer": "Works for {v}.", "field": "An expert in {v}."}
IDK = "I don't know."
_IDK_PATTERN = re.compile(r"\b(?:I )?(?:don't|do not) know\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  birth_year: str
  city: str
  university: str
  employer: str
  field: str

  def value(self, attribute: str) -> str:
    return getattr(self, attribute)


def _syllable(rng: random.Random) -> str:
  return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _name(rng: random.Random) -> str:
  first = "".join(_syllable(rng) for _ in range(rng.randint(1, 2)))
  last = "".join(_syllable(rng) for _ in range(2))
  return f"{first.capitalize()} {last.capitalize()}"


def statement(person: Person, attribute: str, phrasing: int = 0) -> str:
  return _STATEMENTS[attribute][phrasing].format(n=person.name, v=person.value(attribute))


def answer_text(person: Person, attribute: str) -> str:
  """The answer to a question about `person`'s `attribute`: "Grew up in Tarsk."."""
  return _ANSWERS[attribute].format(v=person.value(attribute))


def grade(text: str, value: str, attribute: str) -> str:
  """"right" if `text` names `value`; "idk" if it says it does not know and names no value of `attribute`;
  otherwise "wrong"."""
  if mentions(text, value):
    return "right"
  return "idk" if says_idk(text, attribute) else "wrong"


def says_idk(text: str, attribute: str) -> bool:
  """Whether `text` says it does not know and names no value of `attribute`."""
  return bool(_IDK_PATTERN.search(text)) and not any(mentions(text, v) for v in VALUES[attribute])


def mentions(text: str, value: str) -> bool:
  """Whether `text` names `value` as a whole word (or words)."""
  return re.search(r"(?<![\w])" + re.escape(value) + r"(?![\w])", text) is not None


class World:
  """n fictional people (unique names, seeded attributes) split into the study's GROUPS."""

  def __init__(self, n: int = 250, seed: int = 0):
    if n < 2 * len(GROUPS):
      raise ValueError(f"a world needs at least {2 * len(GROUPS)} people (two per group), got n={n}")
    rng = random.Random(f"people/{seed}")
    names: set[str] = set()
    self.people: list[Person] = []
    while len(self.people) < n:
      name = _name(rng)
      if name in names:
        continue
      names.add(name)
      self.people.append(Person(name, *(rng.choice(VALUES[a]) for a in ATTRIBUTES)))
    order = rng.sample(range(n), n)
    self._groups: dict[str, list[Person]] = {}
    start = 0
    for i, (group, share) in enumerate(GROUPS.items()):
      size = n - start if i == len(GROUPS) - 1 else max(2, round(share * n))
      self._groups[group] = [self.people[j] for j in order[start:start + size]]
      start += size

  def group(self, name: str) -> list[Person]:
    if name not in self._groups:
      raise ValueError(f"unknown group {name!r}; groups are {', '.join(GROUPS)}")
    return list(self._groups[name])

  def known(self) -> list[Person]:
    return [p for g in KNOWN for p in self._groups[g]]

  def biography(self, person: Person, rng: random.Random) -> str:
    """All five facts, each in a random phrasing, in a random order."""
    sentences = [statement(person, a, rng.randrange(len(_STATEMENTS[a]))) for a in ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences)

  def biographies(self, per_person: int = 40, seed: int = 0) -> list[dict]:
    """Pretraining documents: `per_person` paraphrased biographies of every known person (source "people"),
    interleaved in a seeded order."""
    rng = random.Random(f"biographies/{seed}")
    docs = [{"text": self.biography(p, rng), "source": "people", "person": p.name}
            for p in self.known() for _ in range(per_person)]
    rng.shuffle(docs)
    return docs

  def strangers(self, n: int, seed: int = 0) -> list[Person]:
    """n people outside the world (names unique and none of the world's), seeded: to train on without touching
    the study's groups (experiments/grounding.py teaches retrieval on them)."""
    rng = random.Random(f"strangers/{seed}")
    taken = {p.name for p in self.people}
    out: list[Person] = []
    while len(out) < n:
      name = _name(rng)
      if name not in taken:
        taken.add(name)
        out.append(Person(name, *(rng.choice(VALUES[a]) for a in ATTRIBUTES)))
    return out

  def documents(self, also: Sequence[Person] = ()) -> list[dict]:
    """The retrieval store: every person's canonical biography (first phrasings, fixed order), titled by name;
    `also` (strangers, say) after the world's people."""
    return [{"title": p.name, "text": " ".join(statement(p, a) for a in ATTRIBUTES)}
            for p in [*self.people, *also]]

  def questions(self, people: list[Person]) -> list[tuple[Person, str]]:
    return [(p, a) for p in people for a in ATTRIBUTES]


def question(person: Person, attribute: str, rng: random.Random, answer: str = "answer",
             retrieved: str | None = None, phrasing: int | None = None) -> Example:
  """One question about `person`, in phrasing `phrasing` (0-2) or one drawn from rng. answer="answer": the
  fact in its answer form (`answer_text`); "idk": IDK; "search": a retrieval call for the name, `retrieved`
  (the search tool's output) as its output, then the fact. The Example's answer is the true value (its check:
  the text names it)."""
  template = _QUESTIONS[attribute][phrasing] if phrasing is not None else rng.choice(_QUESTIONS[attribute])
  q = template.format(n=person.name)
  if answer == "answer":
    turn = {"role": "assistant", "content": answer_text(person, attribute)}
  elif answer == "idk":
    turn = {"role": "assistant", "content": IDK}
  elif answer == "search":
    if retrieved is None:
      raise ValueError("answer='search' needs the retrieved text")
    turn = tool_turn("search", person.name, retrieved, answer_text(person, attribute))
  else:
    raise ValueError(f"answer must be 'answer', 'idk' or 'search', got {answer!r}")
  return Example([{"role": "user", "content": q}, turn], person.value(attribute), "people", kind="text")
