"""GRPO pieces shared by the generator and the LVLM: pure array functions."""
import jax
import jax.numpy as jnp

# A group whose reward std is below this carries no learning signal: its advantages are set
# to exactly 0 (the formula would give rounding noise / eps) and it counts as zero-std.
ZERO_STD_TOL = 1e-6


ADV_STD_SCOPES = ("group", "batch")


def group_advantages(rewards, group_size: int, eps: float = 1e-4, adv_clip: float = 5.0, std_scope: str = "group"):
  """Group-relative advantages A = clip((r − mean_g) / (std + eps), ±adv_clip).

  Args:
    rewards: (B,), groups contiguous: rows [i·G, (i+1)·G) are the G samples of prompt i.
    group_size: G; B % G must be 0 (ValueError otherwise, from static shapes).
    std_scope: "group" divides by each group's std_g (GRPO, Flow-GRPO); "batch" by the pooled within-group
      std (the RMS of r − mean_g over the batch), so a group whose rewards barely differ (a target no image
      reaches, where the reward is flat and its differences are the judge's noise) gets advantages as small as
      its spread instead of ±1.

  std_g is the population std (ddof=0). Groups with std_g < ZERO_STD_TOL get A = 0.

  Returns:
    (advantages (B,) float32, stats) with stats zero_std_ratio (fraction of such groups),
    reward_mean, reward_std (over the batch, ddof=0).
  """
  if std_scope not in ADV_STD_SCOPES:
    raise ValueError(f"std_scope={std_scope!r}; known: {ADV_STD_SCOPES}")
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1 or rewards.shape[0] % group_size:
    raise ValueError(f"rewards of shape {rewards.shape} do not split into groups of {group_size}")
  groups = rewards.reshape(-1, group_size)
  centred = groups - groups.mean(axis=1, keepdims=True)
  std_g = groups.std(axis=1, keepdims=True)
  zero_std = std_g < ZERO_STD_TOL
  std = std_g if std_scope == "group" else jnp.sqrt(jnp.mean(centred * centred))
  adv = jnp.where(zero_std, 0.0, jnp.clip(centred / (std + eps), -adv_clip, adv_clip))
  stats = {
      "zero_std_ratio": zero_std.mean(),
      "reward_mean": rewards.mean(),
      "reward_std": rewards.std(),
  }
  return adv.reshape(-1), stats


def masked_mean(x, mask, axis=None):
  """Mean of x over `axis` where mask is set; 0 where the mask is empty."""
  mask = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
  count = mask.sum(axis=axis)
  return jnp.where(count > 0, (x * mask).sum(axis=axis) / jnp.maximum(count, 1e-12), 0.0)


def clipped_policy_loss(log_prob, old_log_prob, advantages, clip_eps, mask=None):
  """PPO-clip surrogate per element: max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)).

  ratio = exp(log_prob − old_log_prob). log_prob is (B,) for the generator or (B, L) per
  token for the LVLM; advantages (B,) broadcast over trailing dims. `mask` (same shape as
  log_prob) restricts the stats only; the loss is returned per element, unreduced.

  Returns:
    (loss of log_prob's shape, stats), stats (stop-gradient): ratio_mean, ratio_max_dev =
    max |ratio − 1| (exactly 0 on-policy), clip_frac_high (ratio > 1+ε), clip_frac_low
    (ratio < 1−ε), approx_kl = mean(½(log_prob − old_log_prob)²).
  """
  advantages = jnp.asarray(advantages, jnp.float32)
  advantages = advantages.reshape(advantages.shape + (1,) * (log_prob.ndim - advantages.ndim))
  log_ratio = log_prob - old_log_prob
  ratio = jnp.exp(log_ratio)
  loss = jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps))

  ratio, log_ratio = jax.lax.stop_gradient((ratio, log_ratio))
  mask = jnp.ones_like(ratio) if mask is None else mask
  stats = {
      "ratio_mean": masked_mean(ratio, mask),
      "ratio_max_dev": jnp.max(jnp.where(mask > 0, jnp.abs(ratio - 1), 0.0)),
      "clip_frac_high": masked_mean((ratio > 1 + clip_eps).astype(jnp.float32), mask),
      "clip_frac_low": masked_mean((ratio < 1 - clip_eps).astype(jnp.float32), mask),
      "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
  }
  return loss, stats


def flow_kl(mean, mean_ref, sigma_t):
  """Generator KL per sample (B,): mean_dims((μθ − μref)²) / (2σ_t²).

  sigma_t is `sde_sigma_t` (no sqrt(−dt) factor), a scalar or (B,).
  """
  per_sample = jnp.mean((mean - mean_ref) ** 2, axis=tuple(range(1, mean.ndim)))
  return per_sample / (2 * jnp.asarray(sigma_t, jnp.float32) ** 2)


def k3_kl(logp, ref_logp):
  """Token-level k3 estimator of KL(π‖π_ref): exp(ref − lp) − (ref − lp) − 1, ≥ 0.

  Written as expm1(d) − d, clamped at 0, so tiny |d| neither cancels to noise nor goes
  negative.
  """
  d = ref_logp - logp
  return jnp.maximum(jnp.expm1(d) - d, 0.0)


def aggregate_token_loss(per_token, mask, mode: str = "sequence_mean"):
  """Reduces a (B, L) per-token loss to a scalar over the tokens where mask is set.

  "sequence_mean": mean over sequences of each sequence's masked token mean (GRPO; every
  sequence weighs the same). "token_mean": masked sum over all tokens / their count (DAPO;
  every token weighs the same, so longer answers weigh more). A fully masked sequence
  counts as a 0 in "sequence_mean".
  """
  if mode == "sequence_mean":
    return masked_mean(per_token, mask, axis=-1).mean()
  if mode == "token_mean":
    return masked_mean(per_token, mask)
  raise ValueError(f"unknown aggregation mode {mode!r}")
