"""Checkpoints with orbax: the train state (params, optimizer state, step, rng) and the data iterator.

`workdir/checkpoints/<step>/{state,data}`. Saves are asynchronous (training goes on while arrays are
written) and atomic (a run killed mid-save leaves a temporary directory that the next start ignores and
cleans up), so the latest finished step is always a consistent pair of train state and iterator state.
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, force: bool = False) -> bool:
  args = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, step: int | None = None):
  """Restores the train state (sharded like `abstract_state`) and, if given, the iterator's position."""
  step = mngr.latest_step() if step is None else step
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return restored["state"]
