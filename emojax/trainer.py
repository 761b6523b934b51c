"""The one trainer skeleton every emojax job runs on.

A task supplies pure pieces — `init_state(rng)`, `train_step(state, batch, rng)` — plus its
data loader and host-side hooks; the skeleton owns everything around them: the mesh,
abstract-first sharded init, automatic resume, the jit with explicit shardings, the per-step
RNG, metrics, the progress bar, non-finite-loss stops, periodic and SIGTERM checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from emojax import checkpoint as ckpt_lib
from emojax import metrics as metrics_lib
from emojax import parallel


class Task(Protocol):
  """What a job provides to `run`. Pure functions are traced under jit by the skeleton."""

  global_batch_size: int

  def make_loader(self, shard_index: int, shard_count: int): ...  # grain DataLoader
  def host_batch(self, raw: dict) -> dict[str, np.ndarray]: ...  # tokenise etc., numpy only
  def init_state(self, rng: jax.Array) -> dict: ...  # {"params": ..., "opt_state": ...}
  def constants(self) -> Any: ...  # frozen arrays the step reads (reference model); not checkpointed
  def train_step(self, state: dict, batch: dict, rng: jax.Array, constants: Any) -> tuple[dict, dict]: ...
  def on_step_end(self, step: int, state: dict, metrics: dict, workdir: str) -> dict: ...  # host hook; extra metrics
  # optional: on_finish(state, workdir), called once total_steps is reached (also on a resume there)
  # optional, for rewards that need the host (parsing an LVLM's text answers): the step becomes
  #   experience(state, batch, rng, constants) -> dict    (jitted; rows sharded like the batch)
  #   score(experience_rows, raw_batch) -> dict of numpy   (host, on this host's rows only; with a
  #                                                         score_keys tuple, only those fields are fetched)
  #   train_step(state, batch | experience | scores, rng, constants)


def pretrained_state(params, tx, shardings=None) -> dict:
  """A fine-tuning task's train state starting at pretrained host params. Without shardings it is the
  `init_state` the trainer evaluates for shapes; with them, the `initial_state` placed shard by shard."""
  if shardings is None:
    params = jax.tree.map(jnp.asarray, params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  params = jax.device_put(jax.tree.map(jnp.asarray, params), shardings["params"])
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step (TPU/SLURM preemption)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside some test runners): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint after this step and exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class RunResult:
  state: Any
  step: int
  preempted: bool
  metrics: list[dict]


def _progress(total: int, start: int, enabled: bool):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)


def run(config: ml_collections.ConfigDict, workdir: str, task: Task, *, progress: bool = True) -> RunResult:
  """Trains `task` until config.total_steps, resuming from workdir's latest checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.mesh_from_config(config.mesh)
  parallel.check_batch(task.global_batch_size, mesh, "global batch (prompts_per_step * group_size)")
  host_batch = task.global_batch_size // jax.process_count()
  is_main = jax.process_index() == 0

  rules = dict(param_rules=tuple(map(tuple, config.sharding.param_rules)),
               logical_rules=tuple(map(tuple, config.sharding.logical_rules)))
  base_rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(base_rng)
  abstract = jax.eval_shape(task.init_state, init_rng)
  shardings = parallel.state_shardings(abstract, mesh, **rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

  loader = task.make_loader(jax.process_index(), jax.process_count())
  data_iter = iter(loader)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  start = checkpointer.latest_step()
  if start is not None:
    saved = checkpointer.saved_config(start)
    state = checkpointer.restore(abstract, data_iter, start)
    logging.info("resuming from step %d (%s)", start, checkpointer.directory)
    if saved and saved.get("seed") != config.seed:
      logging.warning("resuming a run saved with seed=%s under seed=%s", saved.get("seed"), config.seed)
  else:
    start = 0
    if hasattr(task, "initial_state"):  # e.g. pretrained weights placed shard by shard
      # (device_put again so every leaf carries exactly the step's input sharding: a leaf left
      # uncommitted would change the jit cache key after the first step and recompile)
      state = jax.device_put(task.initial_state(init_rng, shardings), shardings)
    else:
      state = jax.jit(task.init_state, out_shardings=shardings)(init_rng)
  constants = task.constants()
  const_shardings = parallel.param_shardings(jax.eval_shape(lambda: constants), mesh, **rules)
  constants = jax.device_put(constants, const_shardings)

  batch_sharding = parallel.batch_sharding(mesh)
  repl = parallel.replicated(mesh)
  step_fn = jax.jit(task.train_step, in_shardings=(shardings, batch_sharding, repl, const_shardings),
                    out_shardings=(shardings, repl), donate_argnums=(0,))
  experience_fn = None
  if hasattr(task, "experience"):
    experience_fn = jax.jit(task.experience, in_shardings=(shardings, batch_sharding, repl, const_shardings),
                            out_shardings=batch_sharding)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = _progress(config.total_steps, start, progress and is_main)
  history: list[dict] = []
  config_dict = config.to_dict()
  step = start
  preempted = False
  try:
    with _Preemption() as preemption, jax.set_mesh(mesh):
      while step < config.total_steps:
        t0 = time.perf_counter()
        raw = next(data_iter)
        batch = parallel.put_batch(task.host_batch(raw), mesh)
        if jax.tree.leaves(batch)[0].shape[0] != task.global_batch_size:
          raise ValueError(f"loader gave a batch of {jax.tree.leaves(batch)[0].shape[0]} rows, expected {task.global_batch_size}")
        rng = jax.random.fold_in(step_rng, step)
        if experience_fn is not None:
          experience = experience_fn(state, batch, rng, constants)
          wanted = getattr(task, "score_keys", None)
          scores = task.score(parallel.host_rows(experience if wanted is None else {k: experience[k] for k in wanted},
                                                 mesh), raw)
          batch = {**batch, **experience, **parallel.put_batch(scores, mesh)}
        new_state, metrics = step_fn(state, batch, rng, constants)
        metrics = jax.device_get(metrics)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
          latest = checkpointer.latest_step()
          raise NonFiniteLossError(
              f"non-finite loss {loss} at step {step + 1}; stopped without saving, last good checkpoint: "
              f"{'step ' + str(latest) if latest is not None else 'none'} in {checkpointer.directory} "
              "(lower the learning rate or check the inputs)")
        state = new_state
        step += 1
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["step_time_s"] = time.perf_counter() - t0
        metrics.update(task.on_step_end(step, state, metrics, workdir) or {})
        writer.write(step, metrics)
        history.append({"step": step, **metrics})
        if bar is not None:
          bar.update(1)
          bar.set_postfix({k: f"{metrics[k]:.3g}" for k in task.progress_keys if k in metrics})
        if step % config.checkpoint_every == 0 or step == config.total_steps or preemption.requested:
          checkpointer.save(step, state, data_iter, config_dict)
        if preemption.requested:
          preempted = True
          break
    if step >= config.total_steps and hasattr(task, "on_finish") and is_main:
      task.on_finish(state, workdir)
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    checkpointer.close()
  return RunResult(state=state, step=step, preempted=preempted, metrics=history)
