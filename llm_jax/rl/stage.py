"""What the post-training stages with their own loops (reward, dpo, ppo, grpo) share around those loops.

    with stage.start(config, workdir, train_lib):         # validate, one process, the workdir lock
      tok, mesh = stage.prepare(config, workdir, train_lib)  # resume check, config.json, tokenizer, mesh
      done = stage.finished(mngr, config, workdir, say)     # the summary of a finished workdir, or None
      ...
      last = stage.log_eval(writer, say, step, results, t0)  # eval/<name> metrics, written and printed
      return stage.summarize(say, step, last, t_start)

`train_lib` is the llm_jax.train module that dispatched the stage (its lock, resume check and tokenizer; under
`python -m llm_jax.train` that module is __main__, so it is passed, not imported).
"""

from __future__ import annotations

import os
import time

import jax

from llm_jax import config as config_lib
from llm_jax import sharding
from llm_jax.training import metrics as metrics_lib


def start(config, workdir: str, train_lib):
  """Validates config, refuses several processes (these loops run their rollouts or data on one host) and
  returns the workdir lock (a context manager)."""
  config_lib.validate(config)
  sharding.initialize_distributed(config)
  if jax.process_count() > 1:
    raise config_lib.ConfigError(f"stage {config.stage!r} runs in one process; use the devices of one machine "
                                 "through config.mesh")
  os.makedirs(workdir, exist_ok=True)
  return train_lib._workdir_lock(workdir)  # pylint: disable=protected-access


def prepare(config, workdir: str, train_lib, pipeline: bool = False):
  """(init_from's tokenizer, the mesh) after the resume check and writing config.json; without `pipeline`,
  a mesh with stage > 1 is refused."""
  train_lib.check_resumable(workdir, config)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  tok = train_lib.build_tokenizer(workdir, config, [])
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.{e}") from None
  if not pipeline and mesh.shape.get("stage", 1) > 1:
    raise config_lib.ConfigError(f"stage {config.stage!r} does not pipeline: set mesh.stage=1")
  return tok, mesh


def finished(mngr, config, workdir: str, say) -> dict | None:
  """The summary of a workdir that already holds train.steps (its last evaluation), else None."""
  start_step = mngr.latest_step() or 0
  if start_step < config.train.steps:
    return None
  last = [m for m in metrics_lib.read(workdir) if any(k.startswith("eval/") for k in m)]
  say(f"run complete: {workdir} holds step {start_step} (train.steps={config.train.steps})")
  mngr.close()
  return {"step": start_step, "complete": True, **(last[-1] if last else {})}


def log_eval(writer, say, step: int, results: dict, t0: float) -> dict:
  """{"eval/<name>": value}, written to the metrics and printed with the seconds since t0."""
  out = {f"eval/{k}": v for k, v in results.items()}
  writer.write(step, out)
  say(f"step {step} ({time.time() - t0:.0f} s): " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in out.items()))
  return out


def summarize(say, step: int, last: dict, t_start: float) -> dict:
  """The run's summary (the final step, its last evaluation, the seconds it took), printed."""
  summary = {"step": step, **last, "seconds": round(time.time() - t_start, 1)}
  say("summary: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
  return summary
