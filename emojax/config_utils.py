"""Shared config pieces: mesh, sharding rules, and `file.py:preset,key=value` argument parsing."""
from __future__ import annotations

import ml_collections

from emojax import parallel


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'tiny,steps=3' -> ConfigDict(preset='tiny', steps=3) over defaults (big_vision style)."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    if "=" in part:
      k, v = part.split("=", 1)
      if k not in defaults:
        raise ValueError(f"unknown config argument {k!r}; known: {sorted(defaults)}")
      out[k] = type(defaults[k])(v) if defaults[k] is not None else v
    else:
      out["preset"] = part
  return ml_collections.ConfigDict(out)


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int = -1) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_devices = num_devices  # devices the mesh uses (the first N); -1 = all
  c.data = data  # data-parallel axis size; -1 = all devices left over
  c.fsdp = fsdp  # parameter/optimizer-sharded data-parallel axis size
  c.tensor = tensor  # tensor-parallel axis size (shards heads / MLP width)
  return c


def sharding() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.param_rules = [(rx, names) for rx, names in parallel.DEFAULT_PARAM_RULES]  # param path regex -> logical axes
  c.logical_rules = [(n, a) for n, a in parallel.DEFAULT_LOGICAL_RULES]  # logical axis -> mesh axes
  return c


def optimizer(lr: float, grad_clip: float = 1.0, weight_decay: float = 0.0, warmup_steps: int = 0,
              decay_steps: int = 0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.learning_rate = lr  # peak learning rate of AdamW
  c.warmup_steps = warmup_steps  # linear warmup steps, then constant
  c.decay_steps = decay_steps  # linear decay to 0 over the last decay_steps of total_steps (0 = none)
  c.b1 = b1  # Adam beta1
  c.b2 = b2  # Adam beta2
  c.eps = eps  # Adam epsilon
  c.weight_decay = weight_decay  # decoupled weight decay
  c.grad_clip = grad_clip  # global-norm gradient clipping threshold
  return c


def learning_rate_schedule(c, total_steps: int | None = None):
  """Linear warmup, constant, then (with decay_steps and total_steps) linear decay to 0 at total_steps."""
  import optax
  decay = c.get("decay_steps", 0)
  if decay and total_steps is None:
    raise ValueError("optim.decay_steps needs the run's total_steps")
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


def make_optimizer(c, total_steps: int | None = None):
  import optax
  sched = learning_rate_schedule(c, total_steps)
  return optax.chain(optax.clip_by_global_norm(c.grad_clip),
                     optax.adamw(sched, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))


def masked_optimizer(tx, params, frozen: tuple[str, ...]):
  """Applies optax transformation tx to every top-level module except `frozen`, whose updates are zero."""
  import optax
  labels = {k: ("frozen" if k in frozen else "train") for k in params}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
