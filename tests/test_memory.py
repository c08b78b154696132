"""Long-term memory (issue #9): the SQLite store behind the `remember` / `recall` tools, the synthetic `memory` task,
and the round trip it is for — a micro model stores a fact in one chat process and a second chat process recalls it
from the file, driven through a pseudo-terminal like tests/test_sft.py's chat test."""

import json
import os
import pty
import random
import sqlite3
import subprocess
import sys

import pytest

from llm_jax.data import chat, tasks
from llm_jax.data.tasks import memory as memory_task
from llm_jax.data.tasks.base import in_split
from llm_jax.inference import tools
from llm_jax.inference.memory import MAX_CHARS, NO_MATCH, NOTHING, Memory, recall_text
from test_sft import ENV, ROOT, _read_until, _train

# --------------------------------------------------------------------------------------------------------------------
# the store


def test_notes_persist_across_memory_objects_on_one_file(tmp_path):
  path = tmp_path / "a" / "b" / "memory.sqlite"  # parent folders are created
  first = Memory(path)
  assert first.recall("dog") == NOTHING
  assert first.remember("my dog is called Rex") == "remembered: my dog is called Rex"
  second = Memory(str(path))  # another process's view: a fresh object, a fresh connection per call
  assert second.recall("what is my dog called") == "1. my dog is called Rex"
  assert second.remember("I live in Oslo") == "remembered: I live in Oslo"
  assert [(n.id, n.text) for n in first.notes()] == [(1, "my dog is called Rex"), (2, "I live in Oslo")]
  assert len(first.notes()[0].created) == len("2026-05-01 10:02:03")


def test_recall_ranks_by_bm25_newest_first_on_ties(tmp_path):
  memory = Memory(tmp_path / "m.sqlite")
  for note in ("my favourite food is pizza", "my dog is called Rex", "my favourite color is blue",
               "I live in Oslo", "my dog is called Max"):
    memory.remember(note)
  assert memory.recall("favourite color") == "1. my favourite color is blue\n2. my favourite food is pizza"
  assert memory.recall("dog") == "1. my dog is called Max\n2. my dog is called Rex"  # the newer note first
  assert memory.recall("my", k=1).count("\n") == 0 and memory.recall("my").count("\n") == 2  # k notes at most
  assert memory.recall("zebra") == NO_MATCH
  notes = [n.text for n in memory.notes()]
  assert memory.recall("Where do I live?") == recall_text(notes, "Where do I live?") == "1. I live in Oslo"
  assert recall_text([], "dog") == NOTHING


def test_limits_and_failures_come_back_as_text(tmp_path):
  memory = Memory(tmp_path / "m.sqlite")
  assert memory.remember("  \n ") == "error: empty note"
  assert memory.remember("x" * (MAX_CHARS + 1)) == f"error: note longer than {MAX_CHARS} characters"
  assert memory.remember("x" * MAX_CHARS) == "remembered: " + "x" * MAX_CHARS
  assert memory.remember("my  dog\n is Rex") == "remembered: my dog is Rex"  # stored on one line
  assert memory.remember("My dog is REX") == "already remembered: My dog is REX"  # not twice
  assert len(memory.notes()) == 2
  assert memory.recall("") == "error: empty query"
  assert memory.recall("q" * (MAX_CHARS + 1)) == f"error: query longer than {MAX_CHARS} characters"
  assert memory.remember(None) == "error: the note must be a string"
  # Through the dispatcher, as the assistant calls them.
  assert tools.run_tool("recall", "", memory.tools()) == "error: empty query"
  assert tools.run_tool("remember", "I live in Oslo", memory.tools()) == "remembered: I live in Oslo"
  # A database that fails after it was opened: the tools answer with text, the host methods name the file.
  with sqlite3.connect(memory.path) as db:
    db.execute("DROP TABLE notes")
  assert memory.remember("I live in Lima") == "error: could not store the note (no such table: notes)"
  assert memory.recall("live") == "error: could not read the memory (no such table: notes)"
  with pytest.raises(ValueError, match=r"m\.sqlite: no such table: notes"):
    memory.notes()


def test_forget_and_clear_never_reuse_ids(tmp_path):
  memory = Memory(tmp_path / "m.sqlite")
  for note in ("one", "two", "three"):
    memory.remember(note)
  assert memory.forget(3) and not memory.forget(3) and not memory.forget(99)
  memory.remember("four")
  assert [(n.id, n.text) for n in memory.notes()] == [(1, "one"), (2, "two"), (4, "four")]
  assert memory.clear() == 3 and memory.notes() == [] and memory.recall("one") == NOTHING


def test_a_file_that_is_no_memory_is_refused_naming_it(tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("my dog is called Rex\n" * 100)
  with pytest.raises(ValueError, match=r"notes\.txt: cannot use this as an SQLite memory file \(file is not a "):
    Memory(text)
  with pytest.raises(ValueError, match="cannot use this as an SQLite memory file"):
    Memory(tmp_path)  # a directory
  other = tmp_path / "other.sqlite"
  with sqlite3.connect(other) as db:
    db.execute("CREATE TABLE notes (title TEXT, body TEXT)")
  with pytest.raises(ValueError, match=r"other\.sqlite: its table 'notes' has columns \['title', 'body'\]"):
    Memory(other)


# --------------------------------------------------------------------------------------------------------------------
# the synthetic task


def test_memory_task_stores_what_the_user_said_and_answers_from_the_recalled_note(tmp_path):
  rng = random.Random(0)
  examples = {split: [tasks.TASKS["memory"](rng, split) for _ in range(400)] for split in ("train", "val")}
  store = Memory(tmp_path / "m.sqlite")
  facts = {"train": set(), "val": set()}
  outcomes = {"remember": 0, "found": 0, "not told": 0}
  for split, drawn in examples.items():
    for e in drawn:
      question, turn = e.conversation
      call, output, answer = turn["content"]
      assert (call["type"], output["type"], answer["type"]) == ("tool_call", "tool_output", "text")
      assert call["tool"] in store.tools() and 0 < len(call["input"]) <= MAX_CHARS and "\n" not in call["input"]
      assert e.task == "memory" and e.check(answer["text"])
      if call["tool"] == "remember":  # the note is copied from the user's message; the output is the tool's
        assert call["input"] in question["content"]
        store.clear()
        assert store.remember(call["input"]) == output["output"]
        facts[split].add(call["input"].lower())
        outcomes["remember"] += 1
      elif e.answer in output["output"].split("\n")[0]:  # the best note states the fact, and the answer says it
        assert output["output"].startswith("1. ") and e.answer not in question["content"]
        outcomes["found"] += 1
      else:
        assert e.answer.startswith("You have not told me") and e.answer == answer["text"]
        outcomes["not told"] += 1
      if call["tool"] == "recall" and output["output"] not in (NOTHING, NO_MATCH):  # every note the store showed
        facts[split] |= {line.split(". ", 1)[1].lower() for line in output["output"].split("\n")}
  assert not facts["train"] & facts["val"]  # a held-out fact is never stored or recalled in training
  assert min(outcomes.values()) > 50, outcomes
  assert "memory" not in tasks.CHECKED
  for name, kind in memory_task._KINDS.items():  # pylint: disable=protected-access
    # Facts are drawn by rejection on the split: a kind without a fact in a split would never return.
    keys = [f"{name}|{s}|{v}" for s in kind.subjects for v in kind.values]
    assert all(any(in_split(key, split) for key in keys) for split in ("train", "val")), name


def test_memory_task_renders_and_parses_back(small_tokenizer):
  rng = random.Random(1)
  for _ in range(30):
    conversation = tasks.TASKS["memory"](rng, "train").conversation
    assert chat.parse(chat.render(conversation, small_tokenizer).ids, small_tokenizer) == chat.normalize(conversation)


# --------------------------------------------------------------------------------------------------------------------
# the round trip: two chat processes, one SQLite file

# Two conversations the micro model learns by heart: one stores a fixed fact, one recalls it and answers.
REMEMBER = [{"role": "user", "content": "remember: my dog is Rex"},
            {"role": "assistant", "content": [{"type": "tool_call", "tool": "remember", "input": "my dog is Rex"},
                                              {"type": "tool_output", "output": "remembered: my dog is Rex"},
                                              {"type": "text", "text": "ok"}]}]
RECALL = [{"role": "user", "content": "dog?"},
          {"role": "assistant", "content": [{"type": "tool_call", "tool": "recall", "input": "dog"},
                                            {"type": "tool_output", "output": "1. my dog is Rex"},
                                            {"type": "text", "text": "Rex"}]}]


@pytest.fixture(scope="module")
def memory_workdir(tmp_path_factory):
  """A micro model pretrained for a few steps, then fine-tuned on REMEMBER and RECALL until it says them back."""
  pretrained = tmp_path_factory.mktemp("pre")
  _train(pretrained, "--config.train.steps=4", "--config.data.seq_len=96")
  path = tmp_path_factory.mktemp("data") / "memory.jsonl"
  path.write_text(json.dumps(REMEMBER) + "\n" + json.dumps(RECALL) + "\n")
  workdir = tmp_path_factory.mktemp("sft")
  _train(workdir, "--config.stage=sft", f"--config.init_from={pretrained}", f"--config.sft.mixture={path}:1",
         "--config.sft.examples=64", "--config.data.seq_len=96", "--config.data.val_fraction=0.5",
         "--config.train.steps=60", "--config.train.lr=0.02", "--config.train.warmup_steps=5",
         "--config.train.eval_every=60", "--config.train.checkpoint_every=60", "--config.train.log_every=10")
  return workdir


class _Chat:
  """`python -m llm_jax.chat` as a real process on a pseudo-terminal; say() returns what came back."""

  def __init__(self, *args):
    self.leader, follower = pty.openpty()
    self.proc = subprocess.Popen([sys.executable, "-m", "llm_jax.chat", "--max_new_tokens", "24", *args],
                                 stdin=follower, stdout=follower, stderr=follower, env=ENV, cwd=ROOT)
    os.close(follower)
    self.banner = _read_until(self.leader, "you> ", 120)

  def say(self, line: str, timeout: float = 60) -> str:
    os.write(self.leader, line.encode() + b"\n")
    return _read_until(self.leader, "you> ", timeout)

  def exit(self):
    os.write(self.leader, b"/exit\n")
    assert self.proc.wait(timeout=30) == 0

  def close(self):
    self.proc.kill()
    os.close(self.leader)


def test_a_fact_told_in_one_chat_process_is_recalled_in_the_next(memory_workdir, tmp_path):
  store = tmp_path / "memory.sqlite"
  first = _Chat("--workdir", str(memory_workdir), "--memory", str(store))
  try:
    assert f"memory {store}" in first.banner and "/memory, /forget N" in first.banner
    # Against the empty store the same recall call finds nothing: what it shows later comes from the file.
    reply = first.say("dog?")
    assert f"[recall: dog] -> {NOTHING}" in reply, reply
    assert "(conversation reset)" in first.say("/reset")
    reply = first.say("remember: my dog is Rex")
    assert "[remember: my dog is Rex] -> remembered: my dog is Rex" in reply, reply
    assert "#1 (" in first.say("/memory")
    first.exit()
  finally:
    first.close()
  with sqlite3.connect(store) as db:  # the model's note, in the file the first process wrote
    assert db.execute("SELECT id, text FROM notes").fetchall() == [(1, "my dog is Rex")]

  second = _Chat("--workdir", str(memory_workdir), "--memory", str(store))
  try:
    reply = second.say("dog?")
    assert "[recall: dog] -> 1. my dog is Rex" in reply, reply
    assert "(forgot note #1)" in second.say("/forget 1")
    assert "(no note #1;" in second.say("/forget 1")
    assert "(no notes)" in second.say("/memory")
    assert "(/memory lists the notes; /forget N deletes note #N)" in second.say("/forget one")
    second.say("/reset")
    assert f"[recall: dog] -> {NOTHING}" in second.say("dog?")  # forgotten for good
    second.exit()
  finally:
    second.close()
  assert Memory(store).notes() == []
