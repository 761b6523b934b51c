"""The colour judge as a reward: how close the colour model's reading (`emojax.emotion.colour`) of
an image is to the requested (V, A). The same bounded form scores the LVLM judge's readings."""
import jax.numpy as jnp


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
