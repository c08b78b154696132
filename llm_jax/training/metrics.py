"""Metrics: one JSON line per logged step in workdir/metrics.jsonl, TensorBoard events in workdir/tb,
and model FLOPs utilisation against the *measured* matmul peak of the device.

MFU = tokens/s x FLOPs/token / (measured peak FLOP/s per device x devices). FLOPs/token follows the PaLM
convention: 6 x (parameters used in matmuls) + 12 x layers x heads x head_dim x seq_len for attention.
The peak is the best of several timed square matmuls in the compute dtype on this device, accumulated in
float32 as the model's matmuls are (llm_jax/model/layers.py `matmul`), not a datasheet number, so CPU runs
report an MFU that means something. In bfloat16 that peak is the CPU's bf16 matrix units where it has them
(AMX: ~2 TFLOP/s on 2 cores, against ~0.3 in float32).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter

from llm_jax.model import layers


def measure_peak_flops(dtype: str = "float32", n: int | None = None, repeats: int = 5) -> float:
  """FLOP/s of one of this process's devices on an n x n matmul (best of `repeats` after a warm-up).

  A local device: in a multi-host run jax.devices()[0] belongs to process 0 and cannot take data elsewhere.
  """
  device = jax.local_devices()[0]
  n = n or (1024 if device.platform == "cpu" else 8192)
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  product = jax.jit(lambda x: layers.matmul(x, x))  # the model's own product (float32 accumulation)
  product(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    product(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


class Throughput:
  """tokens/s and MFU over the steps since the last measurement.

  `restart(step)` after pauses that are not training (evaluation, checkpoint saves, compilation), so they
  do not count against throughput. Measurements happen when a step's metrics reach the host, i.e. when
  that step has finished on the device.
  """

  def __init__(self, tokens_per_step: int, flops_per_step: float, peak_flops: float):
    self.tokens_per_step, self.flops_per_step, self.peak_flops = tokens_per_step, flops_per_step, peak_flops
    self.last = None  # (time, step)

  def restart(self, step: int):
    self.last = (time.perf_counter(), step)

  def measure(self, step: int) -> dict:
    now = time.perf_counter()
    last, self.last = self.last, (now, step)
    if last is None or step <= last[1]:
      return {}
    steps_per_sec = (step - last[1]) / (now - last[0])
    return {"tokens_per_sec": steps_per_sec * self.tokens_per_step,
            "mfu": steps_per_sec * self.flops_per_step / self.peak_flops}


class Writer:
  """Appends metrics to metrics.jsonl and TensorBoard (only on process 0)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    clean = {k: (float(v) if isinstance(v, (np.floating, np.ndarray, jax.Array, float)) else v)
             for k, v in metrics.items()}
    self.jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self.jsonl.flush()
    for k, v in clean.items():
      if isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
