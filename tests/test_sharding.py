"""Sharding on 8 simulated CPU devices (a subprocess with --xla_force_host_platform_device_count=8)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llm_jax import sharding
from llm_jax.training import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")


def _run(args, devices, **kw):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def test_parameters_are_created_sharded_by_logical_axes():
  script = textwrap.dedent(f"""
      import jax
      from llm_jax import config as config_lib, sharding
      from llm_jax.training import state
      config = config_lib.load_file({MICRO!r})
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
      mesh = sharding.make_mesh(config.mesh)
      setup = state.build(config, mesh)
      s = setup.init(jax.random.PRNGKey(0))
      q = s.params["layers"]["block_0"]["attn"]["q"]["kernel"]
      mu = s.opt_state[1][0].mu["layers"]["block_0"]["attn"]["q"]["kernel"]
      print("Q", q.shape, q.sharding.spec, q.addressable_shards[0].data.shape)
      print("MU", mu.sharding.spec)
      print("EMBED", s.params["embed"]["embedding"].sharding.spec)
      print("STEP", s.step.sharding.spec)
  """)
  out = _run([sys.executable, "-c", script], devices=8)
  # q kernel [layers, embed, heads, head_dim]: layers over stage (size 1 here), embed over fsdp, heads over tensor.
  assert "Q (2, 32, 4, 8) P('stage', 'fsdp', 'tensor', None) (2, 16, 2, 8)" in out
  assert "MU P('stage', 'fsdp', 'tensor', None)" in out  # Adam moments follow their parameter
  assert "EMBED P('tensor', 'fsdp')" in out
  assert "STEP P()" in out


def test_sharded_training_matches_single_device(tmp_path):
  common = [sys.executable, "-m", "llm_jax.train", f"--config={MICRO}", "--config.train.steps=4",
            "--config.train.eval_every=4", "--config.data.batch_size=8"]
  _run(common + [f"--workdir={tmp_path / 'one'}"], devices=1)
  _run(common + [f"--workdir={tmp_path / 'eight'}", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                 "--config.mesh.tensor=2"], devices=8)
  get = lambda w, key: [m[key] for m in metrics_lib.read(w) if key in m]  # noqa: E731
  one, eight = get(tmp_path / "one", "loss"), get(tmp_path / "eight", "loss")
  assert len(one) == 4
  np.testing.assert_allclose(eight, one, rtol=2e-5)  # same math, different reduction order
  np.testing.assert_allclose(get(tmp_path / "eight", "eval/bpb"), get(tmp_path / "one", "eval/bpb"), rtol=2e-5)


def test_restore_onto_a_different_mesh_gives_identical_state(tmp_path):
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from llm_jax import config as config_lib, sharding
      from llm_jax.training import checkpoint, state
      config = config_lib.load_file({MICRO!r})
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 4, 1
      saved = state.build(config, sharding.make_mesh(config.mesh)).init(jax.random.PRNGKey(0))
      mngr = checkpoint.manager({str(tmp_path)!r})
      checkpoint.save(mngr, 1, saved, None, force=True)
      mngr.wait_until_finished()
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 4, 1, 2
      setup = state.build(config, sharding.make_mesh(config.mesh))
      restored = checkpoint.restore(mngr, setup.abstract_state)
      q = lambda s: s.params["layers"]["block_0"]["attn"]["q"]["kernel"]
      print("SHARDS", q(saved).addressable_shards[0].data.shape, q(restored).addressable_shards[0].data.shape)
      same = all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(restored)))
      print("IDENTICAL", same)
  """)
  out = _run([sys.executable, "-c", script], devices=8)
  assert "SHARDS (2, 8, 4, 8) (2, 32, 2, 8)" in out  # q kernel: embed split 4 ways, then heads 2 ways
  assert "IDENTICAL True" in out


def test_mesh_errors_name_the_problem():
  import jax  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
