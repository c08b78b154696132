"""End-to-end training: CLI overrides, config errors, determinism, resume after SIGKILL, grad accumulation."""

import json
import fcntl
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax import config as config_lib
from llm_jax.model import ModelConfig, Transformer
from llm_jax.training import metrics as metrics_lib
from llm_jax.training.step import TrainState, next_token_loss, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")


def run_train(workdir, *overrides, check=True, wait=True):
  cmd = [sys.executable, "-m", "llm_jax.train", f"--config={MICRO}", f"--workdir={workdir}", *overrides]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  if check and proc.returncode != 0:
    raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def train_losses(workdir):
  return [(m["step"], m["loss"]) for m in metrics_lib.read(workdir) if "loss" in m]


def test_steps_override_runs_exactly_that_many_steps_and_learns(tmp_path):
  proc = run_train(tmp_path / "run", "--config.train.steps=3", "--config.train.eval_every=3")
  losses = train_losses(tmp_path / "run")
  assert [s for s, _ in losses] == [1, 2, 3]
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["train"]["steps"] == 3
  assert (tmp_path / "run" / "samples.txt").exists() and (tmp_path / "run" / "tokenizer" / "tokenizer.model").exists()
  evals = [m for m in metrics_lib.read(tmp_path / "run") if "eval/bpb" in m]
  assert [m["step"] for m in evals] == [0, 3]
  assert "summary:" in proc.stdout + proc.stderr
  report = (tmp_path / "run" / "report.md").read_text()  # llm_jax/eval/report.py, written at the end of the run
  assert f"report: {tmp_path / 'run' / 'report.md'}" in proc.stdout + proc.stderr
  assert "- stage: pretrain" in report and "- steps: 3" in report and "- wall time: n/a" not in report
  assert f"| loss | {losses[0][1]:.4g} (1) | {losses[-1][1]:.4g} (3) |" in report


def test_unknown_override_key_names_the_key(tmp_path):
  proc = run_train(tmp_path / "run", "--config.train.stepz=3", check=False)
  assert proc.returncode != 0
  assert "train.stepz" in proc.stderr and "train.steps" in proc.stderr  # names it and suggests the fix
  assert "Traceback" not in proc.stderr


def test_a_workdir_in_use_by_another_run_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(workdir / ".lock", "a+", encoding="utf-8") as held:  # what a running run holds
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242")
    held.flush()
    proc = run_train(workdir, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"{workdir} is in use by another run (pid 4242)" in proc.stderr
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()


def test_bad_value_names_key_and_value(tmp_path):
  proc = run_train(tmp_path / "run", "--config.model.n_kv_heads=3", check=False)
  assert proc.returncode == 2
  assert "model.n_kv_heads=3" in proc.stderr and "Traceback" not in proc.stderr


def test_config_validation_and_unknown_keys_in_python():
  c = config_lib.base_config()
  with pytest.raises(AttributeError, match="d_modle"):
    c.model.d_modle = 3  # locked: a typo in a config file fails
  assert config_lib.unknown_key_message(c, "train.lr") is None
  assert "did you mean 'train.lr'" in config_lib.unknown_key_message(c, "train.lrr")
  assert "unknown config key 'bogus'" in config_lib.unknown_key_message(c, "bogus")
  assert config_lib.override(c, {"train.lr": 0.5, "ppo.reward_model": "runs/rm", "seed": 7}) is c
  assert (c.train.lr, c.ppo.reward_model, c.seed) == (0.5, "runs/rm", 7)
  with pytest.raises(config_lib.ConfigError, match="did you mean 'train.lr'"):
    config_lib.override(c, {"train.lrr": 1.0})
  c.train.steps = 0
  with pytest.raises(config_lib.ConfigError, match=r"train\.steps=0"):
    config_lib.validate(c)


def test_same_seed_same_losses_and_finished_workdir_is_left_alone(tmp_path):
  run_train(tmp_path / "a")
  run_train(tmp_path / "b")
  a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
  assert len(a) == 12 and a == b  # bitwise: same floats in the JSON
  before = (tmp_path / "a" / "metrics.jsonl").read_text()
  proc = run_train(tmp_path / "a")
  assert "run complete" in proc.stdout + proc.stderr
  assert (tmp_path / "a" / "metrics.jsonl").read_text() == before
  # Raising train.steps continues from the checkpoint instead of starting over.
  run_train(tmp_path / "a", "--config.train.steps=14")
  steps = [s for s, _ in train_losses(tmp_path / "a")]
  assert steps == list(range(1, 15))


def test_resume_with_a_different_model_shape_fails_clearly(tmp_path):
  run_train(tmp_path / "run", "--config.train.steps=2")
  proc = run_train(tmp_path / "run", "--config.model.d_model=48", check=False)
  assert proc.returncode == 2
  assert "model.d_model: saved 32, now 48" in proc.stderr and "--workdir" in proc.stderr


def test_a_workdir_saved_before_a_model_field_existed_still_resumes(tmp_path):
  run_train(tmp_path / "run", "--config.train.steps=2")
  path = tmp_path / "run" / "config.json"
  saved = json.loads(path.read_text())
  del saved["model"]["quant"]  # as written before ModelConfig.quant was added (its default, "none", was meant)
  path.write_text(json.dumps(saved))
  out = run_train(tmp_path / "run", "--config.train.steps=3")
  assert "resuming from" in out.stdout + out.stderr
  assert max(m["step"] for m in metrics_lib.read(tmp_path / "run")) == 3


def test_an_sft_workdir_saved_before_lora_plus_resumes_as_plain_lora(tmp_path):
  from llm_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.stage, config.init_from, config.lora.rank = "sft", "runs/tiny", 8
  saved = json.loads(config_lib.to_json(config))
  del saved["lora"]["b_lr_ratio"]  # as written before LoRA+ existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  train_lib.check_resumable(str(tmp_path), config)  # the default, 1: the same run
  config.lora.b_lr_ratio = 16.0
  with pytest.raises(config_lib.ConfigError, match="lora.b_lr_ratio: saved 1.0, now 16.0"):
    train_lib.check_resumable(str(tmp_path), config)


def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
  steps = ["--config.train.steps=300", "--config.train.checkpoint_every=25", "--config.train.eval_every=100",
           "--config.train.log_every=1"]
  run_train(tmp_path / "straight", *steps)
  proc = run_train(tmp_path / "killed", *steps, wait=False)
  ckpt_dir = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
    if done and 75 <= max(done) < 300:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit())
  assert killed_at < 300
  out = run_train(tmp_path / "killed", *steps)
  assert "resuming from" in out.stdout + out.stderr
  straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "killed")
  assert [s for s, _ in resumed] == list(range(1, 301))  # no step lost or logged twice
  assert resumed == straight  # every loss, including the final one, bit for bit
  evals = lambda w: [(m["step"], m["eval/bpb"]) for m in metrics_lib.read(w) if "eval/bpb" in m]  # noqa: E731
  assert evals(tmp_path / "killed") == evals(tmp_path / "straight")


def test_grad_accumulation_equals_full_batch():
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32,
                    max_seq_len=8)
  model = Transformer(cfg)
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tx = optax.sgd(0.1)
  rng = np.random.default_rng(0)
  seg = np.ones((4, 8), np.int32)
  seg[1, 5:] = 0  # uneven token counts per micro-batch: the mean must be over all tokens, not per micro-batch
  batch = {"inputs": rng.integers(0, 64, (4, 8)), "targets": rng.integers(0, 64, (4, 8)), "segment_ids": seg,
           "positions": np.tile(np.arange(8), (4, 1))}
  batch = jax.tree_util.tree_map(jnp.asarray, batch)
  outs = []
  for accum in (1, 2, 4):
    state = TrainState.create(params, tx, jax.random.PRNGKey(0))
    new_state, m = train_step(state, batch, jax.random.PRNGKey(1), loss_fn=next_token_loss(model), tx=tx,
                              lr_fn=lambda s: 0.1, grad_accum=accum)
    outs.append((new_state.params, float(m["loss"]), float(m["grad_norm"])))
  for params_k, loss_k, norm_k in outs[1:]:
    assert loss_k == pytest.approx(outs[0][1], rel=1e-6) and norm_k == pytest.approx(outs[0][2], rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(params_k), jax.tree_util.tree_leaves(outs[0][0])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bench_train_with_the_hf_peer():
  """`python -m llm_jax.bench train --peer hf`: the step's figures and the peer's, one JSON line; the MFU is
  the trainer's FLOP count over the measured peak."""
  proc = subprocess.run([sys.executable, "-m", "llm_jax.bench", "train", f"--config={MICRO}", "--steps=2",
                         "--repeats=1", "--peer=hf"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=600, check=True)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  config = config_lib.load_file(MICRO)
  tokens = config.data.batch_size * config.data.seq_len
  assert result["tokens_per_sec"] == pytest.approx(tokens / (result["step_ms"] / 1e3), rel=1e-6)
  flops = config_lib.model_config(config).flops_per_token(config.data.seq_len) * result["tokens_per_sec"]
  assert result["mfu"] == pytest.approx(flops / result["peak_flops"], rel=1e-6) and 0 < result["mfu"] < 1
  assert result["peer_tokens_per_sec"] > 0 and result["step_memory_mb"] > 0 and result["compile_s"] > 0
  assert result["ratio_tokens_per_sec_vs_peer"] == pytest.approx(
      result["tokens_per_sec"] / result["peer_tokens_per_sec"])


_REUSE_PROBE = """
import ctypes, resource
from llm_jax.training import host
applied = host.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def touch(n=256 << 20):  # a block the size of one of XLA:CPU's step temporaries, written and freed
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (training/host.py)")
def test_keep_freed_memory_reuses_a_freed_block_without_page_faults():
  """training/host.py: after keep_freed_memory() a freed 256 MB block is written again without new page faults;
  with LLM_JAX_HOST_MALLOC=system glibc unmaps it and every page faults again (65,536 of them)."""
  faults = {}
  for setting in ("", "system"):
    out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT, "LLM_JAX_HOST_MALLOC": setting}).stdout.split()
    faults[setting] = (out[0], int(out[1]))
  assert faults[""][0] == "True" and faults[""][1] < 1000
  assert faults["system"][0] == "False" and faults["system"][1] > 30000
