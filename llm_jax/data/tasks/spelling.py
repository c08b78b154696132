"""Letter counting and spelling solved with the Python tool ("how many r's are in strawberry?").

A token is a chunk of letters, so a model that sees "strawberry" as two or three tokens cannot count its
r's by looking; it can write `word = "strawberry"` and `print(word.count("r"))` and read the answer. The
code quotes the word after ` "` as the question does, so the word's tokens and the tokens around them are the
same in both places and copying it is the match-and-copy an induction head does (`print("strawberry"...`
would put the merged token `("` before it and `".` after it). `repeat` (say a quoted text back) is copying
practice for both.

Words come from the built-in corpus (lowercase words of 4-10 letters in pydoc_data.topics) plus a few
classics, and in training also random letter strings (half of the problems); the held-out split is by the
word (tasks.base.in_split), so evaluation words, always real ones, were never seen in training.
"""

from __future__ import annotations

import functools
import random
import re
import string

from llm_jax.data.tasks.base import Example, draw, tool_turn

_CLASSICS = ("strawberry", "banana", "mississippi", "raspberry", "committee", "bookkeeper", "parallel")
_COUNT_QUESTIONS = ('How many "{c}" are in "{w}"?', 'How many times does the letter {c} appear in "{w}"?',
                    'Count the letter "{c}" in the word "{w}".', 'How many {c}\'s are in "{w}"?')
_COUNT_ANSWERS = ('There are {n} "{c}" in "{w}".', "{n}", 'The letter {c} appears {n} times.', "The answer is {n}.")
_SPELL_QUESTIONS = ('Spell "{w}" letter by letter.', 'How do you spell "{w}"?', 'Spell the word "{w}".')
_REPEAT_QUESTIONS = ('Repeat after me: "{t}"', 'Say "{t}" back to me.', 'Copy this exactly: "{t}"',
                     'Write "{t}" again.')
_REPEAT_ANSWERS = ('"{t}"', 'You said "{t}".', 'Here it is: "{t}"')


@functools.lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  text = " ".join(pydoc_data.topics.topics.values())
  return tuple(sorted(set(re.findall(r"(?<![\w.])[a-z]{4,10}(?![\w.])", text)) | set(_CLASSICS)))


def _word(rng: random.Random) -> tuple:
  return (rng.choice(words()),)


def _train_word(rng: random.Random) -> tuple:
  """A corpus word or, half of the time, random letters: with more strings than a small model can memorize,
  it learns to copy the word from the question into its code instead of writing one it has seen."""
  if rng.random() < 0.5:
    return _word(rng)
  return ("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))),)


def _draw_word(rng: random.Random, split: str) -> str:
  (word,) = draw(rng, split, _train_word if split == "train" else _word, lambda w: w)
  return word


def make_counting(rng: random.Random, split: str) -> Example:
  word = _draw_word(rng, split)
  # Letters that occur are asked about 3 times out of 4 (answers of 0 would otherwise dominate).
  letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(string.ascii_lowercase)
  n = str(word.count(letter))
  code = f'word = "{word}"\nprint(word.count("{letter}"))'
  answer = rng.choice(_COUNT_ANSWERS).format(n=n, c=letter, w=word)
  return Example([{"role": "user", "content": rng.choice(_COUNT_QUESTIONS).format(c=letter, w=word)},
                  tool_turn("python", code, n + "\n", answer)], n, "counting")


def make_repeat(rng: random.Random, split: str) -> Example:
  """Say a quoted text back: one to four words and letter strings (training-split words only, like counting's),
  every token of them copied from the question. Copying the question's word into the tool code is what
  counting and spelling need and what the tiny model learns last; this task trains it on more copied tokens
  per conversation than they have (2-3). With it, the tiny SFT run writes the right word sooner
  (experiments/sft_tools.md)."""
  text = " ".join(_draw_word(rng, split) for _ in range(rng.randint(1, 4)))  # held-out words stay held out
  return Example([{"role": "user", "content": rng.choice(_REPEAT_QUESTIONS).format(t=text)},
                  {"role": "assistant", "content": rng.choice(_REPEAT_ANSWERS).format(t=text)}],
                 text, "repeat", kind="text")


def make_spelling(rng: random.Random, split: str) -> Example:
  word = _draw_word(rng, split)
  spelled = "-".join(word)
  code = f'word = "{word}"\nprint("-".join(word))'
  return Example([{"role": "user", "content": rng.choice(_SPELL_QUESTIONS).format(w=word)},
                  tool_turn("python", code, spelled + "\n", spelled)], spelled, "spelling", kind="text")
