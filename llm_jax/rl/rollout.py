"""Rollouts for RL: sample answers with the assistant (tools run on the host), score them with the tasks'
exact checkers, turn them into training rows, and measure pass@k on held-out problems.

    answers = rollout(assistant, problems, group=8, max_new_tokens=48, sampling=Sampling(1.0), seed=0)
    batch = make_batch(answers, advantages)          # numpy [B, T] rows; weights 1 on sampled tokens only
    evaluate_policy(assistant, ["arithmetic"], problems=100, samples=8, sampling=..., max_new_tokens=48)

Sampling runs the jitted decode loop of llm_jax/inference/engine.py through llm_jax/inference/assistant.py;
the tool outputs the host forces into an answer are not the policy's and get weight 0 (`written_mask`).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from llm_jax.data import chat, tasks
from llm_jax.eval import tasks as task_eval
from llm_jax.inference.assistant import Assistant
from llm_jax.inference.engine import Sampling, _bucket


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are right (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
  if k > n:
    raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))



def overlong_penalty(length: int, max_new_tokens: int, buffer: int) -> float:
  """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer tokens, then linear down to -1 at
  max_new_tokens (an answer cut off there gets -1); buffer 0 turns it off."""
  if buffer <= 0:
    return 0.0
  return -min(max(length - (max_new_tokens - buffer), 0) / buffer, 1.0)


def written_mask(tokens: Sequence[int], markers: chat.Markers) -> list[int]:
  """1 for each token of an assistant turn the model sampled, 0 for the tool outputs the host forced in
  (<|tool_output_start|> ... <|tool_output_end|> right after a <|tool_call_end|>, where the model stops)."""
  mask, forced = [], False
  for i, t in enumerate(tokens):
    if not forced and t == markers.tool_output[0] and i and tokens[i - 1] == markers.tool_call[1]:
      forced = True
    mask.append(0 if forced else 1)
    if forced and t == markers.tool_output[1]:
      forced = False
  return mask


def read_answer(tokens: Sequence[int], tokenizer, markers: chat.Markers) -> tuple[str, bool]:
  """(the final text of an assistant turn's tokens, whether it ended with <|assistant_end|>); decode padding
  (negative ids, NO_TOKEN) is dropped first."""
  tokens = [int(t) for t in tokens if t >= 0]
  return (chat.final_text(chat.parse_assistant(tokens, tokenizer, markers)),
          bool(tokens) and tokens[-1] == markers.assistant[1])


def draw_problems(weights: dict[str, float], n: int, rng: random.Random, fits=lambda problem: True) -> list:
  """n training problems of the weighted tasks whose prompts `fits` (drawn again otherwise; ValueError when
  most do not)."""
  names, out, tries = list(weights), [], 0
  while len(out) < n:
    tries += 1
    if tries > 10 * n + 10:
      raise ValueError(f"{tries - len(out)} of {tries} problems drawn did not fit")
    problem = tasks.TASKS[rng.choices(names, [weights[k] for k in names])[0]](rng, "train")
    if fits(problem):
      out.append(problem)
  return out


def rollout(assistant: Assistant, problems: Sequence, group: int, *, max_new_tokens: int, sampling: Sampling,
            seed: int, format_reward: float = 0.0, overlong_buffer: int = 0) -> list[dict]:
  """`group` answers to each problem: [{"prompt", "tokens", "mask", "reward", "correct", "finished"}], the
  answers to problem i at [i * group, (i + 1) * group)."""
  tok, m = assistant.tokenizer, assistant.markers
  prompts = [chat.render_for_completion(p.prompt, tok, m) for p in problems]
  rows = [prompt for prompt in prompts for _ in range(group)]
  for tokens in assistant.run(rows, max_new_tokens, sampling, seed):
    pass
  out = []
  for i, row in enumerate(tokens):
    problem = problems[i // group]
    mask = written_mask(row, m)
    text, finished = read_answer(row, tok, m)
    correct = problem.check(text)
    reward = (float(correct) + format_reward * finished
              + overlong_penalty(sum(mask), max_new_tokens, overlong_buffer) * (overlong_buffer > 0))
    out.append({"prompt": rows[i], "tokens": row, "mask": mask, "reward": reward, "correct": correct,
                "finished": finished})
  return out


def make_batch(answers: Sequence[dict], advantages: Sequence[float], seq_multiple: int = 64) -> dict:
  """Numpy training rows: prompt + answer as inputs/targets, weights 1 on the answer's sampled tokens."""
  seqs = [a["prompt"] + a["tokens"] for a in answers]
  length = _bucket(max(len(s) for s in seqs) - 1, seq_multiple)
  n = len(seqs)
  batch = {k: np.zeros((n, length), np.int32) for k in ("inputs", "targets", "positions", "segment_ids")}
  batch["weights"] = np.zeros((n, length), np.float32)
  for i, (seq, answer) in enumerate(zip(seqs, answers)):
    t = len(seq) - 1
    batch["inputs"][i, :t], batch["targets"][i, :t] = seq[:-1], seq[1:]
    batch["positions"][i, :t], batch["segment_ids"][i, :t] = np.arange(t), 1
    start = len(answer["prompt"]) - 1  # the target index of the answer's first token
    batch["weights"][i, start:start + len(answer["tokens"])] = answer["mask"]
  # Per token (each of an answer's tokens gets its answer's advantage): every feature is [B, T], sharded alike.
  batch["advantages"] = np.repeat(np.asarray(advantages, np.float32)[:, None], length, axis=1)
  return batch


def evaluate_policy(assistant: Assistant, names: Sequence[str], problems: int, samples: int, *, sampling: Sampling,
             max_new_tokens: int, seed: int = 0, rows_per_call: int = 256) -> dict:
  """{"<task>/greedy", "<task>/pass@k" for k = 1, 2, 4, ... <= samples, "<task>/length"} on held-out problems
  (the tasks' validation split: eval.tasks.problems_of); problems whose prompt leaves fewer than max_new_tokens
  of the model's max_seq_len are counted as "<task>/too_long"."""
  out = {}
  room = assistant.engine.model.cfg.max_seq_len - max_new_tokens
  for name in names:
    batch, too_long = task_eval.fitting_problems(name, problems, seed, assistant.tokenizer, room)
    if too_long:  # prompts too long for the model are counted, not run
      out[f"{name}/too_long"] = too_long
    if not batch:
      continue
    greedy = rollout(assistant, batch, 1, max_new_tokens=max_new_tokens, sampling=Sampling(), seed=seed)
    out[f"{name}/greedy"] = float(np.mean([a["correct"] for a in greedy]))
    per_call = max(1, rows_per_call // samples)
    sampled = []
    for i in range(0, len(batch), per_call):
      sampled += rollout(assistant, batch[i:i + per_call], samples, max_new_tokens=max_new_tokens,
                         sampling=sampling, seed=seed + 1 + i)
    right = np.asarray([a["correct"] for a in sampled]).reshape(len(batch), samples).sum(axis=1)
    k = 1
    while k <= samples:
      out[f"{name}/pass@{k}"] = float(np.mean([pass_at_k(samples, int(c), k) for c in right]))
      k *= 2
    out[f"{name}/length"] = float(np.mean([sum(a["mask"]) for a in sampled]))
  return out
