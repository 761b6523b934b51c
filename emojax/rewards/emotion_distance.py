"""The emotion reward both judges give: how close a reading (V̂, Â) of an image is to the requested (V, A), as a
bounded reward in [0, 1]. The colour judge's reading (`registry`'s colour_emotion) and the LVLM judge's
(`lvlm_emotion`) are scored by the same form, so their rewards share one scale."""
import jax.numpy as jnp

EMOTION_DISTANCES = ("l1", "l2")
AXIS_ERRORS = ("v_abs_err", "a_abs_err")  # extras of an emotion reward: its per-axis |error| (6 = the worst)


def emotion_reward(v_hat, a_hat, v, a, valid=None):
  """Reward in [0, 1]: 1 - (|V̂ - V| + |Â - A|) / 12, predictions clipped to [-3, 3].

  Linear in the L1 distance, so it ranks a group of samples equally well whether they are
  near or far from the target (an exp/Gaussian form goes flat far away, which leaves
  GRPO with zero-variance groups early in training). An invalid or non-finite prediction
  gets 0, the worst attainable reward (both errors 6).
  """
  v_hat, a_hat = jnp.asarray(v_hat, jnp.float32), jnp.asarray(a_hat, jnp.float32)
  ok = jnp.isfinite(v_hat) & jnp.isfinite(a_hat)
  if valid is not None:
    ok &= jnp.asarray(valid, bool)
  err = (jnp.abs(jnp.clip(v_hat, -3.0, 3.0) - v) + jnp.abs(jnp.clip(a_hat, -3.0, 3.0) - a))
  return jnp.where(ok, 1.0 - err / 12.0, 0.0)


def emotion_distance_reward(extras, distance: str):
  """An emotion reward recomputed from its per-axis errors: "l1" 1 - (|dV| + |dA|) / 12 (the judges' own form),
  "l2" 1 - sqrt(dV^2 + dA^2) / (6 sqrt 2). Where a target lies beyond what any image reads (a corner such as
  V -2.4, A -2.4 in the tiny world), the L1 optimum zeroes one axis and leaves the other at its worst, while the
  L2 optimum, the nearest reachable reading, lowers both. Each error is capped at 6 (a reading outside [-3, 3]
  stays in [0, 1]); rows an emotion reward marks unparsed get 0."""
  if distance not in EMOTION_DISTANCES:
    raise ValueError(f"emotion distance {distance!r}; known: {EMOTION_DISTANCES}")
  ev, ea = (jnp.minimum(jnp.asarray(extras[k], jnp.float32), 6.0) for k in AXIS_ERRORS)
  r = 1.0 - (ev + ea) / 12.0 if distance == "l1" else 1.0 - jnp.sqrt(ev * ev + ea * ea) / (6.0 * jnp.sqrt(2.0))
  return jnp.where(jnp.asarray(extras["parsed"]) > 0, r, 0.0) if "parsed" in extras else r
