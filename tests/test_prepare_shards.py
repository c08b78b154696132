"""Data preparation over many shards: the Ray Data runner against the local one (same survivors, with
near-duplicates across shards), and resuming a run killed half-way without redoing finished shards."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from llm_jax import config as config_lib
from llm_jax.data import prepare, sources
from test_prepare import _edit, _prose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_SHARDS = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """10 JSONL shards; near and exact duplicates of documents of *other* shards, junk, an unreadable line."""
  root = tmp_path_factory.mktemp("shards")
  rng = random.Random(7)
  base = [_prose(rng, rng.randint(120, 300)) for _ in range(5 * N_SHARDS)]
  planted = {"near": 0, "exact": 0}
  for n in range(N_SHARDS):
    docs = base[5 * n:5 * n + 5]
    if n:  # copies of documents of earlier shards
      docs.append(_edit(rng, base[rng.randrange(5 * n)], 2))
      docs.append(base[rng.randrange(5 * n)])
      planted["near"] += 1
      planted["exact"] += 1
    docs.append("Buy the best watches now, click here.\n" * 20)
    lines = [json.dumps({"text": d}) for d in docs] + (["{not json"] if n == 3 else [])
    (root / f"part-{n:02d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  config = config_lib.base_config()
  config.data.source = str(root)
  return {"root": root, "config": config, "planted": planted}


@pytest.fixture(scope="module")
def local_out(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("local")
  stats = prepare.run(corpus["config"], str(out), runner="local", workers=2, progress=False, log=lambda *_: None)
  return {"out": out, "stats": stats}


def _shards(out) -> list[str]:
  return [(out / f"shard-{n:05d}.jsonl").read_text(encoding="utf-8") for n in range(N_SHARDS)]


def _kill_halfway(corpus, out, done_before_kill: int = 3) -> dict:
  """Starts the CLI (local runner, 1 worker, 1 s per shard), SIGKILLs it once `done_before_kill` shards are
  cleaned; returns {done work file: mtime}."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", prepare._DELAY_ENV: "1.0"}  # pylint: disable=protected-access
  proc = subprocess.Popen([sys.executable, "-m", "llm_jax.data.prepare", f"--config={ROOT}/configs/tiny.py",
                           f"--config.data.source={corpus['root']}", f"--out={out}", "--workers=1"],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  work = out / ".work"
  deadline = time.time() + 120
  while time.time() < deadline and len(list(work.glob("clean-*.json"))) < done_before_kill:
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = {p: p.stat().st_mtime_ns for p in work.glob("clean-*.json")}
  assert done_before_kill <= len(done) < N_SHARDS, "the run was not killed half-way"
  assert not list(out.glob("shard-*.jsonl")), "the run was killed after stage 1"
  return done


def test_local_runner_finds_duplicates_across_shards(corpus, local_out):
  reasons = local_out["stats"]["reasons"]
  assert reasons["near_duplicate"]["documents"] == corpus["planted"]["near"]
  assert reasons["exact_duplicate"]["documents"] == corpus["planted"]["exact"]
  assert local_out["stats"]["skipped"]["malformed_json"]["records"] == 1
  texts = [d["text"] for d in sources.load_documents(str(local_out["out"]))]
  assert len(texts) == 5 * N_SHARDS and len(set(texts)) == len(texts)


def test_killed_run_resumes_without_redoing_finished_shards(corpus, local_out, tmp_path):
  done = _kill_halfway(corpus, tmp_path / "out")
  stats = prepare.run(corpus["config"], str(tmp_path / "out"), runner="local", workers=2, progress=False,
                      log=lambda *_: None)
  assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished shards were not cleaned again
  assert _shards(tmp_path / "out") == _shards(local_out["out"])  # same output as an uninterrupted run
  assert stats["reasons"] == local_out["stats"]["reasons"] and stats["rules"] == local_out["stats"]["rules"]


def test_ray_runner_matches_local_runner_and_resumes_a_killed_run(corpus, local_out, tmp_path):
  pytest.importorskip("ray.data")  # the [dev] and [ray] extras install it
  stats = prepare.run(corpus["config"], str(tmp_path / "fresh"), runner="ray", workers=2, progress=False,
                      log=lambda *_: None)
  assert _shards(tmp_path / "fresh") == _shards(local_out["out"])
  for key in ("reasons", "rules", "sources", "near_dedup", "skipped"):
    assert stats[key] == local_out["stats"][key], key
  assert stats["runner"] == "ray"
  # A local run killed half-way, finished by the Ray runner: the same shards, nothing cleaned twice.
  done = _kill_halfway(corpus, tmp_path / "resumed")
  prepare.run(corpus["config"], str(tmp_path / "resumed"), runner="ray", workers=2, progress=False,
              log=lambda *_: None)
  assert all(p.stat().st_mtime_ns == t for p, t in done.items())
  assert _shards(tmp_path / "resumed") == _shards(local_out["out"])


def test_another_config_starts_over(corpus, local_out, tmp_path):
  out = tmp_path / "out"
  prepare.run(corpus["config"], str(out), workers=1, progress=False, log=lambda *_: None)
  config = config_lib.base_config()
  config.data.source = corpus["config"].data.source
  config.clean.near_dedup = False
  stats = prepare.run(config, str(out), workers=1, progress=False, log=lambda *_: None)
  assert "near_duplicate" not in stats["reasons"]
  assert len(sources.load_documents(str(out))) == 5 * N_SHARDS + corpus["planted"]["near"]
