"""Ahead-of-time compilation of the real train step for a TPU topology, on this CPU (llm_jax/aot.py).

The micro config is compiled for 4 compile-only v5p chips (topology v5p:2x2x1) through
`aot.compile_train_step`, the function the CLI calls. Needs libtpu (`pip install -e ".[dev]"` brings
jax[tpu]); without it every test here skips and says so.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from llm_jax import aot, config as config_lib, sharding
from llm_jax.training import state

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason='libtpu is not installed, so '
                                'nothing can be compiled for TPU: pip install "jax[tpu]" (the dev extra brings it)')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
TOPOLOGY = "v5p:2x2x1"


@pytest.fixture(scope="module")
def devices():
  return aot.topology_devices(TOPOLOGY)


def micro(**mesh):
  """The micro config with TPU-sized matrices (TPU layouts pad small dimensions; these need no padding)."""
  config = config_lib.load_file(MICRO)
  config.model.d_model, config.model.head_dim, config.model.d_ff, config.model.vocab_size = 256, 128, 512, 1024
  for key, value in mesh.items():
    config.mesh[key] = value
  return config


def test_memory_and_mesh_of_the_compiled_step(devices):
  assert len(devices) == 4 and devices[0].device_kind == "TPU v5"
  r = aot.compile_train_step(micro(data=2, fsdp=1, tensor=2), TOPOLOGY, devices=devices)
  assert r.mesh == {"data": 2, "stage": 1, "fsdp": 1, "context": 1, "tensor": 2}
  assert (r.chip, r.num_chips, r.num_devices, r.hbm_per_device) == ("v5p", 4, 4, 95 * aot.GiB)
  assert min(r.argument_bytes, r.output_bytes, r.temp_bytes, r.code_bytes) > 0
  assert 0 < r.total_bytes < r.hbm_per_device and r.fits
  assert r.total_bytes == r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes + r.code_bytes
  # The state is donated: the new state is written over the old one, so nearly all outputs alias inputs.
  state_bytes = 4 * 3 * r.num_params  # float32 params + two AdamW moments
  assert r.alias_bytes > 0.9 * r.output_bytes
  # Arguments are this device's shard: with tensor=2 (and data=2 replicating) half the state, plus the
  # replicated norm scales, the batch rows and the rng.
  assert 0.5 * state_bytes <= r.argument_bytes < 0.52 * state_bytes
  assert r.compile_seconds > 0 and r.tokens_per_step == 4 * 32


def test_flops_are_per_device_and_match_the_model(devices):
  config = micro(data=1, fsdp=4, tensor=1)
  config.model.scan_layers = False
  r = aot.compile_train_step(config, TOPOLOGY, devices=devices)
  # The traced matmuls are the model's 6N + attention (no remat here), up to the loss's few non-matmul flops.
  assert r.traced_flops_per_step == pytest.approx(r.model_flops_per_step, rel=0.02)
  # cost_analysis is one device's program: x4 devices it is the whole step (XLA also counts elementwise
  # work, ~5% at this width), not 4x the whole step.
  assert 0.95 < r.xla_flops_per_device * r.num_devices / r.traced_flops_per_step < 1.25

  # With the layers scanned XLA counts the loop body once (what aot.py's output warns about); the traced
  # count does not change. If this starts failing, XLA counts trip counts now: update aot.py's wording.
  config.model.scan_layers = True
  scanned = aot.compile_train_step(config, TOPOLOGY, devices=devices)
  assert scanned.traced_flops_per_step == r.traced_flops_per_step
  assert scanned.xla_flops_per_device < 0.8 * r.xla_flops_per_device


def test_mesh_that_does_not_match_the_topology_is_named(devices):
  with pytest.raises(aot.AotError, match=r"config\.mesh=.*'fsdp': 8.*v5p:2x2x1 \(4 devices\)"):
    aot.compile_train_step(micro(data=1, fsdp=8), TOPOLOGY, devices=devices)
  config = micro(data=2, fsdp=1, tensor=2)
  config.train.grad_accum = 4  # micro-batches of 1 row cannot split over data=2
  with pytest.raises(config_lib.ConfigError, match=r"data\.batch_size=4.*grad_accum=4.*data x fsdp = 2"):
    aot.compile_train_step(config, TOPOLOGY, devices=devices)


def test_unknown_chip_needs_hbm_flag():
  class Unknown:  # a device of a kind the table lacks
    device_kind, coords = "TPU v99", (0, 0, 0)
  with pytest.raises(aot.AotError, match="'TPU v99'.*--hbm_gib"):
    aot._chip([Unknown()], None)  # pylint: disable=protected-access
  chip, chips, hbm, source = aot._chip([Unknown()], 48.0)  # pylint: disable=protected-access
  assert (chip.name, chips, hbm, source) == ("TPU v99", 1, 48 * aot.GiB, "--hbm_gib")


@pytest.mark.parametrize("name, topology, params", [
    ("llama3_1_8b", "v5p:2x2x1", 8_030_261_248),
    ("llama3_1_70b", "v5p:4x4x4", 70_553_706_496),
    ("llama3_1_405b", "v5p:8x8x8", 405_853_388_800),
])
def test_llama_configs_validate_and_mesh_the_topology_in_their_docstring(name, topology, params):
  """The checks before compiling (compiling them takes ~30 s each on two idle cores; their docstrings say so)."""
  path = os.path.join(ROOT, "configs", f"{name}.py")
  config = config_lib.validate(config_lib.load_file(path))
  assert f"--config configs/{name}.py --topology {topology}" in open(path, encoding="utf-8").read()
  assert config_lib.model_config(config).num_params() == params and config.tokenizer.vocab_size == 128256
  assert (config.data.seq_len, config.model.dtype, config.model.param_dtype) == (8192, "bfloat16", "float32")
  mesh = sharding.make_mesh(config.mesh, devices=aot.topology_devices(topology))
  assert mesh.shape["stage"] == 1  # pipeline stages are not used here
  state.check_batch_fits_mesh(config, mesh)  # raises if a micro-batch does not split over data x fsdp


def test_pipeline_mesh_compiles_with_each_stage_holding_its_layers(devices):
  """stage=2 splits the layer stack: the per-device state shrinks by the layers' share, as with fsdp."""
  flat = aot.compile_train_step(micro(data=4), TOPOLOGY, devices=devices)
  piped = aot.compile_train_step(micro(data=2, stage=2, microbatches=2), TOPOLOGY, devices=devices)
  assert piped.mesh == {"data": 2, "stage": 2, "fsdp": 1, "context": 1, "tensor": 1} and piped.fits
  config = config_lib.model_config(micro())
  layer_bytes = 12 * (config.num_params() - 2 * config.vocab_size * config.d_model - config.d_model)
  assert piped.argument_bytes == pytest.approx(flat.argument_bytes - layer_bytes / 2, rel=0.01)


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("JAX_PLATFORMS", None)  # the CLI chooses the CPU for host work itself
  return subprocess.run([sys.executable, "-m", "llm_jax.aot", f"--config={MICRO}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_prints_lines_and_one_json_line():
  proc = _cli(f"--topology={TOPOLOGY}", "--config.mesh.fsdp=4", "--config.mesh.data=1")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.strip().splitlines()
  report = json.loads(lines[-1])["aot"]
  assert report["mesh"] == {"data": 1, "stage": 1, "fsdp": 4, "context": 1, "tensor": 1} and report["fits"]
  assert report["total_bytes"] > 0 and report["xla_flops_per_device"] > 0 and report["config"] == MICRO
  assert any(line.strip().startswith("total") and "FITS" in line for line in lines)
  assert "Traceback" not in proc.stderr and "libtpu_lockfile" not in proc.stderr


@pytest.mark.parametrize("args, expected", [
    ((f"--topology={TOPOLOGY}", "--config.mesh.fsdp=3", "--config.mesh.data=1"), ("config.mesh=", "4 devices")),
    (("--topology=v5p-8",), ("--topology='v5p-8'", "v5p:2x2x1")),  # a slice name, not a topology
    ((f"--topology={TOPOLOGY}", "--config.mesh.fdsp=4"), ("mesh.fdsp", "'mesh.fsdp'")),
])
def test_cli_errors_name_the_problem(args, expected):
  proc = _cli(*args)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert all(e in proc.stderr for e in expected) and "Traceback" not in proc.stderr, proc.stderr
