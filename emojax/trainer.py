"""The one trainer skeleton every emojax job runs on.

A task supplies pure pieces — `init_state(rng)`, `train_step(state, batch, rng)` — plus its
data loader and host-side hooks; the skeleton owns everything around them: the mesh,
abstract-first sharded init, automatic resume, the jit with explicit shardings, the per-step
RNG, metrics, the progress bar, non-finite-loss stops, periodic and SIGTERM checkpoints, and the
export at the end.

Resume. A run starts from the workdir's latest complete checkpoint: its state, data iterator
position and RNG key (the key the run trains with; every step's key is fold_in(key, step)), so a
run killed at any point, SIGKILL included, ends bit-identical to an uninterrupted one on the same
machine and mesh. The saved config must agree with the current one in every field that shapes the
trajectory; `RESUME_MUTABLE` lists the fields that may differ, `config.resume_changes` names
others changed on purpose (staged training). metrics.jsonl and TensorBoard are rewound to the
resumed step (`emojax.metric_log`).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import signal
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from emojax import checkpoint as ckpt_lib
from emojax import config_utils
from emojax import metric_log
from emojax import optim
from emojax import parallel

# Config fields a resumed run may change (they do not alter the trajectory of its parameters):
# how long it runs and how often it saves, evaluates and exports, and the mesh it runs on (a
# different mesh is equal up to float rounding).
RESUME_MUTABLE = ("total_steps", "checkpoint_every", "eval_every", "keep_checkpoints", "resume_changes",
                  "optim.decay_steps", "optim.decay_fraction", "eval.*", "export_*", "mesh.*", "sharding.*")


class Task(Protocol):
  """What a job provides to `run`. Pure functions are traced under jit by the skeleton."""

  global_batch_size: int

  def make_loader(self, shard_index: int, shard_count: int): ...  # grain DataLoader
  def host_batch(self, raw: dict) -> dict[str, np.ndarray]: ...  # tokenise etc., numpy only
  def init_state(self, rng: jax.Array) -> dict: ...  # {"params": ..., "opt_state": ...}
  def constants(self) -> Any: ...  # frozen arrays the step reads (reference model); not checkpointed
  def train_step(self, state: dict, batch: dict, rng: jax.Array, constants: Any) -> tuple[dict, dict]: ...
  # optional: on_step_end(step, state, metrics, workdir) -> dict of extra metrics (host hook after each step);
  #   without it, a task with evaluate(params) -> dict is evaluated on state["params"] when `eval_due`
  # optional: export(state, directory), called with <workdir>/export once total_steps is reached
  #   (also on a resume there), and by `python -m emojax.export` from any checkpoint
  # optional, for rewards that need the host (parsing an LVLM's text answers): the step becomes
  #   experience(state, batch, rng, constants) -> dict    (jitted; rows sharded like the batch)
  #   score(experience_rows, raw_batch) -> dict of numpy   (host, on this host's rows only; with a
  #                                                         score_keys tuple, only those fields are fetched)
  #   train_step(state, batch | experience | scores, rng, constants)


def pretrained_state(params, tx, frozen=(), shardings=None) -> dict:
  """A fine-tuning task's train state starting at pretrained host (numpy) params; the optimizer
  state covers the trainable groups. Without shardings it is the `init_state` the trainer evaluates
  for shapes; with them, the `initial_state`, host arrays put straight into their shardings (never
  whole on one device first)."""
  if shardings is None:  # (weight shapes, e.g. for planning, become zeros: under eval_shape they cost nothing)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct)
                          else jnp.asarray(x), params)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optim.init_opt_state(tx, params, frozen)}
  params = jax.device_put(params, shardings["params"])
  opt_state = jax.jit(lambda p: optim.init_opt_state(tx, p, frozen), out_shardings=shardings["opt_state"])(params)
  return {"step": jax.device_put(np.zeros((), np.int32), shardings["step"]), "params": params, "opt_state": opt_state}


def eval_due(step: int, config) -> bool:
  """Whether a task evaluates after `step`: every config.eval_every steps and at total_steps."""
  return step % config.eval_every == 0 or step == config.total_steps


def _step_end(task, step, state, metrics, workdir, config) -> dict:
  if hasattr(task, "on_step_end"):
    return task.on_step_end(step, state, metrics, workdir) or {}
  if hasattr(task, "evaluate") and eval_due(step, config):
    return task.evaluate(state["params"])
  return {}


def host_params(state: dict, key: str = "params"):
  """state[key] as a host numpy tree, for exports (gathered across processes when sharded over them)."""
  return parallel.to_host(state[key])


def host_state(state: dict) -> dict:
  """Everything of a train state but the optimizer's as host numpy, on every process (a collective: the trainer
  gathers on all processes, then process 0 alone writes the export from it)."""
  return {k: parallel.to_host(v) for k, v in state.items() if k != "opt_state"}


def _flat_json(config) -> dict:
  """A config as the checkpoint stores it (JSON types), flattened to dotted paths."""
  as_json = config if isinstance(config, dict) else json.loads(json.dumps(config.to_dict(), default=str))
  return config_utils.flatten(as_json)


def check_resume(saved: dict | None, config, where: str) -> None:
  """One-line error for the first trajectory field the current config changes from the saved one."""
  if not saved:
    return
  allowed = RESUME_MUTABLE + tuple(f.strip() for f in config.get("resume_changes", "").split(",") if f.strip())
  old, new = _flat_json(saved), _flat_json(config)
  for path in sorted(set(old) | set(new)):
    if any(path == a or fnmatch.fnmatchcase(path, a) for a in allowed):
      continue
    if path not in old or path not in new:
      logging.warning("resuming %s: config field %s is only in the %s config", where, path,
                      "current" if path not in old else "saved")
      continue
    if old[path] != new[path]:
      raise ValueError(
          f"resuming {where}: config field {path} was {old[path]!r} there and is {new[path]!r} now, which changes "
          f"the run's trajectory; keep it, start a fresh --workdir (to continue from this run's weights, set its "
          f"export as the pretrained model), or pass --config.resume_changes={path} to change it deliberately")


def place_initial_state(task, init_rng, shardings):
  """The task's step-0 state, every leaf in its sharding (host params are never put whole on a device)."""
  if hasattr(task, "initial_state"):  # e.g. pretrained weights placed shard by shard
    # (device_put again so every leaf carries exactly the step's input sharding: a leaf left
    # uncommitted would change the jit cache key after the first step and recompile)
    return jax.device_put(task.initial_state(init_rng, shardings), shardings)
  return jax.jit(task.init_state, out_shardings=shardings)(init_rng)


def place_constants(task, mesh, rules):
  """The task's constants (host numpy trees, e.g. a reference model) put straight into their shardings."""
  constants = task.constants()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), constants)
  shardings = parallel.param_shardings(abstract, mesh, **rules)
  return jax.device_put(constants, shardings), shardings


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


def _rules(config) -> dict:
  return parallel.rules_from_config(config.sharding)


def _abstract_state(task, init_rng, mesh, rules):
  """(abstract state with shardings, shardings): shapes from eval_shape, nothing materialised."""
  abstract = jax.eval_shape(task.init_state, init_rng)
  shardings = parallel.state_shardings(abstract, mesh, **rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def export_checkpoint(config, workdir: str, task, step: int | None = None, directory: str | None = None) -> str:
  """Restores checkpoint `step` (default: the latest) of workdir into its shardings and writes the
  task's export to `directory` (default <workdir>/export); returns the directory."""
  if not hasattr(task, "export"):
    raise ValueError(f"task {config.task!r} has no export")
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
      raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} in {checkpointer.directory} "
                              f"(complete: {checkpointer.all_steps()})")
    mesh = parallel.mesh_from_config(config.mesh)
    abstract, _ = _abstract_state(task, jax.random.key(0), mesh, _rules(config))
    with jax.set_mesh(mesh):
      state = checkpointer.restore(abstract, None, step)
      directory = directory or os.path.join(workdir, "export")
      task.export(host_state(state), directory)
  finally:
    checkpointer.close()
  logging.info("exported step %d of %s to %s", step, workdir, directory)
  return directory


def run(config: ml_collections.ConfigDict, workdir: str, task: Task, *, progress: bool = True) -> RunResult:
  """Trains `task` until config.total_steps, resuming from workdir's latest checkpoint."""
  mesh = parallel.mesh_from_config(config.mesh)
  parallel.check_batch(task.global_batch_size, mesh, getattr(task, "batch_description", "global batch"))
  is_main = jax.process_index() == 0

  rules = _rules(config)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  abstract, shardings = _abstract_state(task, init_rng, mesh, rules)

  loader = task.make_loader(jax.process_index(), jax.process_count())
  data_iter = iter(loader)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  start = checkpointer.latest_step()
  for name in checkpointer.incomplete_steps():
    logging.warning("ignoring %s in %s: a save that never completed (the run was killed while saving); "
                    "resuming from %s", name, checkpointer.directory,
                    f"step {start}" if start is not None else "the start")
  if start is not None:
    check_resume(checkpointer.saved_config(start), config, f"{checkpointer.directory} at step {start}")
    state, saved_rng = checkpointer.restore_with_rng(abstract, data_iter, start)
    step_rng = step_rng if saved_rng is None else saved_rng
    logging.info("resuming from step %d (%s)", start, checkpointer.directory)
  else:
    start = 0
    state = place_initial_state(task, init_rng, shardings)
  constants, const_shardings = place_constants(task, mesh, rules)

  batch_sharding = parallel.batch_sharding(mesh)
  repl = parallel.replicated(mesh)
  step_fn = jax.jit(task.train_step, in_shardings=(shardings, batch_sharding, repl, const_shardings),
                    out_shardings=(shardings, repl), donate_argnums=(0,))
  experience_fn = None
  if hasattr(task, "experience"):
    experience_fn = jax.jit(task.experience, in_shardings=(shardings, batch_sharding, repl, const_shardings),
                            out_shardings=batch_sharding)

  writer = metric_log.MetricWriter(workdir, enabled=is_main, start_step=start)
  bar = _progress(config.total_steps, start, progress and is_main)
  history: list[dict] = []
  config_dict = config.to_dict()
  step = start
  preempted = False
  try:
    with _Preemption() as preemption, jax.set_mesh(mesh):
      while step < config.total_steps:
        t0 = time.perf_counter()
        times = {}
        raw = next(data_iter)
        batch = parallel.put_batch(task.host_batch(raw), mesh)
        if jax.tree.leaves(batch)[0].shape[0] != task.global_batch_size:
          raise ValueError(f"loader gave a batch of {jax.tree.leaves(batch)[0].shape[0]} rows, expected {task.global_batch_size}")
        rng = jax.random.fold_in(step_rng, step)
        if experience_fn is not None:
          t = time.perf_counter()
          experience = experience_fn(state, batch, rng, constants)
          wanted = getattr(task, "score_keys", None)
          rows = parallel.host_rows(experience if wanted is None else {k: experience[k] for k in wanted}, mesh)
          times["time/rollout_s"] = time.perf_counter() - t
          t = time.perf_counter()
          scores = task.score(rows, raw)
          times["time/score_s"] = time.perf_counter() - t
          batch = {**batch, **experience, **parallel.put_batch(scores, mesh)}
        t = time.perf_counter()
        new_state, metrics = step_fn(state, batch, rng, constants)
        metrics = jax.device_get(metrics)
        times["time/update_s"] = time.perf_counter() - t
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
        metrics.update(times)
        metrics.update(_step_end(task, step, state, metrics, workdir, config))
        writer.write(step, metrics)
        history.append({"step": step, **metrics})
        if bar is not None:
          bar.update(1)
          bar.set_postfix({k: f"{metrics[k]:.3g}" for k in task.progress_keys if k in metrics})
        stop = parallel.any_process(preemption.requested)  # every process stops after the same step
        if step % config.checkpoint_every == 0 or step == config.total_steps or stop:
          checkpointer.save(step, state, data_iter, config_dict, rng=step_rng)
        if stop:
          preempted = True
          break
    if step >= config.total_steps and hasattr(task, "export"):
      exported = host_state(state)
      if is_main:
        task.export(exported, os.path.join(workdir, "export"))
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    latest = checkpointer.latest_step()
    raise parallel.peer_lost(e, f"stopped at step {step}; the last complete checkpoint is "
                                f"{'step ' + str(latest) if latest is not None else 'none'} in "
                                f"{checkpointer.directory}: relaunch every process to resume") from e
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    checkpointer.close()
  return RunResult(state=state, step=step, preempted=preempted, metrics=history)
