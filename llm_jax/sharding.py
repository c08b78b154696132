"""Device mesh and the one table that maps logical axis names onto it.

Parameters and key activations are annotated with logical names (`batch, length, embed, heads, kv_heads,
head_dim, mlp, vocab, layers`); `RULES` says which mesh axis (`data, stage, fsdp, context, tensor`) shards each. A
logical name missing from the table, or a mesh axis already used by an earlier dimension of the same
array, means "replicated along that dimension" (flax drops the duplicate), so `batch -> (data, fsdp)` and
`embed -> (fsdp, context)` coexist: parameters are sharded along fsdp (and context) on `embed`, activations
along fsdp on `batch`. `length -> context` splits every sequence over the context axis (context
parallelism: keys and values go round the ring or are gathered, model/blockwise.py); its devices also share the
parameters, as fsdp's do, since a long-context batch often has fewer rows than devices.

The stacked layer parameters (`layers`, the leading axis of a scanned stack) are split over `stage`: with
mesh.stage=S each pipeline stage holds a contiguous run of n_layers/S layers, and with S=1 the same
parameters are simply replicated along that axis, so one checkpoint restores onto any mesh.

The mesh uses Auto axis types: shardings are given at jit boundaries (in/out shardings of init and step)
and as `nn.with_logical_constraint` hints inside, which take effect under `activation_rules(mesh)` (the
train and eval steps trace inside it); XLA's propagation does the rest. Axis order puts `data` outermost
(the slowest links, e.g. across hosts, carry only the gradient all-reduce) and `tensor` innermost (the
fastest links carry the per-layer collectives).
"""

from __future__ import annotations

import contextlib
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from llm_jax.config import ConfigError

MESH_AXES = ("data", "stage", "fsdp", "context", "tensor")
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", ("fsdp", "context")),  # parameters ZeRO-3 over fsdp and context; activations' T takes context first
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", "stage"),
)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A (data, stage, fsdp, context, tensor) mesh; one axis may be -1 to take the remaining devices; a missing
  one is 1."""
  devices = jax.devices() if devices is None else devices
  sizes = [mesh_config[a] if a in mesh_config else 1 for a in MESH_AXES]
  known = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices do not divide into {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_sharding(tree, mesh: Mesh):
  """NamedShardings for a pytree of (boxed) abstract values, from their logical axis names."""
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, T] batch split over (data, fsdp); tokens along T stay together."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), RULES))


@contextlib.contextmanager
def activation_rules(mesh: Mesh):
  """Makes the model's `nn.with_logical_constraint` annotations real (they are no-ops outside it).

  Use it inside the function being jitted: it sets the abstract mesh (allowed under jit) and RULES.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(RULES):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Multi-host runs (llm_jax/train.py, README "Multi-host").


def process_rows(mesh: Mesh, batch_size: int) -> list[int]:
  """The rows of a global [batch_size, ...] batch that this process's devices hold, sorted.

  With P processes each holding a contiguous block of the batch axes this is [i*B/P, (i+1)*B/P); deriving it
  from the sharding instead of assuming it keeps any mesh correct (rows replicated over a mesh axis that
  spans processes are fed by every process that holds them).
  """
  rows = set()
  for index in batch_sharding(mesh).addressable_devices_indices_map((batch_size, 1)).values():
    rows.update(range(batch_size)[index[0]])
  return sorted(rows)


def rows_to_global(batch: dict, rows: list[int], batch_size: int, mesh: Mesh) -> dict:
  """Global [batch_size, ...] jax.Arrays from this process's `rows` (`process_rows`) of every feature."""
  sharding = batch_sharding(mesh)
  position = {r: i for i, r in enumerate(rows)}

  def assemble(local):
    def shard(index):  # rows of this device's block; along T, its part of the sequence (mesh.context)
      return local[[position[r] for r in range(batch_size)[index[0]]]][(slice(None),) + tuple(index[1:])]
    return jax.make_array_from_callback((batch_size,) + local.shape[1:], sharding, shard)

  return {k: assemble(v) for k, v in batch.items()}


def _distributed_value(config_value, env_name: str, key: str, cast):
  """config.distributed.<key> unless unset ("" / -1), else the environment variable, else None."""
  if config_value not in ("", -1, None):
    return config_value
  raw = os.environ.get(env_name, "").strip()
  if not raw:
    return None
  try:
    return cast(raw)
  except ValueError:
    raise ConfigError(f"{env_name}={raw!r} (the fallback for config.distributed.{key}) is not valid") from None


def initialize_distributed(config) -> bool:
  """Joins this process to a multi-controller JAX job (jax.distributed); returns whether it did.

  Each value of `config.distributed` wins over its environment variable (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID). With one process (the default) nothing is initialised, so single-host
  runs never need a coordinator. With `distributed.auto`, `jax.distributed.initialize` detects whatever is
  not given (Cloud TPU, SLURM, Open MPI, Kubernetes). Must run before anything touches a JAX backend
  (jax.devices(), an array): the process count is fixed when the backend starts, and JAX refuses otherwise.
  Cross-process CPU collectives go through gloo, set before initialising: it affects only the CPU backend,
  so it is harmless on GPU/TPU hosts, and a CPU-only job needs it before its backend exists.
  """
  d = config.distributed
  address = _distributed_value(d.coordinator_address, "JAX_COORDINATOR_ADDRESS", "coordinator_address", str)
  num = _distributed_value(d.num_processes, "JAX_NUM_PROCESSES", "num_processes", int)
  pid = _distributed_value(d.process_id, "JAX_PROCESS_ID", "process_id", int)
  if num is not None and num < 1:
    raise ConfigError(f"config.distributed.num_processes={num}: must be >= 1 (or -1: JAX_NUM_PROCESSES, else 1)")
  limit = num if num is not None else (None if d.auto else 1)  # auto: the cluster knows the count
  if pid is not None and (pid < 0 or (limit is not None and pid >= limit)):
    raise ConfigError(f"config.distributed.process_id={pid}: must be in [0, num_processes={limit}) "
                      "(set per process, or via JAX_PROCESS_ID)")
  if not d.auto and (num is None or num == 1):
    return False  # a single process: nothing to join
  if jax.distributed.is_initialized():
    return True  # e.g. a later stage in the same Python process
  if not d.auto:
    if not address:
      raise ConfigError(f"config.distributed.num_processes={num} needs config.distributed.coordinator_address "
                        "(host:port where process 0 listens; or JAX_COORDINATOR_ADDRESS)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ConfigError(f"config.distributed.coordinator_address={address!r}: expected host:port, e.g. "
                        "10.0.0.1:1234")
    if pid is None:
      raise ConfigError(f"config.distributed.num_processes={num} needs config.distributed.process_id "
                        f"(0..{num - 1}, different in every process; or JAX_PROCESS_ID)")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address or None, num_processes=num, process_id=pid)
  return True
