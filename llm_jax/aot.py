"""Ahead-of-time compilation of the real train step for a TPU topology, on any machine (a CPU laptop too).

    python -m llm_jax.aot --config configs/llama3_1_8b.py --topology v5p:2x2x1 [--config.mesh.fsdp=4 ...]

Answers "does this config fit, and what does a step cost?" before a TPU is rented. It builds exactly what
`python -m llm_jax.train` builds -- the mesh (`sharding.make_mesh(config.mesh, devices)`), the sharded
abstract train state (`training.state.build`), the jitted, state-donating train step
(`training.step.make_train_step` with the config's grad accumulation) -- but over *compile-only* TPU devices
from `jax.experimental.topologies.get_topology_desc`, and then lowers it with abstract arguments
(ShapeDtypeStructs carrying their shardings: no array is ever allocated) and compiles it with the TPU
compiler (libtpu, `pip install "jax[tpu]"`; no TPU needed). The compiled executable reports:

  memory  `compiled.memory_analysis()`, per device (the SPMD program every device runs): arguments (the
          state shard + the batch shard + rng), outputs, the part of the outputs aliased to donated
          arguments (the new state reuses the old state's buffers), temporaries (activations, gradients,
          collectives' buffers), and generated code. Total = arguments + outputs - aliased + temporaries +
          code, compared with the chip's HBM (`CHIPS` below). One device is one chip: v4's compile-only
          topology lists each TensorCore as a device, so it is remade in megacore mode, as jax meshes need.
  flops   per step, three ways. The model's: `ModelConfig.flops_per_token` x tokens (6 x matmul params +
          12 x layers x heads x head_dim x T per token, the PaLM convention, no rematerialisation). The
          traced step's matmuls (`traced_matmul_flops` over the step's jaxpr, scans x their length): what
          runs, so with `remat="full"` the recomputed forward pass is in it (~8N instead of 6N per token);
          blockwise attention (attention_impl=blockwise, or a context axis) loops over blocks in while
          loops whose trip counts a trace cannot know, so there it undercounts attention's FLOPs.
          XLA's: `compiled.cost_analysis()["flops"]`, which is per device (the one SPMD program; tests/
          test_aot.py checks it against the traced count / devices on an unrolled step) and counts each
          while-loop body once, so with scanned layers or grad accumulation it misses most of the step --
          printed as reported, with that warning.

The parameters keep the config's `model.param_dtype` (float32 for every preset) and AdamW's moments the same
dtype: 12 bytes per parameter of state in float32, 16 with the gradients; `model.dtype` (bfloat16 for the
Llama presets) is only the compute dtype.

The host-side pieces (tracing, `jax.eval_shape`, the PRNG key) run on the CPU backend: `main` sets
`jax_platforms=cpu` unless JAX_PLATFORMS is set, so the TPU runtime is never started; libtpu is only loaded
as a compiler. libtpu's start-up chatter on stderr (it looks for TPU chips and hosts that are not there) is
captured and shown only if making the topology fails.

Output: human-readable lines, then one line `{"aot": {...}}` of JSON with every number. Exit status 0 if the
step fits in HBM, 1 if it does not, 2 for a bad config, topology or mesh (one line naming it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from absl import app, flags, logging
from ml_collections import config_flags

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.data import pipeline
from llm_jax.training import optim
from llm_jax.training import state as state_lib
from llm_jax.training.step import make_train_step, next_token_loss

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_gib: float  # HBM per chip
  peak_bf16_tflops: float  # dense bf16 matmul peak per chip; 0 if unknown


# Keyed by `device.device_kind` of the compile-only devices libtpu creates. Per-chip figures as Google Cloud's
# TPU version pages give them (cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e, "System architecture"): v4
# 32 GiB HBM2 and 275 bf16 TFLOP/s; v5p 95 GiB HBM2e and 459; v5e 16 GiB HBM2 and 197; v6e (Trillium) 32 GiB
# HBM and 918. Chips with two TensorCores (v4, v5p) are compiled for as one "megacore" device each. The pages
# write "GB"; the table reads it as GiB. Where that matters (a config within ~7% of the limit), check it
# against the decimal reading too: 95 GB = 88.5 GiB.
CHIPS = {
    "TPU v4": Chip("v4", 32, 275),
    "TPU v5": Chip("v5p", 95, 459),
    "TPU v5 lite": Chip("v5e", 16, 197),
    "TPU v6 lite": Chip("v6e", 32, 918),
}


class AotError(config_lib.ConfigError):
  """A topology, mesh or chip problem; the message names the flag or config key."""


@dataclasses.dataclass
class Report:
  """What `compile_train_step` measured. Memory fields are bytes per device."""
  topology: str
  chip: str
  device_kind: str
  num_devices: int
  num_chips: int
  mesh: dict
  hbm_per_device: int
  hbm_source: str  # "table" or "--hbm_gib"
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  total_bytes: int
  xla_peak_bytes: int  # memory_analysis().peak_memory_in_bytes as reported (informational; `fits` uses total)
  fits: bool
  xla_flops_per_device: float  # compiled.cost_analysis()["flops"]: one device's program, loop bodies once
  traced_flops_per_step: float  # all devices: matmuls of the traced step, loops x trip count, remat included
  model_flops_per_step: float  # all devices: ModelConfig.flops_per_token x tokens (6N + attention)
  tokens_per_step: int
  num_params: int
  param_dtype: str
  compute_dtype: str
  lower_seconds: float
  compile_seconds: float
  ideal_step_seconds: float | None  # model flops / (chips x bf16 peak): 100% MFU; None for an unknown chip

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def lines(self) -> list[str]:
    def size(b):
      return f"{b / GiB:9.3f} GiB" if b >= GiB / 10 else f"{b / 2 ** 20:9.3f} MiB"
    per_device = self.model_flops_per_step / self.num_devices
    return [
        f"topology {self.topology}: {self.num_chips} {self.chip} chips ({self.device_kind!r}), "
        f"{self.num_devices} devices; mesh {self.mesh}",
        f"model: {self.num_params:,} parameters in {self.param_dtype} (AdamW moments too), compute in "
        f"{self.compute_dtype}; {self.tokens_per_step:,} tokens per step",
        f"compiled in {self.compile_seconds:.1f}s (tracing + lowering {self.lower_seconds:.1f}s)",
        "memory per device:",
        f"  arguments   {size(self.argument_bytes)}  state shard + batch shard + rng",
        f"  outputs     {size(self.output_bytes)}  new state shard + metrics",
        f"  aliased     {size(self.alias_bytes)}  outputs written into the donated state (subtracted)",
        f"  temporaries {size(self.temp_bytes)}  activations, gradients, optimizer and collective buffers",
        f"  code        {size(self.code_bytes)}",
        f"  total       {size(self.total_bytes)}  of {self.hbm_per_device / GiB:.2f} GiB HBM per device "
        f"({self.hbm_source}): {100 * self.total_bytes / self.hbm_per_device:.1f}% -> "
        f"{'FITS' if self.fits else 'DOES NOT FIT'}",
        f"flops per step per device: model (6N + attention) {per_device:.4g}; traced matmuls (remat included) "
        f"{self.traced_flops_per_step / self.num_devices:.4g}; XLA cost_analysis {self.xla_flops_per_device:.4g} "
        "(counts each loop body once: scanned layers and grad-accumulation micro-batches are undercounted)",
    ] + ([f"ideal step time at 100% of the chips' bf16 peak: {self.ideal_step_seconds:.4g}s"]
         if self.ideal_step_seconds is not None else [])


@contextlib.contextmanager
def _captured_stderr():
  """Captures file descriptor 2 (C++ logging included) into a buffer: yields a list filled on exit."""
  sys.stderr.flush()
  saved = os.dup(2)
  out: list[str] = []
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode("utf-8", "replace"))


def topology_devices(topology: str) -> list:
  """Compile-only devices of a TPU topology such as "v5p:2x2x1"; AotError if libtpu is missing or the name bad."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise AotError(f'--topology={topology}: compiling for TPU needs libtpu: pip install "jax[tpu]=={jax.__version__}" '
                   '(or pip install -e ".[tpu]")') from None
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive the same chips; compiling drives none,
  # and another JAX process on this machine (e.g. a test worker whose backend probed for a TPU) may hold it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    with _captured_stderr() as chatter:
      devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
      if len({tuple(d.coords) for d in devices}) < len(devices):  # one device per TensorCore (v4): jax meshes
        devices = topologies.get_topology_desc(  # need one per chip, as training on such chips runs
            platform="tpu", topology_name=topology, chip_config_name="megacore").devices
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    detail = "".join(chatter).strip() if not message.startswith("INVALID_ARGUMENT") else ""  # else: a bad name
    raise AotError(f"--topology={topology!r}: {message}. Expected <chip>:<chips along each dimension>, e.g. "
                   "v5p:2x2x1, v5e:4x4, v6e:2x2, v4:2x2x1; slice names count TensorCores on v4/v5p (v5p-8 = "
                   "v5p:2x2x1, v5p-128 = v5p:4x4x4, v5p-512 = v5p:8x8x4) and chips on v5e/v6e"
                   + (f"\nlibtpu said:\n{detail}" if detail else "")) from None
  return list(devices)


def _chip(devices, hbm_gib: float | None) -> tuple[Chip, int, int, str]:
  """(chip, number of chips, HBM bytes per device, where the HBM figure came from)."""
  kind = devices[0].device_kind
  chips = {tuple(d.coords) if hasattr(d, "coords") else d.id for d in devices}
  per_chip = len(devices) // len(chips)
  if hbm_gib is not None:
    if hbm_gib <= 0:
      raise AotError(f"--hbm_gib={hbm_gib}: must be positive")
    chip = CHIPS.get(kind, Chip(kind, hbm_gib, 0.0))
    chip = dataclasses.replace(chip, hbm_gib=hbm_gib)
    source = "--hbm_gib"
  elif kind in CHIPS:
    chip, source = CHIPS[kind], "table"
  else:
    raise AotError(f"device kind {kind!r} is not in llm_jax.aot.CHIPS ({sorted(CHIPS)}): pass --hbm_gib=<HBM per "
                   "chip in GiB>")
  return chip, len(chips), int(chip.hbm_gib * GiB) // per_chip, source


def traced_matmul_flops(jaxpr) -> float:
  """Matmul (dot_general, conv) FLOPs of a jaxpr, global shapes, loops counted as often as they run.

  Walks sub-jaxprs (jit, remat, custom rules, scan bodies x `length`; the costlier branch of a cond); a
  while loop's trip count is unknown here and counts once (the train step has none, unless attention is
  blockwise: model/blockwise.py loops over blocks with data-dependent bounds). Rematerialised forward
  passes appear in the backward jaxpr and are counted.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
    subs = [traced_matmul_flops(j) for j in jax_core.jaxprs_in_params(eqn.params)]
    if name == "cond":
      total += max(subs, default=0.0)
    else:
      total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
  return total


def abstract_batch(config, mesh) -> dict:
  """The train loop's batch as ShapeDtypeStructs: int32 [global batch, seq_len], rows over (data, fsdp)."""
  shape = (config.data.batch_size, config.data.seq_len)
  spec = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))
  return {k: spec for k in pipeline.FEATURES}


def compile_train_step(config, topology: str, *, hbm_gib: float | None = None, devices=None) -> Report:
  """AOT-compiles the train step of `config` for `topology` and measures it (see the module docstring).

  `devices` (compile-only devices of `topology`) skips making them again. Raises ConfigError / AotError
  naming the key or flag for a bad config, topology, chip or mesh.
  """
  config_lib.validate(config)
  devices = topology_devices(topology) if devices is None else devices
  chip, num_chips, hbm_per_device, hbm_source = _chip(devices, hbm_gib)
  try:
    mesh = sharding.make_mesh(config.mesh, devices=devices)
  except (ValueError, AssertionError, NotImplementedError) as e:  # jax's TPU mesh builder asserts too
    asked = {k: config.mesh[k] for k in sharding.MESH_AXES if k in config.mesh}
    raise AotError(f"config.mesh={asked} does not fit --topology={topology} ({len(devices)} devices): {e}") from None
  setup = state_lib.build(config, mesh)
  state_lib.check_batch_fits_mesh(config, mesh)
  step = make_train_step(next_token_loss(setup.model), setup.tx, optim.schedule(config.train),
                         grad_accum=config.train.grad_accum, state_sharding=setup.state_sharding,
                         batch_sharding=sharding.batch_sharding(mesh))
  # The loop passes jax.random.fold_in(state.rng, step): a raw key like state.rng, replicated.
  key = jax.eval_shape(lambda: jax.random.fold_in(jax.random.PRNGKey(0), 0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))

  t0 = time.perf_counter()
  traced = step.trace(setup.abstract_state, abstract_batch(config, mesh), rng)
  lowered = traced.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jaxpr_flops = traced_matmul_flops(traced.jaxpr.jaxpr)

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  arg, out, alias = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes
  temp, code = mem.temp_size_in_bytes, mem.generated_code_size_in_bytes
  total = arg + out - alias + temp + code
  tokens = config.data.batch_size * config.data.seq_len
  model_flops = setup.model_config.flops_per_token(config.data.seq_len) * tokens
  return Report(
      topology=topology, chip=chip.name, device_kind=devices[0].device_kind, num_devices=len(devices),
      num_chips=num_chips, mesh=dict(mesh.shape), hbm_per_device=hbm_per_device, hbm_source=hbm_source,
      argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp, code_bytes=code, total_bytes=total,
      xla_peak_bytes=int(getattr(mem, "peak_memory_in_bytes", 0) or 0), fits=total <= hbm_per_device,
      xla_flops_per_device=float(cost.get("flops", float("nan"))), traced_flops_per_step=jaxpr_flops,
      model_flops_per_step=float(model_flops),
      tokens_per_step=tokens, num_params=setup.model_config.num_params(), param_dtype=config.model.param_dtype,
      compute_dtype=config.model.dtype, lower_seconds=round(t1 - t0, 2), compile_seconds=round(t2 - t1, 2),
      ideal_step_seconds=model_flops / (num_chips * chip.peak_bf16_tflops * 1e12) if chip.peak_bf16_tflops else None)


def _define_flags():
  """The CLI's flags, defined only when this module runs as a program: llm_jax.train defines --config too, and
  both modules are imported into one process by the tests."""
  return (config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/NAME.py).",
                                          lock_config=True),
          flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x1 (4 chips), v5p:4x4x4, v5e:4x4, "
                              "v6e:2x2, v4:2x2x1: <chip>:<chips along each torus dimension>."),
          flags.DEFINE_float("hbm_gib", None, "HBM per chip in GiB; overrides the table (needed for chips it "
                             "does not know)."))


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _CONFIG.value is None or not _TOPOLOGY.value:
    raise app.UsageError("--config and --topology are required, e.g. --config configs/llama3_1_8b.py "
                         "--topology v5p:2x2x1")
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")  # host work on the CPU; libtpu only compiles
  try:
    report = compile_train_step(_CONFIG.value, _TOPOLOGY.value, hbm_gib=_HBM_GIB.value)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(report.lines()))
  print(json.dumps({"aot": {"config": flags.FLAGS["config"].config_filename, **report.as_dict()}}), flush=True)
  sys.exit(0 if report.fits else 1)


if __name__ == "__main__":
  _CONFIG, _TOPOLOGY, _HBM_GIB = _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
