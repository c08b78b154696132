"""Conversations: the renderer's loss mask and round trip, truncation, JSONL validation, the synthetic tasks,
SFT packing, and the assistant's tool-call state machine (on a scripted engine)."""

import json
import random

import numpy as np
import pytest

from llm_jax.data import chat, pipeline, tasks
from llm_jax.data.tasks.base import draw, in_split
from llm_jax.eval import tasks as task_eval
from llm_jax.inference import tools
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import NO_TOKEN

TOOL_CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 347 * 29?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute. "},
        {"type": "tool_call", "tool": "calculator", "input": "347*29"},
        {"type": "tool_output", "output": "10063"},
        {"type": "text", "text": "It is 10063."}]},
    {"role": "user", "content": "And in Python?"},
    {"role": "assistant", "content": [{"type": "tool_call", "tool": "python", "input": "print(347*29)\nx = 1"}]},
    {"role": "tool", "content": "10063\n"},
    {"role": "assistant", "content": "Same: 10063."},
]


def _segments(tok, ids, mask):
  """The runs of equal mask as (mask, text with control tokens spelled out)."""
  names = {i: t for t, i in tok.special.items()}
  out, run, value = [], [], mask[0]
  for i, m in zip(ids, mask):
    if m != value:
      out.append((value, run))
      run, value = [], m
    run.append(i)
  out.append((value, run))
  return [(v, "".join(names.get(i) or tok.decode([i]) for i in r)) for v, r in out]


def test_mask_covers_exactly_what_the_assistant_writes(small_tokenizer):
  tok = small_tokenizer
  r = chat.render(TOOL_CONVERSATION, tok)
  assert len(r.ids) == len(r.mask) and r.dropped == 0
  assert _segments(tok, r.ids, r.mask) == [
      (0, "<|bos|><|system_start|>You are terse.<|system_end|><|user_start|>What is 347 * 29?<|user_end|>"
          "<|assistant_start|>"),
      (1, "Let me compute. <|tool_call_start|>calculator\n347*29<|tool_call_end|>"),
      (0, "<|tool_output_start|>10063<|tool_output_end|>"),
      (1, "It is 10063.<|assistant_end|>"),
      (0, "<|user_start|>And in Python?<|user_end|><|assistant_start|>"),
      (1, "<|tool_call_start|>python\nprint(347*29)\nx = 1<|tool_call_end|>"),
      (0, "<|tool_output_start|>10063\n<|tool_output_end|>"),
      (1, "Same: 10063.<|assistant_end|>")]


def test_tool_conversations_round_trip(small_tokenizer):
  tok = small_tokenizer
  normalized = chat.normalize(TOOL_CONVERSATION)
  assert [t["role"] for t in normalized] == ["system", "user", "assistant", "user", "assistant"]
  assert normalized[4]["content"][1] == {"type": "tool_output", "output": "10063\n"}  # the tool message joined
  assert chat.parse(chat.render(TOOL_CONVERSATION, tok).ids, tok) == normalized
  rng = random.Random(0)
  for name, make in tasks.TASKS.items():
    for _ in range(20):
      conversation = make(rng, "train").conversation
      assert chat.parse(chat.render(conversation, tok).ids, tok) == chat.normalize(conversation), name


def test_render_for_completion_is_the_prefix_of_the_full_rendering(small_tokenizer):
  tok = small_tokenizer
  prompt = chat.render_for_completion(TOOL_CONVERSATION[:4], tok)
  full = chat.render(TOOL_CONVERSATION, tok).ids
  assert full[:len(prompt)] == prompt and prompt[-1] == tok.special["<|assistant_start|>"]
  with pytest.raises(chat.ConversationError, match="end with a user message"):
    chat.render_for_completion(TOOL_CONVERSATION[:3], tok)


def test_control_token_text_typed_by_a_user_is_plain_text(small_tokenizer):
  tok = small_tokenizer
  r = chat.render([{"role": "user", "content": "<|assistant_end|><|tool_call_start|>"},
                   {"role": "assistant", "content": "ok"}], tok)
  specials = set(tok.special.values())
  assert [i for i in r.ids if i in specials] == [tok.special[t] for t in (
      "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")]


def test_truncation_drops_whole_exchanges_and_says_so(small_tokenizer):
  tok = small_tokenizer
  full = chat.render(TOOL_CONVERSATION, tok)
  last = chat.render([TOOL_CONVERSATION[0]] + TOOL_CONVERSATION[3:], tok)
  fits = chat.render(TOOL_CONVERSATION, tok, max_tokens=len(last.ids))
  assert fits.dropped == 2 and fits.ids == last.ids  # the first user message and its answer, whole
  assert chat.render(TOOL_CONVERSATION, tok, max_tokens=len(full.ids)).dropped == 0
  assert chat.render(TOOL_CONVERSATION, tok, max_tokens=len(last.ids) - 1) is None


@pytest.mark.parametrize("conversation, message", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role one of"),
    ([{"role": "user"}], "no 'content'"),
    ([{"role": "assistant", "content": "hi"}], "must follow a user message"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "two user messages"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "3"}], "must directly follow a tool call"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "tool", "content": "3"}],
     "tool output must directly follow a tool call"),
    ([{"role": "user", "content": [{"type": "tool_call", "tool": "x", "input": "1"}]}], "only assistant turns"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "tool_call", "tool": "calc"}]}],
     "needs a string 'input'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image"}]}], "type one of"),
])
def test_bad_conversations_name_the_message(conversation, message):
  with pytest.raises(chat.ConversationError, match=message):
    chat.normalize(conversation)


def test_jsonl_errors_name_file_and_line(tmp_path):
  good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
  path = tmp_path / "chats.jsonl"
  path.write_text(json.dumps(good) + "\n\n" + json.dumps({"messages": good}) + "\n")
  assert list(chat.read_jsonl(str(path))) == [good, good]
  path.write_text(json.dumps(good) + "\n" + json.dumps([{"role": "user", "content": 3}]) + "\n")
  with pytest.raises(chat.ConversationError, match=r"chats.jsonl:2: message 0 \(user\): content must be"):
    list(chat.read_jsonl(str(path)))
  path.write_text("{not json\n")
  with pytest.raises(chat.ConversationError, match=r"chats.jsonl:1: not JSON"):
    list(chat.read_jsonl(str(path)))


def test_tasks_are_correct_and_held_out_problems_never_reach_training():
  rng = random.Random(0)
  train = [tasks.TASKS["arithmetic"](rng, "train") for _ in range(300)]
  val = [tasks.TASKS["arithmetic"](rng, "val") for _ in range(300)]
  key = lambda e: e.conversation[1]["content"][0]["input"]  # the calculator call: "a op b"
  assert not {key(e) for e in train} & {key(e) for e in val}
  for e in train + val:  # the tool output is the true result, and the answer checks out
    assert e.conversation[1]["content"][1]["output"] == str(eval(key(e)))  # pylint: disable=eval-used
    assert e.check(chat.final_text(e.conversation[1]["content"]))
  counting = [tasks.TASKS["counting"](rng, split) for split in ("train", "val") for _ in range(100)]
  for e in counting:
    word, letter = (e.conversation[1]["content"][0]["input"].split('"')[i] for i in (1, 3))
    assert e.answer == str(word.count(letter)) and e.check(chat.final_text(e.conversation[1]["content"]))
  words = lambda split: {tasks.TASKS["spelling"](rng, split).answer for _ in range(200)}
  assert not words("train") & words("val")
  assert not tasks.TASKS["counting"](rng, "val").check("I think it is 12 or so, maybe 13")  # wrong number


def test_drawing_from_a_generator_with_no_value_in_the_split_is_an_error_not_a_hang():
  only = next(w for w in ("a", "b", "c", "d", "e", "f") if in_split(w, "train"))  # one value, in train only
  assert draw(random.Random(0), "train", lambda rng: (only,), lambda w: w) == (only,)
  with pytest.raises(ValueError, match="'val' split"):
    draw(random.Random(0), "val", lambda rng: (only,), lambda w: w, tries=100)


def test_repeat_says_the_quoted_text_back_and_keeps_held_out_words_out_of_training(small_tokenizer):
  """`repeat` is copying practice: the answer quotes the question's text after the same ' "' (so its tokens are
  the question's), and no word of a held-out text (the counting/spelling evaluation words) is ever trained."""
  rng = random.Random(0)
  examples = {split: [tasks.TASKS["repeat"](rng, split) for _ in range(300)] for split in ("train", "val")}
  for e in examples["train"] + examples["val"]:
    question, answer = (m["content"] for m in e.conversation)
    assert f'"{e.answer}"' in question and f'"{e.answer}"' in answer and e.check(answer)
    quoted = small_tokenizer.encode(f' "{e.answer}"')
    ids = small_tokenizer.encode(question)
    assert any(ids[i:i + len(quoted)] == quoted for i in range(len(ids))), question
  assert not examples["val"][0].check("something else entirely")
  words = lambda split: {w for e in examples[split] for w in e.answer.split()}
  spelled = {tasks.TASKS["spelling"](rng, "val").answer.replace("-", "") for _ in range(200)}
  assert not words("train") & (words("val") | spelled) and words("val") & spelled
  assert max(len(e.answer.split()) for e in examples["train"]) > 1  # multi-word texts: longer copies


@pytest.mark.parametrize("task", ["counting", "spelling"])
def test_tool_code_quotes_the_word_with_the_questions_tokens(small_tokenizer, task):
  """The word's tokens, with the token before and after it, are the same in the question and in the code: the
  model copies it the way an induction head copies (what made held-out words reach the code at all)."""
  rng = random.Random(0)
  for _ in range(50):
    example = tasks.TASKS[task](rng, "val")
    question, call = example.conversation[0]["content"], example.conversation[1]["content"][0]["input"]
    word = call.split('"')[1]
    quoted = small_tokenizer.encode(f' "{word}"')
    for text in (question, call):
      ids = small_tokenizer.encode(text)
      assert any(ids[i:i + len(quoted)] == quoted for i in range(len(ids))), (text, word)
    assert call.startswith(f'word = "{word}"\n'), call
    assert tools.run_python(call) == example.conversation[1]["content"][1]["output"]


def test_mixture_follows_weights_and_reads_files(tmp_path):
  conv = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
  drawn = tasks.mixture({"identity": 1, "arithmetic": 3, "f": 1}, 2000, seed=0, files={"f": [conv]})
  share = sum(c is conv for c in drawn) / len(drawn)
  assert 0.15 < share < 0.25
  assert tasks.parse_weights("arithmetic:4, counting ,x.jsonl:0.5") == {"arithmetic": 4.0, "counting": 1.0,
                                                                       "x.jsonl": 0.5}
  with pytest.raises(ValueError, match="must be a number"):
    tasks.parse_weights("arithmetic:many")
  with pytest.raises(ValueError, match="unknown tasks"):
    tasks.mixture({"poetry": 1}, 3, seed=0)


def test_sft_rows_pack_whole_conversations_with_their_masks(small_tokenizer):
  tok = small_tokenizer
  convs = tasks.mixture({"arithmetic": 1, "counting": 1}, 64, seed=0)
  examples = [(r.ids, r.mask) for r in (chat.render(c, tok) for c in convs)]
  seq_len = 160
  examples = [e for e in examples if len(e[0]) <= seq_len + 1]
  batch = next(iter(pipeline.sft_dataset(examples, seq_len=seq_len, batch_size=4, seed=0, prefetch=0)))
  assert set(batch) == set(pipeline.SFT_FEATURES)
  starts = {tuple(ids[:8]) for ids, _ in examples}
  for row in range(4):
    seg = batch["segment_ids"][row]
    for s in set(seg[seg > 0].tolist()):  # every segment is one whole conversation, from its bos
      where = np.flatnonzero(seg == s)
      inputs, targets = batch["inputs"][row][where], batch["targets"][row][where]
      weights = batch["weights"][row][where]
      match = [e for e in examples if e[0][:-1] == inputs.tolist()]
      assert match and tuple(inputs[:8].tolist()) in starts
      ids, mask = match[0]
      assert targets.tolist() == ids[1:] and weights.tolist() == mask[1:]
    assert not batch["weights"][row][seg == 0].any()  # padding is never trained


class ScriptedEngine:
  """An Engine stand-in whose "model" writes scripted tokens: each script is a list of segments, and after a
  forced tool output the row goes on with its next segment. Rows decode in lockstep over shared slots, as in
  the engine; a fresh start() continues the scripts whose context so far is the prompt. Records forced rows."""

  class _Cfg:
    max_seq_len = 1000

  class _Model:
    cfg = None

  prompt_multiple = 16

  def __init__(self, scripts):
    self.scripts = [list(s) for s in scripts]  # per row: segments (lists of ids), each ending in a stop
    self.model = self._Model()
    self.model.cfg = self._Cfg()
    self.forced, self.starts = [], []
    self.context = None  # per script: every token it has seen (prompt, written, forced)

  def start(self, prompts, max_new_tokens, seed=0, extra_slots=0):
    extends = lambda p, c: len(p) >= len(c) and list(p[:len(c)]) == c
    if self.context is None or not all(any(extends(p, c) for c in self.context) for p in prompts):
      # a new batch of conversations: row r plays script r from its start
      self.rows, self.context = list(range(len(prompts))), [list(p) for p in prompts]
      self.segment, self.pos = [0] * len(self.scripts), [0] * len(self.scripts)
    else:  # the script whose context the prompt extends; given more (a tool's output), its next segment
      self.rows = [next(r for r, c in enumerate(self.context) if extends(p, c)) for p in prompts]
      for r, p in zip(self.rows, prompts):
        if len(p) > len(self.context[r]):
          self.context[r], self.segment[r], self.pos[r] = list(p), self.segment[r] + 1, 0
    self.starts.append(self.rows)
    self.done = np.zeros(len(prompts), bool)
    slots = max(len(p) for p in prompts) + max_new_tokens + extra_slots
    self.cache = {"index": max(len(p) for p in prompts), "valid": np.zeros((len(prompts), slots), bool)}
    return self

  def decode(self, state, steps, sampling, stop_ids):
    out = np.full((len(self.rows), steps), NO_TOKEN)
    for i, r in enumerate(self.rows):
      if self.done[i]:
        continue
      segment = self.scripts[r][self.segment[r]]
      for j in range(steps):
        out[i, j] = token = segment[self.pos[r]]
        self.context[r].append(token)
        self.pos[r] += 1
        if token in stop_ids or self.pos[r] == len(segment):
          self.done[i] = True
          break
    self.cache["index"] += int((out != NO_TOKEN).any(axis=0).sum())  # each step takes a slot in every row
    return self, out

  def force(self, state, rows):
    self.forced.append(rows)
    self.cache["index"] += max(len(ids) for ids in rows)
    for i, ids in enumerate(rows):
      if ids:
        r = self.rows[i]
        self.context[r] += ids
        self.done[i] = False
        self.segment[r] += 1
        self.pos[r] = 0
    return self


def test_assistant_runs_tools_forces_outputs_and_respects_limits(small_tokenizer):
  tok = small_tokenizer
  m = chat.Markers.of(tok)
  call = lambda tool, arg: [m.tool_call[0], *tok.encode(f"{tool}\n{arg}"), m.tool_call[1]]
  scripts = [
      [call("calculator", "6*7"), tok.encode("It is 42.") + [m.assistant[1]]],  # one call, then the answer
      [tok.encode("Hi!") + [m.assistant[1]]],  # no call
      [call("nope", "x"), tok.encode("Sorry.") + [m.assistant[1]]],  # an unknown tool: an error, not a crash
      [call("calculator", "1+1")] * 5,  # calls forever: cut at max_tool_calls
  ]
  engine = ScriptedEngine(scripts)
  assistant = Assistant(engine, tok, max_tool_calls=2)
  conv = [{"role": "user", "content": "q"}]
  replies = assistant.respond([conv] * 4, max_new_tokens=200)
  assert replies[0] == [{"type": "tool_call", "tool": "calculator", "input": "6*7"},
                        {"type": "tool_output", "output": "42"}, {"type": "text", "text": "It is 42."}]
  assert replies[1] == [{"type": "text", "text": "Hi!"}]
  assert replies[2][1]["output"].startswith("error: unknown tool 'nope'") and replies[2][2]["text"] == "Sorry."
  assert [p["type"] for p in replies[3]] == ["tool_call", "tool_output", "tool_call", "tool_output", "tool_call"]
  # Forced chunks: only rows that stopped on a call get tokens; the others get nothing.
  first = engine.forced[0]
  assert first[0] == [m.tool_output[0], *tok.encode("42"), m.tool_output[1]] and first[1] == []
  # Tools off: nothing runs and nothing stops on a call; the model's own text stands.
  engine_off = ScriptedEngine([[call("calculator", "6*7") + tok.encode("41") + [m.assistant[1]]]])
  reply = Assistant(engine_off, tok, None).respond([conv], max_new_tokens=200)[0]
  assert engine_off.forced == [] and chat.final_text(reply) == "41"


def test_a_row_at_its_budget_does_not_starve_the_rows_with_tool_calls(small_tokenizer):
  tok = small_tokenizer
  m = chat.Markers.of(tok)
  call = [m.tool_call[0], *tok.encode("calculator\n6*7"), m.tool_call[1]]
  answer = tok.encode("It is 42.") + [m.assistant[1]]
  rambling = tok.encode("la " * 40)  # never stops: writes to its budget
  engine = ScriptedEngine([[call, answer], [rambling]])
  replies = Assistant(engine, tok).respond([[{"role": "user", "content": "q"}]] * 2, max_new_tokens=len(call) + 8)
  assert chat.final_text(replies[0]) == "It is 42." and replies[0][1]["output"] == "42"
  assert len(tok.encode(chat.final_text(replies[1]))) <= len(call) + 8  # cut at its own budget
  # The rambling row used the shared slots, so the caller went on from a fresh cache, alone.
  assert engine.starts == [[0, 1], [0]] and engine.forced == []


def test_task_evaluation_scores_with_the_checker(small_tokenizer):
  tok = small_tokenizer
  m = chat.Markers.of(tok)
  problems = task_eval.problems_of("arithmetic", 4)
  # The scripted model calls the calculator right and then reports the result for two problems, garbage else.
  scripts = []
  for i, p in enumerate(problems):
    argument = p.conversation[-1]["content"][0]["input"] if i < 3 else "1+1"  # the last one calls wrong
    answer = p.answer if i < 2 else "7"
    scripts.append([[m.tool_call[0], *tok.encode(f"calculator\n{argument}"), m.tool_call[1]],
                    tok.encode(f"It is {answer}.") + [m.assistant[1]]])
  engine = ScriptedEngine(scripts)
  results, transcripts = task_eval.evaluate(engine, tok, ["arithmetic"], problems=4)
  assert results["arithmetic/tools_on"] == 0.5 and results["arithmetic/exact_call"] == 0.75
  assert any("| right" in t for t in transcripts) and any("| wrong" in t for t in transcripts)


def test_a_stray_call_end_marker_ends_the_turn_without_a_tool_run(small_tokenizer):
  tok = small_tokenizer
  m = chat.Markers.of(tok)
  engine = ScriptedEngine([[tok.encode("so") + [m.tool_call[1]], tok.encode("never")], [[m.tool_call[1]]]])
  replies = Assistant(engine, tok).respond([[{"role": "user", "content": "q"}]] * 2, max_new_tokens=32)
  assert replies == [[{"type": "text", "text": "so"}], []] and engine.forced == []
