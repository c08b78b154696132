"""Measuring a policy on held-out prompts: the hidden gold judge, KL to the reference model, the proxy reward.

    evaluate = GoldEval(config, setup, mesh, tok, ref_params, reward=(rm_model, rm_params))
    evaluate(policy_params, seed=0)  # {"gold", "correct", "kl", "length", "finished", "proxy"}
    evaluate.write_samples(workdir, policy_params)  # a few answers with their gold scores -> samples.txt

`config.pref.eval_prompts` held-out problems of the `config.ppo.prompts` tasks (their validation split) are
answered at `pref.temperature` (up to `pref.max_new_tokens` tokens, no tools). Per answer:
  gold     the task's gold judge (llm_jax/data/tasks/compare.py `gold`); tasks without one: 1 if correct
  correct  the task's exact checker
  kl       sum over the answer's tokens of log pi - log ref: a sample of KL(pi || ref) for the whole answer
  proxy    the reward model's score (when one is given): what PPO maximises
and the means are returned. The prompts, and so the compiled shapes, stay the same for the whole run.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from llm_jax import sharding
from llm_jax.data import chat, tasks
from llm_jax.data.tasks import compare
from llm_jax.eval import tasks as task_eval
from llm_jax.inference.engine import Engine, Sampling, _bucket
from llm_jax.model import heads
from llm_jax.rl.preference import sequence_logps
from llm_jax.rl.rollout import read_answer

GOLD = {"compare": compare.gold}  # tasks with a gold judge of the whole answer (others: their checker)


def judge(problem, text: str, finished: bool) -> float:
  """The gold score of an answer to a task problem."""
  if problem.task in GOLD:
    return GOLD[problem.task](problem.prompt[-1]["content"], text, finished)
  return float(problem.check(text))


class GoldEval:
  """Answers the held-out prompts with given parameters and scores them (module docstring)."""

  def __init__(self, config, setup, mesh, tok, ref_params, reward=None):
    self.tok, self.markers = tok, chat.Markers.of(tok)
    self.max_new_tokens, self.temperature = config.pref.max_new_tokens, config.pref.temperature
    room = setup.model_config.max_seq_len - self.max_new_tokens
    weights = tasks.parse_weights(config.ppo.prompts)
    per_task = -(-config.pref.eval_prompts // len(weights))
    self.problems = [p for name in weights for p in task_eval.fitting_problems(name, per_task, config.seed, tok,
                                                                              room)[0]]
    if not self.problems:
      raise ValueError(f"no held-out prompt of {config.ppo.prompts!r} fits max_seq_len with pref.max_new_tokens")
    self.prompts = [chat.render_for_completion(p.prompt, tok, self.markers) for p in self.problems]
    self.length = _bucket(max(len(p) for p in self.prompts) + self.max_new_tokens, 16)
    self.replicated = sharding.replicated(mesh)
    self.ref_params = jax.device_put(ref_params, self.replicated)
    self.engine = Engine(setup.model, self.ref_params)
    self.logps = jax.jit(functools.partial(sequence_logps, setup.model))
    self.reward = None
    if reward is not None:
      rm_model, rm_params = reward
      self.rm_params = jax.device_put(rm_params, self.replicated)
      self.reward = jax.jit(lambda p, t, s: heads.last_real(rm_model.apply({"params": p}, t, None, s), s))

  def answers(self, params, seed: int) -> list[list[int]]:
    self.engine.set_params(jax.device_put(params, self.replicated))
    return self.engine.generate(self.prompts, self.max_new_tokens, Sampling(temperature=self.temperature),
                                stop_ids=[self.markers.assistant[1]], seed=seed)

  def __call__(self, params, seed: int = 0) -> dict:
    answers = self.answers(params, seed)
    n = len(answers)
    tokens = np.zeros((n, self.length), np.int32)
    segment_ids = np.zeros_like(tokens)
    weights = np.zeros((n, self.length), np.float32)
    gold, correct, finished = [], [], []
    for i, (prompt, answer, problem) in enumerate(zip(self.prompts, answers, self.problems)):
      row = prompt + answer
      tokens[i, :len(row)], segment_ids[i, :len(row)] = row, 1
      weights[i, len(prompt):len(row)] = 1
      text, done = read_answer(answer, self.tok, self.markers)
      gold.append(judge(problem, text, done))
      correct.append(float(problem.check(text)))
      finished.append(float(done))
    kl = np.asarray(self.logps(params, tokens, segment_ids, weights)) - np.asarray(
        self.logps(self.ref_params, tokens, segment_ids, weights))
    out = {"gold": float(np.mean(gold)), "correct": float(np.mean(correct)), "kl": float(np.mean(kl)),
           "length": float(np.mean([len(a) for a in answers])), "finished": float(np.mean(finished))}
    if self.reward is not None:
      out["proxy"] = float(np.mean(np.asarray(self.reward(self.rm_params, tokens, segment_ids))))
    return out

  def write_samples(self, workdir: str, params, seed: int = 0, n: int = 8, say=print):
    """Writes n held-out questions with sampled answers and their gold scores to workdir/samples.txt."""
    answers = self.answers(params, seed)[:n]
    lines = []
    for problem, answer in zip(self.problems, answers):
      text, done = read_answer(answer, self.tok, self.markers)
      lines.append(f"{problem.prompt[-1]['content']} -> {text!r} (gold {judge(problem, text, done):.2f})")
    with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    say("samples:\n  " + "\n  ".join(lines[:4]))
