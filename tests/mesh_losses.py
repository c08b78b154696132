"""Trains a small model for a few steps under several meshes and prints the losses as one JSON line.

Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_losses.py

Every mesh trains the same initial parameters (random init is sharding-invariant) on the same batches
(random tokens, 3 segments per row, some padding; the targets mostly a fixed function of the input token, so
the loss falls quickly and every step's update matters), so any difference is the reduction order.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm_jax import config as config_lib, sharding  # noqa: E402
from llm_jax.training import optim, state as state_lib  # noqa: E402
from llm_jax.training.step import make_eval_step, make_train_step, next_token_loss  # noqa: E402

STEPS, BATCH, SEQ = 5, 8, 32
ALL_ROWS = list(range(BATCH))  # one process feeds every row
# Pure data parallelism is in data2_fsdp2_tensor2 and accum2_stage2_data4 (and every multi-host test);
# accumulation on one device in tests/test_train.py::test_grad_accumulation_equals_full_batch.
MESHES = {  # name -> (mesh, grad_accum[, model fields])
    "one_device": (dict(data=1), 1),
    "fsdp8": (dict(data=1, fsdp=8), 1),
    "tensor8": (dict(data=1, tensor=8), 1),
    "data2_fsdp2_tensor2": (dict(data=2, fsdp=2, tensor=2), 1),
    "stage2_data2_tensor2": (dict(data=2, stage=2, tensor=2), 1),
    "stage4_fsdp2": (dict(data=1, stage=4, fsdp=2, microbatches=4), 1),
    "accum2_stage2_data4": (dict(data=4, stage=2, microbatches=1), 2),
    # Each sequence split in 4 (model/blockwise.py: context_parallel); parameters over fsdp x context.
    "context4_fsdp2": (dict(data=1, context=4, fsdp=2), 1, dict(context_impl="allgather")),
    # K/V around the ring, on the zigzag split (each device holds chunks i and 7-i of 8).
    "context4_ring_zigzag": (dict(data=1, context=4, fsdp=2), 1, dict(context_impl="ring", context_balance="zigzag")),
    # bfloat16 compute: XLA:CPU once aborted compiling this gradient (model/blockwise.py: _gather).
    "context4_fsdp2_bf16": (dict(data=1, context=4, fsdp=2), 1, dict(context_impl="allgather", dtype="bfloat16")),
}


def config_for(mesh: dict, grad_accum: int, model: dict | None = None):
  config = config_lib.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "micro_config.py"))
  # The largest tensor axis this shape allows is 8: 16 query / 8 kv heads, d_ff 64, vocab 384.
  config.model.n_layers, config.model.n_heads, config.model.n_kv_heads, config.model.head_dim = 4, 16, 8, 4
  config.data.seq_len, config.data.batch_size, config.train.grad_accum = SEQ, BATCH, grad_accum
  config.train.warmup_steps, config.train.lr = 1, 1e-2
  for key, value in mesh.items():
    config.mesh[key] = value
  for key, value in (model or {}).items():
    config.model[key] = value
  return config_lib.validate(config)


def batches(vocab: int):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(STEPS):
    segs = np.zeros((BATCH, SEQ), np.int32)
    pos = np.zeros((BATCH, SEQ), np.int32)
    for r in range(BATCH):
      cuts = np.sort(rng.choice(np.arange(1, SEQ), size=2, replace=False))
      bounds = [0, cuts[0], cuts[1], SEQ - rng.integers(0, 4)]  # 3 segments, then 0-3 padding tokens
      for k in range(3):
        segs[r, bounds[k]:bounds[k + 1]] = k + 1
        pos[r, bounds[k]:bounds[k + 1]] = np.arange(bounds[k + 1] - bounds[k])
    inputs = rng.integers(0, vocab, (BATCH, SEQ), dtype=np.int32)
    targets = np.where(rng.random((BATCH, SEQ)) < 0.8, (7 * inputs + 3) % vocab, rng.integers(0, vocab, (BATCH, SEQ)))
    out.append({"inputs": inputs, "targets": targets.astype(np.int32), "segment_ids": segs, "positions": pos})
  return out


def run(mesh_cfg: dict, grad_accum: int, model: dict | None = None) -> dict:
  config = config_for(mesh_cfg, grad_accum, model)
  devices = jax.devices()[:int(np.prod([v for k, v in mesh_cfg.items() if k != "microbatches"]))]
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  setup = state_lib.build(config, mesh)
  state_lib.check_batch_fits_mesh(config, mesh)
  state = setup.init(jax.random.PRNGKey(0))
  batch_sharding = sharding.batch_sharding(mesh)
  step = make_train_step(next_token_loss(setup.model), setup.tx, optim.schedule(config.train), grad_accum=grad_accum,
                         state_sharding=setup.state_sharding, batch_sharding=batch_sharding)
  eval_step = make_eval_step(setup.model, jax.numpy.ones((config.model.vocab_size,)),
                             params_sharding=setup.params_sharding, batch_sharding=batch_sharding)
  losses = []
  data = batches(config.model.vocab_size)
  for i, batch in enumerate(data):
    state, metrics = step(state, sharding.rows_to_global(batch, ALL_ROWS, BATCH, mesh), jax.random.fold_in(state.rng, i))
    losses.append(float(metrics["loss"]))
  nats = float(eval_step(state.params, sharding.rows_to_global(data[0], ALL_ROWS, BATCH, mesh))["nats"])
  return {"losses": losses, "eval_nats": nats, "mesh": dict(mesh.shape),
          "microbatches": setup.model.pipeline_microbatches}


if __name__ == "__main__":
  names = sys.argv[1:] or list(MESHES)
  print(json.dumps({name: run(*MESHES[name]) for name in names}))
