"""Distillation: the loss against a hand computation, its limits, config errors, and a distill run end to end."""

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.model import ModelConfig, Transformer
from llm_jax.train import pretrain
from llm_jax.training import metrics as metrics_lib
from llm_jax.training.distill import distill_loss
from llm_jax.training.step import next_token_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")


class Bigram:
  """A stand-in model whose logits are a row of a table per input token: `apply` like a Transformer's."""

  def __init__(self, vocab_size):
    self.cfg = SimpleNamespace(vocab_size=vocab_size)

  def apply(self, variables, inputs, positions, segment_ids):
    del positions, segment_ids
    return variables["params"]["table"][inputs]


def _batch(rng, vocab, rows=2, length=5):
  seg = np.ones((rows, length), np.int32)
  seg[1, 3:] = 0  # padding: left out of the loss and the token count
  return {"inputs": jnp.asarray(rng.integers(0, vocab, (rows, length))),
          "targets": jnp.asarray(rng.integers(0, vocab, (rows, length))),
          "positions": jnp.asarray(np.tile(np.arange(length), (rows, 1))), "segment_ids": jnp.asarray(seg)}


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_equals_hand_computed_kl_plus_cross_entropy():
  vocab, tau, alpha = 5, 2.0, 0.3
  rng = np.random.default_rng(0)
  student, teacher = {"table": rng.normal(size=(vocab, vocab))}, {"table": 3 * rng.normal(size=(vocab, vocab))}
  batch = _batch(rng, vocab)
  to_f32 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t)  # noqa: E731
  total, tokens = distill_loss(Bigram(vocab), Bigram(vocab), to_f32(teacher), tau, alpha)(
      to_f32(student), batch, jax.random.PRNGKey(0))
  expected, count = 0.0, 0
  for b in range(2):
    for t in range(5):
      if batch["segment_ids"][b, t] == 0:
        continue
      x = int(batch["inputs"][b, t])
      s, te = student["table"][x], teacher["table"][x]
      p_t = np.exp(_log_softmax(te / tau))
      kl = float(np.sum(p_t * (np.log(p_t) - _log_softmax(s / tau))))
      ce = float(-_log_softmax(s)[int(batch["targets"][b, t])])
      expected += alpha * tau ** 2 * kl + (1 - alpha) * ce
      count += 1
  assert count == 8 and float(tokens) == 8.0
  assert float(total) == pytest.approx(expected, rel=1e-5)


def _tiny(vocab=64, d_model=16, seed=0):
  cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32,
                    max_seq_len=8)
  model = Transformer(cfg)
  # Random parameters of the right shapes (compiling model.init would take seconds).
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rng = np.random.default_rng(seed)
  return model, jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)


def test_alpha_zero_is_next_token_loss():
  student, student_params = _tiny()
  teacher, teacher_params = _tiny(d_model=32, seed=1)
  batch = _batch(np.random.default_rng(1), 64, rows=3, length=8)
  rng = jax.random.PRNGKey(0)
  got = jax.jit(distill_loss(student, teacher, teacher_params, tau=2.0, alpha=0.0))(student_params, batch, rng)
  want = jax.jit(next_token_loss(student))(student_params, batch, rng)
  assert float(got[1]) == float(want[1]) == 3 * 8 - 5
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)


def test_kl_term_and_its_gradient_vanish_when_student_equals_teacher():
  model, params = _tiny()
  batch = _batch(np.random.default_rng(2), 64, rows=2, length=8)
  # d/d(student, teacher params) of the summed loss, with the teacher's parameters as a traced argument.
  grad_fn = jax.jit(jax.value_and_grad(lambda p, t: distill_loss(model, model, t, 2.0, 1.0)(p, batch, None)[0],
                                       argnums=(0, 1)))
  biggest = lambda tree: max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(tree))  # noqa: E731
  loss, (grads, teacher_grads) = grad_fn(params, params)
  assert abs(float(loss)) < 1e-5 and biggest(grads) < 1e-5
  assert biggest(teacher_grads) == 0.0  # the teacher runs under stop_gradient
  # A different teacher does pull the student: the gradient is not zero for want of a connection.
  _, other = _tiny(seed=3)
  loss, (grads, teacher_grads) = grad_fn(params, other)
  assert float(loss) > 1e-3 and biggest(grads) > 1e-3 and biggest(teacher_grads) == 0.0


def test_vocab_mismatch_names_the_teacher_and_both_sizes():
  with pytest.raises(config_lib.ConfigError, match=r"distill\.teacher.*teacher's vocab_size is 512.*student's "
                                                   r"model\.vocab_size is 384"):
    distill_loss(Bigram(384), Bigram(512), {}, 2.0, 0.5)


def test_bad_distill_config_names_the_key(tmp_path):
  c = config_lib.load_file(MICRO)
  c.stage = "distill"
  with pytest.raises(config_lib.ConfigError, match=r"distill\.teacher=''"):
    config_lib.validate(c)
  c.distill.teacher = str(tmp_path / "nowhere")
  with pytest.raises(config_lib.ConfigError, match=r"distill\.teacher=.*nowhere.*not a trained llm_jax workdir"):
    config_lib.validate(c)
  c.stage = "pretrain"
  c.distill.alpha = 2
  with pytest.raises(config_lib.ConfigError, match=r"distill\.alpha=2(\.0)?: must be in \[0, 1\]"):
    config_lib.validate(c)
  c.distill.alpha, c.distill.tau = 0.5, 0.0
  with pytest.raises(config_lib.ConfigError, match=r"distill\.tau=0\.0: must be positive"):
    config_lib.validate(c)


def _micro(steps, **distill):
  c = config_lib.load_file(MICRO)
  c.train.steps, c.train.eval_every, c.train.checkpoint_every = steps, 3, 3
  c.sample.prompts = ()
  if distill:  # a student smaller than the micro teacher
    c.stage = "distill"
    c.distill.update(distill)
    c.model.d_model, c.model.n_heads, c.model.n_kv_heads = 16, 2, 1
  return c


def test_distill_stage_end_to_end_with_resume(tmp_path, capsys):
  teacher = tmp_path / "teacher"
  pretrain(_micro(6), str(teacher))
  capsys.readouterr()
  summary = pretrain(_micro(6, teacher=str(teacher), alpha=0.9), str(tmp_path / "s"))
  out = capsys.readouterr().out
  assert "teacher: " in out and summary["step"] == 6
  # The student took the teacher's tokenizer rather than training its own.
  assert (tmp_path / "s" / "tokenizer" / "tokenizer.model").read_bytes() == \
      (teacher / "tokenizer" / "tokenizer.model").read_bytes()
  records = metrics_lib.read(tmp_path / "s")
  losses = [m["loss"] for m in records if "loss" in m]
  evals = [(m["step"], m["eval/bpb"]) for m in records if "eval/bpb" in m]
  assert len(losses) == 6 and losses[-1] < losses[0]  # the mostly-KL objective goes down
  assert [s for s, _ in evals] == [0, 3, 6] and evals[-1][1] < evals[0][1]
  assert all("mfu" in m for m in records if "tokens_per_sec" in m)

  # More steps continue from the checkpoint, each step logged once.
  summary = pretrain(_micro(8, teacher=str(teacher), alpha=0.9), str(tmp_path / "s"))
  assert "resuming from" in capsys.readouterr().out and summary["step"] == 8
  assert [m["step"] for m in metrics_lib.read(tmp_path / "s") if "loss" in m] == list(range(1, 9))

  # Another teacher in the same workdir is refused, naming the key.
  shutil.copytree(teacher, tmp_path / "teacher2")
  with pytest.raises(config_lib.ConfigError, match=r"distill\.teacher: saved"):
    pretrain(_micro(10, teacher=str(tmp_path / "teacher2"), alpha=0.9), str(tmp_path / "s"))


def test_cli_distill_without_a_teacher_exits_2_naming_the_key(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "llm_jax.train", f"--config={MICRO}", f"--workdir={tmp_path / 's'}",
                         "--config.stage=distill", f"--config.distill.teacher={tmp_path / 'none'}"], cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 2 and "config.distill.teacher=" in proc.stderr and "Traceback" not in proc.stderr
