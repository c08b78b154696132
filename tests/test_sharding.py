"""Sharding on 8 simulated CPU devices (a subprocess with --xla_force_host_platform_device_count=8)."""

import json
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
  # q kernel [layers, embed, heads, head_dim]: layers over stage (size 1 here), embed over fsdp (and context,
  # size 1 here), heads over tensor.
  assert "Q (2, 32, 4, 8) P('stage', ('fsdp', 'context'), 'tensor', None) (2, 16, 2, 8)" in out
  assert "MU P('stage', ('fsdp', 'context'), 'tensor', None)" in out  # Adam moments follow their parameter
  assert "EMBED P('tensor', ('fsdp', 'context'))" in out
  assert "STEP P()" in out


def test_every_mesh_trains_like_one_device():
  """5 steps under data / fsdp / tensor / context (all-gather, also in bfloat16; ring on the zigzag split) /
  mixed / pipeline meshes (and grad accumulation) == 1 device."""
  runs = json.loads(_run([sys.executable, os.path.join(ROOT, "tests", "mesh_losses.py")], devices=8))
  one = runs.pop("one_device")
  assert one["losses"][-1] < one["losses"][0] - 0.2  # it learns, so every update shows in later losses
  assert runs["stage2_data2_tensor2"]["mesh"] == {"data": 2, "stage": 2, "fsdp": 1, "context": 1, "tensor": 2}
  assert runs["context4_fsdp2"]["mesh"]["context"] == runs["context4_ring_zigzag"]["mesh"]["context"] == 4
  assert runs["stage2_data2_tensor2"]["microbatches"] == 4  # the default: 2 x stages
  assert runs["tensor8"]["mesh"]["tensor"] == 8
  for name, run in runs.items():
    rtol = 2e-2 if name.endswith("_bf16") else 1e-5  # bfloat16 products against the float32 one-device run
    np.testing.assert_allclose(run["losses"], one["losses"], rtol=rtol, err_msg=name)
    np.testing.assert_allclose(run["eval_nats"], one["eval_nats"], rtol=rtol, err_msg=name)


def test_context_parallel_ring_and_zigzag_equal_plain_attention_values_and_gradients():
  """The kernel alone on context=4, packed segments with padding at both ends of a row (queries that see no
  key): each device's chunks are masked at their true places, and dQ, dK, dV come home from the ring."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from llm_jax import sharding
      from llm_jax.model import blockwise, layers
      mesh = sharding.make_mesh({"data": 1, "context": 4}, devices=jax.devices()[:4])
      put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
      b, t, kh, g, h = 2, 32, 2, 2, 8  # zigzag: 8 chunks of 4 tokens, blocks of 2
      rng = jax.random.split(jax.random.PRNGKey(0), 4)
      q, d_out = (jax.random.normal(rng[i], (b, t, kh, g, h)) for i in (0, 3))
      k, v = (jax.random.normal(rng[i], (b, t, kh, h)) for i in (1, 2))
      seg = jnp.array([[1] * 5 + [2] * 20 + [3] * 4 + [0] * 3, [0] * 2 + [1] * 30])
      real = np.asarray(seg > 0)
      d_out = jnp.where(real[:, :, None, None, None], d_out, 0.0)  # padding queries: no loss reads them
      def value_and_grads(fn, q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out,) + vjp(d_out)
      want = value_and_grads(lambda q, k, v: layers.plain_attention(q, k, v, seg), q, k, v)
      for impl, balance in (("ring", False), ("allgather", True), ("ring", True)):
        def fn(q, k, v, impl=impl, balance=balance):
          order = (lambda x: blockwise.zigzag(x, 4)) if balance else (lambda x: x)
          with sharding.activation_rules(mesh):
            out = blockwise.context_parallel(*map(order, (q, k, v, seg)), block=2, impl=impl, balance=balance)
          return blockwise.unzigzag(out, 4) if balance else out
        got = jax.jit(lambda q, k, v: value_and_grads(fn, q, k, v))(put(q), put(k), put(v))
        got = [np.asarray(got[0])[real]] + [np.asarray(x) for x in got[1:]]
        errs = [float(np.linalg.norm(a - b) / np.linalg.norm(b))
                for a, b in zip(got, [np.asarray(want[0])[real]] + [np.asarray(x) for x in want[1:]])]
        print(impl, balance, "finite" if all(np.isfinite(x).all() for x in got) else "NaN", *errs)
  """)
  lines = _run([sys.executable, "-c", script], devices=8).splitlines()
  assert [line.split()[:3] for line in lines] == [["ring", "False", "finite"], ["allgather", "True", "finite"],
                                                   ["ring", "True", "finite"]], lines
  for line in lines:  # output, dQ, dK, dV: each within 1e-5 of its norm (float32)
    assert max(map(float, line.split()[3:])) < 1e-5, line


def test_pipelined_training_from_the_command_line_matches_one_device(tmp_path):
  common = [sys.executable, "-m", "llm_jax.train", f"--config={MICRO}", "--config.train.steps=4",
            "--config.train.eval_every=4", "--config.data.batch_size=8"]
  _run(common + [f"--workdir={tmp_path / 'one'}"], devices=1)
  _run(common + [f"--workdir={tmp_path / 'eight'}", "--config.mesh.data=2", "--config.mesh.stage=2",
                 "--config.mesh.tensor=2", "--config.mesh.microbatches=2"], devices=8)
  get = lambda w, key: [m[key] for m in metrics_lib.read(w) if key in m]  # noqa: E731
  one, eight = get(tmp_path / "one", "loss"), get(tmp_path / "eight", "loss")
  assert len(one) == 4
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  np.testing.assert_allclose(get(tmp_path / "eight", "eval/bpb"), get(tmp_path / "one", "eval/bpb"), rtol=1e-5)
  assert (tmp_path / "eight" / "samples.txt").read_text() == (tmp_path / "one" / "samples.txt").read_text()


def test_meshes_that_do_not_fit_fail_naming_the_keys():
  script = textwrap.dedent(f"""
      from llm_jax import config as config_lib, sharding
      from llm_jax.training import state
      def attempt(model=None, **mesh):
        config = config_lib.load_file({MICRO!r})
        config.data.batch_size = 8
        for k, v in (model or {{}}).items():
          config.model[k] = v
        for k, v in mesh.items():
          config.mesh[k] = v
        try:
          mesh_ = sharding.make_mesh(config.mesh)
          state.build(config, mesh_)
          state.check_batch_fits_mesh(config, mesh_)
          print("OK", mesh)
        except config_lib.ConfigError as e:
          print("ERROR", e)
      attempt(data=2, tensor=4)             # 2 kv heads cannot split 4 ways
      attempt(data=2, stage=4)              # 2 layers, 4 stages
      attempt(data=4, stage=2)              # 8 rows / 4 micro-batches = 2 rows over 4 data devices
      attempt(data=1, stage=2, fsdp=4, microbatches=3)
      attempt(dict(attention_block=3), data=2, context=4)  # 32 tokens: parts of 8, not blocks of 3
      attempt(dict(attention_block=3, context_balance="zigzag"), data=2, context=4)  # chunks of 4
  """)
  out = _run([sys.executable, "-c", script], devices=8).splitlines()
  assert out[0].startswith("ERROR parameter layers/block_0/attn/k/kernel (2, 32, 2, 8): dimension 2 of size 2 "
                           "cannot split over mesh tensor=4"), out[0]
  assert "mesh.stage=4 must divide the 2 repeats of model.layer_pattern='A'" in out[1]
  assert "2 rows per (pipeline) micro-batch" in out[2] and "data x fsdp = 4 devices" in out[2]
  assert "must divide into mesh.microbatches=3" in out[3]
  assert "data.seq_len=32 must split into mesh.context=4 equal parts, each" in out[4], out[4]
  assert "mesh.context=4 equal parts of 2 equal chunks (model.context_balance=zigzag)" in out[5], out[5]


def test_restore_onto_a_different_mesh_gives_identical_state(tmp_path):
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from llm_jax import config as config_lib, sharding
      from llm_jax.training import checkpoint, state
      config = config_lib.load_file({MICRO!r})
      config.data.batch_size = 8
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 4, 1
      saved = state.build(config, sharding.make_mesh(config.mesh)).init(jax.random.PRNGKey(0))
      mngr = checkpoint.manager({str(tmp_path)!r})
      checkpoint.save(mngr, 1, saved, None, force=True)
      mngr.wait_until_finished()
      config.mesh.data, config.mesh.stage, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1, 2
      setup = state.build(config, sharding.make_mesh(config.mesh))
      restored = checkpoint.restore(mngr, setup.abstract_state)
      q = lambda s: s.params["layers"]["block_0"]["attn"]["q"]["kernel"]
      print("SHARDS", q(saved).addressable_shards[0].data.shape, q(restored).addressable_shards[0].data.shape)
      same = all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(restored)))
      print("IDENTICAL", same)
  """)
  out = _run([sys.executable, "-c", script], devices=8)
  # q kernel [layers, embed, heads, head_dim]: saved with embed split 4 ways (fsdp), restored with the 2
  # layers split over 2 pipeline stages and the heads over 2 tensor devices
  assert "SHARDS (2, 8, 4, 8) (1, 32, 2, 8)" in out
  assert "IDENTICAL True" in out


def test_mesh_errors_name_the_problem():
  import jax  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
