"""The compare task's gold judge and preference pairs, and the preference-file readers (no JAX needed)."""

from __future__ import annotations

import json
import random
import re

import pytest

from llm_jax.data import preferences
from llm_jax.data.preferences import PreferenceError
from llm_jax.data.tasks import TASKS, CHECKED, base, compare


def _golds(a: int, b: int, rng: random.Random) -> dict[str, float]:
  question = rng.choice(compare._QUESTIONS).format(a=a, b=b)  # pylint: disable=protected-access
  return {name: compare.gold(question, style(a, b, rng)) for name, style in compare.STYLES.items()}


def test_gold_ranks_the_styles():
  rng = random.Random(0)
  for _ in range(200):
    a, b = rng.sample(range(10, 100), 2)
    g = _golds(a, b, rng)
    assert g["polite"] > g["good"] > g["verbose"] > g["bare"] > max(g["rambling"], g["unsure"]), (a, b, g)
    assert g["wrong"] < g["bare"] and g["unsure"] < g["bare"], (a, b, g)


def test_gold_parts_sum_to_gold_and_unfinished_costs():
  question = "Which is larger, 47 or 23?"
  for response in ("47 is larger than 23. Hope this helps!", "23 is larger than 47.", "47", "I am not sure.",
                   "47 is bigger than 23. Hope this helps! Hope this helps! Hope this helps!", "",
                   "Let me compare the two numbers one digit at a time. 47 is greater than 23."):
    parts = compare.gold_parts(question, response)
    assert compare.gold(question, response) == pytest.approx(sum(parts.values()))
    assert compare.gold(question, response, finished=False) == pytest.approx(compare.gold(question, response) - 0.5)
  assert compare.gold_parts("Which is larger, 47 or 23?", "47 is larger than 23. Hope this helps!") == {
      "correct": 1.0, "format": 0.3, "closing": 0.2, "repetition": 0.0, "length": 0.0, "unfinished": 0.0}
  rambling = compare.gold_parts(question, "47 is larger than 23. Hope this helps! Hope this helps! Hope this helps!")
  assert rambling["closing"] == 0.0 and rambling["repetition"] == pytest.approx(-0.8)
  assert compare.gold_parts(question, " ".join(["47"] + ["word"] * 15))["length"] == pytest.approx(-0.2)
  with pytest.raises(ValueError, match="two different numbers"):
    compare.gold("Which is larger?", "47")


def test_make_checks_the_first_number_and_is_registered():
  assert TASKS["compare"] is compare.make and "compare" in CHECKED
  example = compare.make(random.Random(0), "val")
  assert example.kind == "first_number" and example.task == "compare"
  big = int(example.answer)
  assert example.check(f"{big} is larger than {big - 1}.") and not example.check(f"{big - 1} is larger than {big}.")
  assert not example.check("I am not sure.")
  assert [m["role"] for m in example.conversation] == ["user", "assistant"]
  assert base.Example([], "7").check("3 then 7") and not base.Example([], "7", kind="first_number").check("3 then 7")
  responses = {compare.make(random.Random(i), "train").conversation[1]["content"] for i in range(300)}
  assert any(r == "I am not sure." for r in responses) and any(r.isdigit() for r in responses)


def test_split_is_by_the_unordered_pair():
  rng = random.Random(1)
  pairs = {}
  for split in ("train", "val"):
    numbers = [[int(x) for x in re.findall(r"\d+", p[0]["content"])]
               for p in compare.prompts(300, seed=rng.randint(0, 99), split=split)]
    pairs[split] = {(min(n), max(n)) for n in numbers}
    assert all(len(n) == 2 and 10 <= min(n) < max(n) <= 99 for n in numbers)
  assert pairs["train"] and pairs["val"] and not pairs["train"] & pairs["val"]


def test_pairs_are_seeded_and_labelled_by_gold():
  drawn = compare.pairs(200, seed=3, split="train")
  assert drawn == compare.pairs(200, seed=3, split="train") and drawn != compare.pairs(200, seed=4, split="train")
  for p in drawn:
    question = p["prompt"][0]["content"]
    assert p["gold_chosen"] == compare.gold(question, p["chosen"]) > p["gold_rejected"] == compare.gold(
        question, p["rejected"])
    assert "Hope this helps! Hope this helps!" not in p["chosen"] + p["rejected"]  # no rambling by default
  assert any(p["chosen"] == "I am not sure." or p["rejected"] == "I am not sure." for p in drawn)
  with_rambling = compare.pairs(100, seed=3, split="train", styles=["rambling", "good"])
  assert all("Hope this helps! Hope this helps!" in p["rejected"] for p in with_rambling)
  with pytest.raises(ValueError):
    compare.pairs(1, 0, "train", styles=["good"])


def _write(tmp_path, lines, name="pairs.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
  return str(path)


EXPECTED = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
            "chosen": "4", "rejected": "5"}


def test_the_three_formats_read_to_the_same_pair(tmp_path):
  msgs = EXPECTED["prompt"]
  explicit = {"prompt": msgs, "chosen": "4", "rejected": "5"}
  explicit_trl = {"prompt": msgs, "chosen": [{"role": "assistant", "content": "4"}],
                  "rejected": {"role": "assistant", "content": "5"}}
  implicit = {"chosen": msgs + [{"role": "assistant", "content": "4"}],
              "rejected": msgs + [{"role": "assistant", "content": "5"}]}
  path = _write(tmp_path, [explicit, "", explicit_trl, implicit])
  assert preferences.read_pairs(path) == [EXPECTED] * 3
  hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: Hi\n\nAssistant:  Hello. \n\nHuman: 2+2?\n\nAssistant: 5"}
  assert preferences.read_pairs(_write(tmp_path, [hh], "hh.jsonl")) == [{**EXPECTED, "prompt": msgs[1:]}]
  text_prompt = {"prompt": "2+2?", "chosen": [{"type": "text", "text": "4"}], "rejected": "5"}
  assert preferences.read_pairs(_write(tmp_path, [text_prompt], "t.jsonl")) == [
      {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"type": "text", "text": "4"}], "rejected": "5"}]


GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not JSON"),
    ({"prompt": "2+2?", "chosen": "4"}, "missing key 'rejected'"),
    (["2+2?", "4", "5"], "JSON object"),
    ({"prompt": 7, "chosen": "4", "rejected": "5"}, "'prompt' must be"),
    ({"prompt": "2+2?", "chosen": 4, "rejected": "5"}, "'chosen' must be"),
    ({"prompt": "2+2?", "chosen": {"role": "user", "content": "4"}, "rejected": "5"}, "assistant message"),
    ({"prompt": "2+2?", "chosen": [{"role": "assistant", "content": "4"}] * 2, "rejected": "5"}, "exactly one"),
    ({"prompt": "2+2?", "chosen": "  ", "rejected": "5"}, "chosen answer is empty"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "4"}, "same answer"),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chosen": "4",
      "rejected": "5"}, "end with a user message"),
    ({"prompt": [{"role": "robot", "content": "a"}], "chosen": "4", "rejected": "5"}, "prompt: message 0"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "4"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "5"}]}, "different prompts"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: 4", "rejected": "\n\nHuman: b\n\nAssistant: 5"}, "different prompts"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: 4", "rejected": "\n\nHuman: a\n\nAssistant:"}, "rejected answer is empty"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: 4\n\nHuman: b", "rejected": "\n\nHuman: a\n\nAssistant: 5"},
     "assistant's answer"),
    ({"chosen": "4", "rejected": ["5"]}, "without a 'prompt'"),
])
def test_bad_records_name_the_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path, [GOOD, "", bad, GOOD])
  with pytest.raises(PreferenceError, match=message) as e:
    preferences.read_pairs(path)
  assert str(e.value).startswith(f"{path}:3: "), str(e.value)


def test_empty_file_is_an_error(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text("\n\n")
  with pytest.raises(PreferenceError, match="empty.jsonl"):
    preferences.read_pairs(str(path))


def _file_prompts(pairs: list[dict]) -> set[str]:
  return {p["prompt"][0]["content"] for p in pairs if "gold_chosen" not in p}


def test_load_mixes_entries_and_splits_files(tmp_path):
  records = [{"prompt": f"question {i}?", "chosen": "yes", "rejected": "no"} for i in range(200)]
  path = _write(tmp_path, records)
  train = preferences.load(f"compare,{path}", 100, seed=0, split="train")
  val = preferences.load(f"compare,{path}", 100, seed=0, split="val")
  assert train == preferences.load(f"compare,{path}", 100, seed=0, split="train") and len(train) == 100
  assert sum("gold_chosen" in p for p in train) == 50 and _file_prompts(train) and _file_prompts(val)
  assert not _file_prompts(train) & _file_prompts(val)
  assert len(_file_prompts(val)) < 40  # about 10% of the 200 prompts
  with pytest.raises(ValueError, match="unknown preference source"):
    preferences.load("nope", 4, 0, "train")
