"""Device mesh and the one table that maps logical axis names onto it.

Parameters and key activations are annotated with logical names (`batch, length, embed, heads, kv_heads,
head_dim, mlp, vocab, layers`); `RULES` says which mesh axis (`data, stage, fsdp, tensor`) shards each. A
logical name missing from the table, or a mesh axis already used by an earlier dimension of the same
array, means "replicated along that dimension" (flax drops the duplicate), so `batch -> (data, fsdp)` and
`embed -> fsdp` coexist: parameters are sharded along fsdp on `embed`, activations along fsdp on `batch`.

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

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "stage", "fsdp", "tensor")
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", "stage"),
)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A (data, stage, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices; a missing one is 1."""
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


def host_batch_to_global(batch: dict, mesh: Mesh) -> dict:
  """Assembles each host's rows of a batch into global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
