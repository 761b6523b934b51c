"""The one optimizer path every job updates through: AdamW with a warmup/decay schedule over the
trainable parameter groups only.

Frozen groups (top-level keys of the params tree, e.g. the generator's "mmdit" while only its V-A
embedding learns) are split off before `value_and_grad`, so no weight gradient is ever computed
for them, and the optimizer holds state for the trainable groups alone. The train state keeps the
whole params tree (checkpointed and exported as one model); `partition` / `merge` move between
the two views inside a step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def learning_rate_schedule(c, total_steps: int | None = None):
  """Linear warmup, constant, then (with decay_steps or decay_fraction, and total_steps) linear decay to 0 at
  total_steps."""
  decay, fraction = c.get("decay_steps", 0), c.get("decay_fraction", 0.0)
  if decay and fraction:
    raise ValueError(f"optim.decay_steps={decay} and optim.decay_fraction={fraction}: set one of them, the other to 0")
  if (decay or fraction) and total_steps is None:
    raise ValueError("optim.decay_steps / decay_fraction needs the run's total_steps")
  if fraction:
    decay = min(round(fraction * total_steps), total_steps - c.warmup_steps)
  pieces, bounds = [], []
  if c.warmup_steps:
    pieces.append(optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps))
    bounds.append(c.warmup_steps)
  pieces.append(optax.constant_schedule(c.learning_rate))
  if decay:
    if decay > total_steps - c.warmup_steps:
      raise ValueError(f"optim.decay_steps={decay} overlaps the warmup: total_steps={total_steps}, "
                       f"warmup_steps={c.warmup_steps}")
    bounds.append(total_steps - decay)
    pieces.append(optax.linear_schedule(c.learning_rate, 0.0, decay))
  return pieces[0] if len(pieces) == 1 else optax.join_schedules(pieces, bounds)


def make_optimizer(c, total_steps: int | None = None) -> optax.GradientTransformation:
  """config.optim -> global-norm clipping then AdamW (applied to the trainable groups)."""
  sched = learning_rate_schedule(c, total_steps)
  return optax.chain(optax.clip_by_global_norm(c.grad_clip),
                     optax.adamw(sched, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))


def check_frozen(params: dict, frozen, what: str) -> tuple[str, ...]:
  """The frozen group names, checked against params' top-level groups (one-line error)."""
  frozen = tuple(frozen)
  unknown = sorted(set(frozen) - set(params))
  if unknown:
    raise ValueError(f"model.frozen names {unknown}, not parameter groups of the {what} {sorted(params)}")
  if set(frozen) == set(params):
    raise ValueError(f"model.frozen freezes every parameter group of the {what} ({sorted(params)}): nothing trains")
  return frozen


def frozen_in(params: dict, frozen, dtype) -> dict:
  """params with the floating leaves of the frozen groups stored in `dtype` (the compute dtype: a frozen group
  is only ever read by forwards that cast to it anyway); host arrays or ShapeDtypeStructs."""
  dtype = np.dtype(dtype)

  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
      return x
    return jax.ShapeDtypeStruct(x.shape, dtype) if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x, dtype)

  return {k: jax.tree.map(cast, v) if k in frozen else v for k, v in params.items()}


def partition(params: dict, frozen) -> tuple[dict, dict]:
  """params -> (trainable groups, frozen groups)."""
  return ({k: v for k, v in params.items() if k not in frozen}, {k: v for k, v in params.items() if k in frozen})


def merge(trainable: dict, frozen: dict) -> dict:
  return {**trainable, **frozen}


def init_opt_state(tx: optax.GradientTransformation, params: dict, frozen) -> Any:
  return tx.init(partition(params, frozen)[0])


def apply_gradients(tx: optax.GradientTransformation, grads: dict, opt_state, trainable: dict):
  """One optimizer update of the trainable groups -> (new trainable, new opt_state, grad_norm); grad_norm
  is the global norm of the gradient handed to the optimizer (before its clipping)."""
  updates, opt_state = tx.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state, optax.tree.norm(grads)

