"""Named reward functions and their weighted combination.

In-graph rewards (`register`) are pure jnp: (images (B, H, W, 3) in [-1, 1], batch dict of arrays)
-> (rewards (B,), extras dict of (B,) arrays for logging); the train step traces them.

Host rewards (`register_host`) need host code, e.g. the LVLM judge, whose answers are text to
parse. A host reward is registered as a factory, config -> fn, and fn(images numpy, batch numpy)
-> (rewards, extras) as numpy; the task's score stage runs it between the jitted rollout and the
jitted update (emojax.trainer), and the update reads it from batch["reward/<name>"] and the
extras from batch["<name>/<extra>"].
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from emojax.emotion.colour import colour_judge
from emojax.rewards.emotion_distance import AXIS_ERRORS, EMOTION_DISTANCES, emotion_distance_reward, emotion_reward

RewardFn = Callable[[jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]
_REGISTRY: dict[str, RewardFn] = {}
_HOST: dict[str, Callable] = {}


def _registrar(table: dict, name: str):
  def deco(fn):
    if name in _REGISTRY or name in _HOST:
      raise ValueError(f"reward {name!r} registered twice")
    table[name] = fn
    return fn
  return deco


def register(name: str):
  """Registers an in-graph reward fn (images, batch) -> (rewards, extras)."""
  return _registrar(_REGISTRY, name)


def register_host(name: str):
  """Registers a host reward factory config -> fn(images, batch) -> (rewards, extras)."""
  return _registrar(_HOST, name)


def names() -> list[str]:
  return sorted([*_REGISTRY, *_HOST])


def _check(name: str) -> None:
  if name not in _REGISTRY and name not in _HOST:
    raise ValueError(f"unknown reward {name!r}; registered: {names()}")


def get(name: str) -> RewardFn:
  _check(name)
  if name in _HOST:
    raise ValueError(f"reward {name!r} runs on the host (its task's score stage computes it), not in the graph")
  return _REGISTRY[name]


def is_host(name: str) -> bool:
  _check(name)
  return name in _HOST


def make_host(name: str, config) -> Callable:
  """The host reward fn of `name`, built from the job config (e.g. which judge to load)."""
  _check(name)
  return _HOST[name](config)


NORMALIZE = ("none", "batch", "group", "group_axes")
def zscore(x: jax.Array, eps: float = 1e-6, group_size: int | None = None) -> jax.Array:
  """(x - mean) / (std + eps) over the batch, or within each contiguous group of group_size rows."""
  if group_size is None:
    return (x - x.mean()) / (x.std() + eps)
  g = x.reshape(-1, group_size)
  return ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + eps)).reshape(x.shape)


def combine(images, batch, weights: Mapping[str, float], normalize: str = "none", group_size: int | None = None,
            emotion_distance: str = "l1"):
  """Sum of weight * reward and per-reward logs. normalize: "none", "batch" (each reward z-scored over
  the batch first), "group" (within each GRPO group of group_size rows, so a reward whose spread
  differs between groups cannot drown the others) or "group_axes" ("group", with an emotion reward, one
  whose extras hold AXIS_ERRORS, split into its valence and arousal terms 1 - |error| / 6, each z-scored
  and weighted w / 2: unnormalised their mean is the reward itself, 1 - (|dV| + |dA|) / 12, but within a
  group one axis's spread would set the ranking, and GRPO trades the other axis for it). emotion_distance "l2"
  rescores each emotion reward by `emotion_distance_reward` first ("l1" leaves it as computed)."""
  if emotion_distance not in EMOTION_DISTANCES:
    raise ValueError(f"emotion_distance={emotion_distance!r}; known: {EMOTION_DISTANCES}")
  if not weights:
    raise ValueError("no rewards configured: set config.rewards to {name: weight}")
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize={normalize!r}; known: {NORMALIZE}")
  total = 0.0
  logs = {}
  for name, w in sorted(weights.items()):
    if is_host(name):
      if f"reward/{name}" not in batch:
        raise ValueError(f"host reward {name!r} is missing from the batch: the task's score stage must compute it")
      r = batch[f"reward/{name}"]
      extras = {k[len(name) + 1:]: v for k, v in batch.items() if k.startswith(f"{name}/")}
    else:
      r, extras = get(name)(images, batch)
    if emotion_distance != "l1" and all(k in extras for k in AXIS_ERRORS):
      r = emotion_distance_reward(extras, emotion_distance)
    logs[f"reward/{name}"] = r
    logs.update({f"{name}/{k}": v for k, v in extras.items()})
    if normalize == "group_axes" and all(k in extras for k in AXIS_ERRORS):
      total = total + w * sum(zscore(1.0 - extras[k] / 6.0, group_size=group_size) for k in AXIS_ERRORS) / 2
      continue
    if normalize != "none":
      r = zscore(r, group_size=None if normalize == "batch" else group_size)
    total = total + w * r
  return jnp.asarray(total), logs


@register("colour_emotion")
def colour_emotion(images, batch):
  """Emotion reward from the untrained Valdez-Mehrabian colour judge (the tiny world's truth)."""
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


@register_host("lvlm_emotion")
def lvlm_emotion(config):
  """Emotion reward from the LVLM judge's greedy reading of each image (emojax.rewards.lvlm_emotion)."""
  from emojax import parallel
  from emojax.rewards.lvlm_emotion import LVLMJudgeReward
  train = config.rewards.lvlm.get("mesh", "replicated") == "train"
  return LVLMJudgeReward.from_config(config.rewards.lvlm, parallel.mesh_from_config(config.mesh) if train else None)


@register_host("pickscore")
def pickscore(config):
  """PickScore of each image for its prompt, divided by config.rewards.pickscore.scale (emojax.rewards.clip_scores)."""
  from emojax.rewards.clip_scores import PickScoreReward
  return PickScoreReward.from_config(config.rewards.pickscore)
