"""orbax checkpoints: train state (params, optimizer, step), the run's RNG key, data iterator, config.

Each save is one orbax step directory written atomically (orbax writes `<step>.orbax-checkpoint-tmp`
and renames it on commit), so `latest_step()` only ever sees complete checkpoints and a run killed
mid-save (even by SIGKILL) leaves the previous one intact; `incomplete_steps()` names what such a
kill left behind. The RNG key is stored as its raw uint32 key data.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain.python as grain
import jax
import numpy as np
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

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def incomplete_steps(self) -> list[str]:
    """Step directories a killed save left uncommitted (orbax's temporary names)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)

  def save(self, step: int, state: Any, data_iter: grain.DataLoaderIterator | None = None,
           config: dict | None = None, rng: jax.Array | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if rng is not None:
      # host numpy (the same key on every process): a process-local jax.Array cannot be saved multi-host
      items["rng"] = ocp.args.StandardSave({"key_data": np.asarray(jax.device_get(jax.random.key_data(rng)))})
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
    return self.restore_with_rng(abstract_state, data_iter, step)[0]

  def restore_with_rng(self, abstract_state: Any, data_iter: grain.DataLoaderIterator | None = None,
                       step: int | None = None) -> tuple[Any, jax.Array | None]:
    """(state, the saved RNG key or None if the checkpoint holds none)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = None if abstract_state is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}  # None: as saved, on the default device
    has_rng = os.path.isdir(os.path.join(self.directory, str(step), "rng"))
    if has_rng:
      items["rng"] = ocp.args.StandardRestore()
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointRestore(data_iter)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored checkpoint %d from %s", step, self.directory)
    rng = jax.random.wrap_key_data(jax.numpy.asarray(restored["rng"]["key_data"])) if has_rng else None
    return restored["state"], rng

  def saved_config(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step), "config", "metadata")
    if step is None or not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def close(self) -> None:
    self._mngr.close()
