"""orbax checkpoints: train state (params, optimizer, step, RNG), data iterator, config.

Each save is one orbax step directory written atomically (orbax writes to a temporary name
and renames on commit), so `latest_step()` only ever sees complete checkpoints and a crash
mid-save leaves the previous one intact.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, data_iter: grain.DataLoaderIterator | None = None,
           config: dict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(json.dumps(config, default=str)))
    self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    self._mngr.wait_until_finished()
    logging.info("saved checkpoint %d to %s", step, self.directory)

  def restore(self, abstract_state: Any, data_iter: grain.DataLoaderIterator | None = None,
              step: int | None = None) -> Any:
    """Restores into `abstract_state`'s structure and shardings (ShapeDtypeStructs or arrays)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointRestore(data_iter)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored checkpoint %d from %s", step, self.directory)
    return restored["state"]

  def saved_config(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step), "config", "metadata")
    if step is None or not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def close(self) -> None:
    self._mngr.close()
