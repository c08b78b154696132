"""Multi-host training through jax.distributed, on one machine: 2 processes x 4 CPU devices vs 1 x 8.

The processes talk through a coordinator on 127.0.0.1 and gloo collectives. Both runs use a mesh whose
fsdp axis spans all 8 devices, so parameters and the batch are split across the two processes. Every child
has a deadline and is killed if the test fails, so a hung coordinator cannot hang the suite.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.training import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# 5 steps of an 8-row global batch; checkpoints at 4 and 5, evals at 0 and 5 (micro_config).
COMMON = ("--config.train.steps=5", "--config.data.batch_size=8", "--config.mesh.data=1", "--config.mesh.fsdp=8")
DEADLINE_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, log, devices: int, *overrides, env=None) -> subprocess.Popen:
  base = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
  env = {**base, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  cmd = [sys.executable, "-m", "llm_jax.train", f"--config={MICRO}", f"--workdir={workdir}", *COMMON, *overrides]
  with open(log, "w", encoding="utf-8") as out:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(procs: dict, deadline_s: float = DEADLINE_S):
  """Waits for all {log path: process}; on any failure or the deadline, kills the rest and fails with logs."""
  deadline = time.time() + deadline_s
  try:
    while any(p.poll() is None for p in procs.values()):
      failed = [log for log, p in procs.items() if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        break
      time.sleep(0.2)
    bad = {log: p.poll() for log, p in procs.items() if p.poll() != 0}
    if bad:
      raise AssertionError("\n".join(f"--- {log} (exit {rc}, None = still running at the deadline):\n"
                                     + open(log, encoding="utf-8").read()[-4000:] for log, rc in bad.items()))
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
      p.wait()


def _metric(workdir, key):
  return [(m["step"], m[key]) for m in metrics_lib.read(workdir) if key in m]


def test_two_processes_train_exactly_like_one_and_leave_a_checkpoint_one_process_resumes(tmp_path):
  two, one = tmp_path / "two", tmp_path / "one"
  address = f"127.0.0.1:{_free_port()}"
  # Process 0 takes its settings as config overrides, process 1 from the environment variables.
  procs = {
      tmp_path / "two0.log": _start(two, tmp_path / "two0.log", 4, "--config.distributed.num_processes=2",
                                    "--config.distributed.process_id=0",
                                    f"--config.distributed.coordinator_address={address}"),
      tmp_path / "two1.log": _start(two, tmp_path / "two1.log", 4, env={
          "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}),
      tmp_path / "one.log": _start(one, tmp_path / "one.log", 8),
  }
  _wait(procs)

  losses_two, losses_one = _metric(two, "loss"), _metric(one, "loss")
  assert [s for s, _ in losses_two] == [1, 2, 3, 4, 5] == [s for s, _ in losses_one]
  np.testing.assert_allclose([v for _, v in losses_two], [v for _, v in losses_one], rtol=1e-5)
  bpb_two, bpb_one = _metric(two, "eval/bpb"), _metric(one, "eval/bpb")
  assert [s for s, _ in bpb_two] == [0, 5]
  np.testing.assert_allclose([v for _, v in bpb_two], [v for _, v in bpb_one], rtol=1e-5)

  # Process 0 alone reports and writes the run's files; every process wrote its part of each checkpoint.
  log1 = (tmp_path / "two1.log").read_text()
  assert "summary:" in (tmp_path / "two0.log").read_text() and "summary:" not in log1
  assert (two / "samples.txt").exists() and (two / "tokenizer" / "tokenizer.model").exists()
  for step in (4, 5):
    data = sorted(p.name for p in (two / "checkpoints" / str(step) / "data").glob("process_*"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]

  # One process resumes the 2-process checkpoint of step 4 (parameter shards and data rows from both) and
  # redoes step 5 exactly like the single-process run did.
  shutil.rmtree(two / "checkpoints" / "5")
  resume_log = tmp_path / "resume.log"
  _wait({resume_log: _start(two, resume_log, 8)})
  assert "resuming from" in resume_log.read_text()
  resumed = _metric(two, "loss")
  assert [s for s, _ in resumed] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(resumed[-1][1], losses_one[-1][1], rtol=1e-5)
  np.testing.assert_allclose(_metric(two, "eval/bpb")[-1][1], bpb_one[-1][1], rtol=1e-5)


def _distributed(**values):
  config = config_lib.base_config()
  for key, value in values.items():
    config.distributed[key] = value
  return config


def test_initialize_distributed_resolves_values_and_names_the_problem(monkeypatch):
  for name in DIST_ENV:
    monkeypatch.delenv(name, raising=False)
  assert sharding.initialize_distributed(_distributed()) is False  # one process: nothing to join
  assert sharding.initialize_distributed(_distributed(num_processes=1, process_id=0)) is False
  with pytest.raises(config_lib.ConfigError, match="needs config.distributed.coordinator_address"):
    sharding.initialize_distributed(_distributed(num_processes=2, process_id=0))
  with pytest.raises(config_lib.ConfigError, match=r"process_id=2: must be in \[0, num_processes=2\)"):
    sharding.initialize_distributed(_distributed(num_processes=2, process_id=2, coordinator_address="h:1"))
  with pytest.raises(config_lib.ConfigError, match="expected host:port"):
    sharding.initialize_distributed(_distributed(num_processes=2, process_id=0, coordinator_address="localhost"))
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  with pytest.raises(config_lib.ConfigError, match="needs config.distributed.process_id"):
    sharding.initialize_distributed(_distributed())  # count and address from the environment, no id
  monkeypatch.setenv("JAX_PROCESS_ID", "5")
  with pytest.raises(config_lib.ConfigError, match="process_id=5"):
    sharding.initialize_distributed(_distributed())
  # A config value wins over its environment variable (JAX_NUM_PROCESSES=2 here).
  with pytest.raises(config_lib.ConfigError, match=r"process_id=5: must be in \[0, num_processes=4\)"):
    sharding.initialize_distributed(_distributed(num_processes=4))
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(config_lib.ConfigError, match="JAX_NUM_PROCESSES='two'"):
    sharding.initialize_distributed(_distributed())
