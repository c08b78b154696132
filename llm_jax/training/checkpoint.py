"""Checkpoints with orbax: parameters, the rest of the train state, and the data iterator.

`workdir/checkpoints/<step>/{params,train,data}`: `params` alone is what inference, `llm_jax.load` and a
later stage's `init_from` read (a converted Hugging Face model is a workdir holding only `params`); `train`
holds the optimizer state, step and rng; `data` the grain iterator's position. Saves are asynchronous
(training goes on while arrays are written) and atomic (a run killed mid-save leaves a temporary directory
that the next start ignores and cleans up), so the latest finished step is always a consistent set.

Multi-host: every process calls save/restore with the same step (the manager synchronises them through
jax.distributed); each writes the shards of the arrays it holds, process 0 the metadata and the final
rename. The iterator position is per process: `data/process_<i>-of-<n>.json` holds the states of the row
streams process i feeds (`llm_jax.data.pipeline`), keyed by global row, so on restore `DataHandler` merges
all processes' files and each process picks its own rows: a checkpoint written by 2 processes resumes on 1
(or 4) with exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp


class DataHandler(grain.checkpoint.CheckpointHandler):
  """grain's handler (one JSON state per process), restoring row-keyed states from all processes' files.

  States of the row-stream iterator (`{"rows": ...}`) are merged over every `process_*-of-*.json` of the
  checkpoint, so the process count may change between save and restore; any other iterator restores from
  its own process's file, as in grain.
  """

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    states = [json.loads(f.read_text()) for f in sorted(directory.glob("process_*-of-*.json"))]
    if not states or not all(isinstance(s, dict) and "rows" in s for s in states):
      return super().restore(directory, item=item)
    rows = {}
    for state in states:
      rows.update(state["rows"])
    item.set_state({**states[0], "rows": rows})
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any


def manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
      item_handlers={"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
                     "data": DataHandler()})


def _train_part(state) -> dict:
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, force: bool = False) -> bool:
  args = {"params": ocp.args.StandardSave(state.params), "train": ocp.args.StandardSave(_train_part(state))}
  if data_iterator is not None:
    args["data"] = DataSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def save_params(workdir: str, params, step: int = 0):
  """Writes a params-only checkpoint (e.g. converted weights) that `restore_params` and init_from read."""
  mngr = manager(workdir)
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
  mngr.wait_until_finished()
  mngr.close()


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, step: int | None = None):
  """Restores the full train state (sharded like `abstract_state`) and, if given, the iterator's position."""
  step = mngr.latest_step() if step is None else step
  args = {"params": ocp.args.StandardRestore(abstract_state.params),
          "train": ocp.args.StandardRestore(_train_part(abstract_state))}
  if data_iterator is not None:
    args["data"] = DataRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return abstract_state.replace(params=restored["params"], **restored["train"])


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """Only the parameters of a workdir's latest (or given) checkpoint, sharded like `abstract_params`."""
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{os.path.join(workdir, 'checkpoints')} holds no checkpoint")
  params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))["params"]
  mngr.close()
  return params
