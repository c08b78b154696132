"""Long-term memory with the `remember` and `recall` tools (llm_jax/inference/memory.py): the user states a
personal fact and the assistant stores it; in a later conversation the user asks, and the assistant looks the
fact up and answers from the note it reads.

    "Remember that my dog is called Rex."  [remember: my dog is called Rex] -> remembered: my dog is called Rex
                                           "Noted. Your dog is called Rex."
    "What is my dog called?"               [recall: dog] -> 1. my dog is called Rex
                                           "Your dog is called Rex."

A fact is a kind (a pet's name, a sibling's, a favourite color, a birthday, ...), a subject for some kinds
(dog, sister) and a value. The note is the fact exactly as the user wrote it, so storing it is copying from
the question; the recall query is a fixed keyword of the kind that occurs in the note ("dog", "birthday",
"favourite color"). Half of the conversations store a fact, half ask for one. The store a question is asked
against holds the fact and up to two notes of other kinds, in a random order; in one question of five the
fact was never stored, and the assistant says it has not been told. The recall output is what the real tool
returns for that store (memory.recall_text), and the answer follows from it: a note that states the fact, or
none. The held-out split is by the fact (kind, subject, value; tasks.base.in_split), the other notes of a
store included.
"""

from __future__ import annotations

import dataclasses
import random

from llm_jax.data.tasks.base import Example, draw, tool_turn
from llm_jax.inference.memory import recall_text

_NAMES = ("Rex", "Bella", "Milo", "Luna", "Max", "Coco", "Oscar", "Daisy", "Rocky", "Nala", "Pip", "Ziggy",
          "Biscuit", "Pepper", "Shadow", "Anna", "Tom", "Lena", "Omar", "Priya", "Jonas", "Maya", "Felix", "Sara",
          "Ivan", "Chloe", "Ravi", "Nora", "Hugo", "Ines", "Kofi", "Yuki")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclasses.dataclass(frozen=True)
class _Kind:
  fact: str  # the note, with {s} the subject and {v} the value
  questions: tuple[str, ...]
  query: str  # the recall argument: words of the note
  answer: str  # the answer from the note
  about: str  # what the user has not told, when no note states it
  values: tuple[str, ...]
  subjects: tuple[str, ...] = ("",)


_KINDS = {
    "pet": _Kind("my {s} is called {v}", ("What is my {s} called?", "What's my {s}'s name?",
                                          "Do you remember the name of my {s}?"),
                 "{s}", "Your {s} is called {v}.", "the name of your {s}", _NAMES,
                 ("dog", "cat", "parrot", "hamster", "horse", "rabbit")),
    "relative": _Kind("my {s} is called {v}", ("What is my {s}'s name?", "What is my {s} called?", "Who is my {s}?"),
                      "{s}", "Your {s} is called {v}.", "your {s}'s name", _NAMES,
                      ("sister", "brother", "cousin", "neighbour", "boss")),
    "color": _Kind("my favourite color is {v}", ("What is my favourite color?", "Which color do I like best?"),
                   "favourite color", "Your favourite color is {v}.", "your favourite color",
                   ("blue", "green", "red", "purple", "yellow", "orange", "teal", "black", "white", "pink", "silver",
                    "gold", "brown", "grey", "navy", "maroon", "olive", "beige", "turquoise", "lavender", "crimson",
                    "indigo", "coral", "mint")),
    "food": _Kind("my favourite food is {v}", ("What is my favourite food?", "What do I like to eat most?"),
                  "favourite food", "Your favourite food is {v}.", "your favourite food",
                  ("pizza", "sushi", "pasta", "curry", "tacos", "ramen", "pancakes", "falafel", "risotto",
                   "dumplings", "paella", "lasagna", "burritos", "pho", "goulash", "couscous", "waffles", "gnocchi",
                   "kebab", "biryani", "moussaka", "ravioli", "tempura", "chili")),
    "city": _Kind("I live in {v}", ("Where do I live?", "Which city do I live in?"), "live", "You live in {v}.",
                  "where you live", ("Oslo", "Lisbon", "Madrid", "Vienna", "Prague", "Dublin", "Quito", "Nairobi",
                                     "Osaka", "Lima", "Porto", "Krakow", "Leeds", "Austin", "Perth", "Berlin",
                                     "Paris", "Rome", "Athens", "Cairo", "Tokyo", "Seoul", "Denver", "Toronto")),
    "job": _Kind("I work as {v}", ("What is my job?", "What do I work as?", "What do I do for a living?"), "work",
                 "You work as {v}.", "what you work as",
                 ("a nurse", "a teacher", "an engineer", "a baker", "a pilot", "a lawyer", "an architect", "a farmer",
                  "a chef", "a plumber", "a journalist", "a dentist", "a doctor", "a cashier", "a painter",
                  "a musician", "a mechanic", "an accountant", "a gardener", "a librarian", "a carpenter",
                  "an electrician", "a firefighter", "a translator")),
    "birthday": _Kind("my birthday is on {v}", ("When is my birthday?", "What day is my birthday?"), "birthday",
                      "Your birthday is on {v}.", "when your birthday is",
                      tuple(f"{month} {day}" for month in _MONTHS for day in range(1, 29))),
    "allergy": _Kind("I am allergic to {v}", ("What am I allergic to?", "Do I have any allergies?"), "allergic",
                     "You are allergic to {v}.", "any allergies",
                     ("peanuts", "cats", "pollen", "shellfish", "penicillin", "dust", "eggs", "milk", "wasps",
                      "latex", "sesame", "gluten", "mold", "soy", "bees", "wheat", "mustard", "celery", "nickel",
                      "kiwi")),
    "number": _Kind("my lucky number is {v}", ("What is my lucky number?", "Which number is lucky for me?"),
                    "lucky number", "Your lucky number is {v}.", "your lucky number",
                    tuple(str(n) for n in range(1, 100))),
}
# {f}: the fact as a note ("my dog is called Rex"); {F}: capitalized. The note is what the user wrote.
_STATEMENTS = ("Remember that {f}.", "Please remember: {f}.", "Note this: {f}.", "Can you remember that {f}?",
               "Keep in mind that {f}.", "{F}. Remember that.", "Don't forget: {f}.")
_CONFIRMATIONS = ("Noted. {a}", "I will remember that. {a}", "Okay, saved. {a}", "Done. {a}")
_ANSWERS = ("{a}", "I looked it up. {a}")
_NOT_TOLD = "You have not told me {about} yet."


def _fact(rng: random.Random, split: str, kinds: list[str]) -> tuple[str, str, str]:
  """(kind, subject, value) of one of `kinds`, in `split`."""
  def sample(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(kinds)
    return kind, rng.choice(_KINDS[kind].subjects), rng.choice(_KINDS[kind].values)
  return draw(rng, split, sample, lambda kind, subject, value: f"{kind}|{subject}|{value}")


def _note(kind: str, subject: str, value: str) -> str:
  return _KINDS[kind].fact.format(s=subject, v=value)


def make_remember(rng: random.Random, split: str) -> Example:
  """The user states a fact; the assistant stores it as the user wrote it and confirms."""
  kind, subject, value = _fact(rng, split, list(_KINDS))
  note = _note(kind, subject, value)
  statement = rng.choice(_STATEMENTS)
  if statement.startswith("{F}"):
    note = note[0].upper() + note[1:]
  answer = _KINDS[kind].answer.format(s=subject, v=value)
  return Example([{"role": "user", "content": statement.format(f=note, F=note)},
                  tool_turn("remember", note, f"remembered: {note}",
                            rng.choice(_CONFIRMATIONS).format(a=answer))], value, "memory", kind="text")


def make_recall(rng: random.Random, split: str) -> Example:
  """The user asks for a fact; the assistant recalls it and answers from the notes, or says it was not told."""
  kind, subject, value = _fact(rng, split, list(_KINDS))
  others = rng.sample([k for k in _KINDS if k != kind], rng.randint(0, 2))
  store = [_note(*_fact(rng, split, [other])) for other in others]
  note = _note(kind, subject, value)
  if rng.random() < 0.8:
    store.insert(rng.randint(0, len(store)), note)
  spec = _KINDS[kind]
  query = spec.query.format(s=subject)
  output = recall_text(store, query)
  if output.split("\n")[0] == f"1. {note}":  # the best match states the fact
    answer = rng.choice(_ANSWERS).format(a=spec.answer.format(s=subject, v=value))
    checked = value
  else:
    answer = checked = _NOT_TOLD.format(about=spec.about.format(s=subject))
  question = rng.choice(spec.questions).format(s=subject)
  return Example([{"role": "user", "content": question}, tool_turn("recall", query, output, answer)], checked,
                 "memory", kind="text")


def make(rng: random.Random, split: str) -> Example:
  return (make_remember if rng.random() < 0.5 else make_recall)(rng, split)
