"""Named reward functions and their weighted combination (pure, jit-friendly).

A reward function maps (images (B, H, W, 3) in [-1, 1], batch dict of arrays) to (rewards (B,),
extras dict of (B,) arrays for logging). Later judges (the LVLM) register here too.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

RewardFn = Callable[[jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]
_REGISTRY: dict[str, RewardFn] = {}


def register(name: str):
  def deco(fn: RewardFn) -> RewardFn:
    if name in _REGISTRY:
      raise ValueError(f"reward {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn
  return deco


def get(name: str) -> RewardFn:
  if name not in _REGISTRY:
    raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def zscore(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return (x - x.mean()) / (x.std() + eps)


def combine(images, batch, weights: Mapping[str, float], normalize: bool = False):
  """Sum of weight * reward (each optionally z-scored over the batch) and per-reward logs."""
  if not weights:
    raise ValueError("no rewards configured: set config.rewards to {name: weight}")
  total = 0.0
  logs = {}
  for name, w in sorted(weights.items()):
    r, extras = get(name)(images, batch)
    logs[f"reward/{name}"] = r
    logs.update({f"{name}/{k}": v for k, v in extras.items()})
    total = total + w * (zscore(r) if normalize else r)
  return jnp.asarray(total), logs


@register("colour_emotion")
def colour_emotion(images, batch):
  """Emotion reward from the untrained Valdez-Mehrabian colour judge (the tiny world's truth)."""
  from emojax.rewards.colour_judge import colour_judge, emotion_reward
  v_hat, a_hat = colour_judge(images)
  r = emotion_reward(v_hat, a_hat, batch["valence"], batch["arousal"])
  return r, {"v_abs_err": jnp.abs(v_hat - batch["valence"]), "a_abs_err": jnp.abs(a_hat - batch["arousal"])}


def _block_mean(images, k: int):
  b, h, w, c = images.shape
  return images.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))


@register("colour_emotion_smooth")
def colour_emotion_smooth(images, batch, block: int = 4):
  """The colour-judge emotion reward on block-averaged (4x4) images.

  Per-pixel HSV saturation rewards high-frequency colour noise (it raises mean saturation,
  hence arousal) and GRPO finds that texture within tens of steps; averaging blocks first
  turns such noise back to grey, so only region-level colour earns reward. The per-pixel
  judge stays the evaluator.
  """
  return colour_emotion(_block_mean(images, block), batch)
