"""One generator GRPO step as two pure functions, the trainer's three-stage step:

  experience (jitted): rollout of the SDE sampler -> trajectory, images (and the frozen text states);
  [score (host, the task): rewards that need host code, e.g. the LVLM judge parsing its answers;]
  train_step (jitted): rewards -> group advantages -> clipped update of the trainable groups.

Rewards and evaluator metrics come in as functions of (images, batch), like the velocity: this
module knows diffusion and GRPO, not what a reward is. Frozen parameter groups (hp.frozen) are
split off before differentiation (`emojax.optim`), and the KL reference is the initial copy of the
trainable groups alone, combined with the (shared, unchanging) frozen groups.

The rollout, the re-scoring of sampled transitions and the reference-model KL all use the same
classifier-free-guided velocity, so on the first inner epoch the importance ratio is 1 up to float
rounding (logged as `ratio_dev_first`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from emojax import optim, parallel
from emojax.diffusion import sde as sde_lib
from emojax.diffusion.rollout import cfg_velocity, rollout
from emojax.rl import grpo


@dataclasses.dataclass(frozen=True)
class GRPOHyper:
  group_size: int
  num_steps: int  # sampling steps
  sigmas: tuple  # the (num_steps + 1,) schedule, static
  noise_level: float
  cfg_scale: float
  clip_eps: float
  kl_beta: float
  adv_clip: float
  adv_eps: float
  timestep_fraction: float  # of the stochastic steps, trained per sample
  grad_accum: int
  inner_epochs: int
  image_shape: tuple  # (H, W, C)
  frozen: tuple = ("text",)  # top-level parameter groups kept out of the gradient
  sde_steps: int | None = None  # leading stochastic (trained) steps; the rest are Euler steps (None = all)
  # the behaviour log-prob of the PPO ratio: "rollout" (the sampler's) or "update" (the first update's own
  # forward, stop-gradient: the sampler and the update are separate XLA programs, and in bf16 their rounding
  # differs by more than a 1e-4 clip range; the first epoch is then exactly on-policy)
  old_logprob: str = "rollout"
  # one initial noise per group (DanceGRPO; Flow-GRPO's same_latent): the group's rewards then differ only by the
  # SDE steps' noise, the part of the spread the policy gradient credits
  shared_init_noise: bool = False
  adv_std: str = "group"  # advantages' divisor: each group's reward std or the batch's pooled one (grpo)
  rollout_chunks: int = 1  # the rollout's velocity forwards take the rows in this many sequential parts
  decode_chunks: int = 1  # and so does the decode of the final samples (the VAE at SD3 scale)
  # recompute each trained timestep's forward in the backward: the update then stores one timestep's activations
  # (the model's own remat points) at a time instead of every timestep's, for one more forward per timestep
  remat_timesteps: bool = False

  @property
  def stochastic_steps(self) -> int:
    return self.num_steps if self.sde_steps is None else self.sde_steps

  @property
  def train_timesteps(self) -> int:
    return max(1, int(round(self.timestep_fraction * self.stochastic_steps)))

  @property
  def text_frozen(self) -> bool:
    return "text" in self.frozen


def make_train_step(*, apply_velocity: Callable, encode_text: Callable, add_emotion: Callable,
                    reward_fn: Callable, metrics_fn: Callable, optimizer: optax.GradientTransformation,
                    hp: GRPOHyper, decode: Callable | None = None):
  """Builds (experience, train_step, sample).

  experience(state, batch, rng, constants) -> batch-major pytree: traj_x, traj_x_next (B, T, H, W, C),
    traj_log_prob (B, T) over the T = hp.stochastic_steps stochastic steps, images (B, H, W, C) in [-1, 1], and with hp.text_frozen the text states.
  train_step(state, batch | experience | host scores, rng, constants) -> (state, metrics);
    constants["ref_trainable"] is the reference generator's trainable groups (absent when
    hp.kl_beta == 0); state["opt_state"] covers the trainable groups.

  apply_velocity(params, x, sigma (B,), cond) -> v;  encode_text(params, input_ids) -> text;
  add_emotion(params, text, va, emotion_mask) -> cond;  reward_fn(images, batch) -> (rewards (B,),
  {name: (B,) logs}), e.g. a weighted sum of registered rewards;  metrics_fn(images, batch) ->
  {name: scalar}, e.g. an independent judge's errors (logged, never optimised);  decode(constants, x0) ->
  images in [-1, 1] that rewards read (a VAE in latent space; default: x0 clipped, pixel space).
  batch: input_ids (B, L), uncond_ids (B, L) (or the text states "text" / "text_uncond" computed on the
  host), valence (B,), arousal (B,); groups contiguous.
  With hp.text_frozen the text is encoded once per step, in experience, outside the gradient (the
  reference model shares the frozen text encoder, so its text is the same).
  """
  sigmas = jnp.asarray(hp.sigmas, jnp.float32)
  t_total, k_train = hp.stochastic_steps, hp.train_timesteps

  def text_of(params, batch):
    if "text" in batch:  # precomputed (frozen text encoder)
      return batch["text"], batch.get("text_uncond")
    text = encode_text(params, batch["input_ids"])
    return text, (encode_text(params, batch["uncond_ids"]) if hp.cfg_scale != 1.0 else None)

  def conditioning(params, batch):
    text, text_uncond = text_of(params, batch)
    va = jnp.stack([batch["valence"], batch["arousal"]], -1)
    cond = add_emotion(params, text, va, None)
    uncond = None if text_uncond is None else add_emotion(params, text_uncond, va, jnp.zeros_like(batch["valence"]))
    return cond, uncond

  def velocity(params, x, sigma, cond, uncond, chunks: int = 1):
    apply = lambda x_, s_, c_: apply_velocity(params, x_, s_, c_)
    one = lambda x_, s_, c_, u_: cfg_velocity(apply, c_, u_, hp.cfg_scale)(x_, s_)
    return parallel.map_rows(one, chunks, x, jnp.broadcast_to(sigma, x.shape[:1]), cond, uncond)

  def sample(params, batch, rng):
    cond, uncond = conditioning(params, batch)
    b = batch["valence"].shape[0]
    k_init, k_roll = jax.random.split(rng)
    if hp.shared_init_noise:  # groups are contiguous rows
      x_init = jnp.repeat(jax.random.normal(k_init, (b // hp.group_size, *hp.image_shape), jnp.float32), hp.group_size, 0)
    else:
      x_init = jax.random.normal(k_init, (b, *hp.image_shape), jnp.float32)
    x_init = parallel.constrain_batch(x_init)
    fn = lambda x, s: velocity(params, x, s, cond, uncond, hp.rollout_chunks)
    return rollout(fn, x_init, sigmas, k_roll, noise_level=hp.noise_level, method="sde", sde_steps=hp.sde_steps)

  if hp.old_logprob not in ("rollout", "update"):
    raise ValueError(f"old_logprob={hp.old_logprob!r}: use 'rollout' or 'update'")

  def micro_loss(trainable, frozen, ref_trainable, mb, own_old: bool):
    """Mean GRPO loss of one micro-batch over its chosen timesteps (time-major (K, b, ...)); aux: stats and
    the (K, b) log-probs (stop-gradient). own_old: the ratio's old log-prob is this forward's own."""
    params = optim.merge(trainable, frozen)
    ref_params = optim.merge(ref_trainable, frozen) if hp.kl_beta > 0 else None
    cond, uncond = conditioning(params, mb)
    ref_cond, ref_uncond = conditioning(ref_params, mb) if hp.kl_beta > 0 else (None, None)

    def per_t(carry, t):
      x, x_next, sig, sig_next, old_lp = (mb["x"][t], mb["x_next"][t], mb["sigma"][t], mb["sigma_next"][t],
                                          mb["old_log_prob"][t])
      v = velocity(params, x, sig, cond, uncond)
      _, lp, mean, _ = sde_lib.sde_step(v, x, sig, sig_next, hp.noise_level, x_next=x_next)
      lp_const = jax.lax.stop_gradient(lp)
      pl, st = grpo.clipped_policy_loss(lp, lp_const if own_old else old_lp, mb["advantages"], hp.clip_eps)
      out = {"policy_loss": pl.mean(), "ratio_mean": st["ratio_mean"], "ratio_dev": st["ratio_max_dev"],
             "clip_frac_high": st["clip_frac_high"], "clip_frac_low": st["clip_frac_low"],
             "approx_kl": st["approx_kl"], "log_prob": lp_const,
             # the update's policy against the sampler's log-prob, whichever old log-prob the ratio uses
             "sampler_ratio_dev": jnp.max(jnp.abs(jnp.exp(lp_const - mb["log_prob"][t]) - 1.0))}
      loss = pl.mean()
      if hp.kl_beta > 0:
        v_ref = jax.lax.stop_gradient(velocity(ref_params, x, sig, ref_cond, ref_uncond))
        _, _, mean_ref, _ = sde_lib.sde_step(v_ref, x, sig, sig_next, hp.noise_level, x_next=x_next)
        kl = grpo.flow_kl(mean, mean_ref, sde_lib.sde_sigma_t(sig, sig_next, hp.noise_level)).mean()
        loss = loss + hp.kl_beta * kl
        out["kl"] = kl
      return carry + loss, out

    body = jax.checkpoint(per_t, prevent_cse=False) if hp.remat_timesteps else per_t
    total, per = jax.lax.scan(body, 0.0, jnp.arange(k_train))
    log_prob = per.pop("log_prob")
    stats = jax.tree.map(jnp.mean, per)
    stats["ratio_dev"], stats["sampler_ratio_dev"] = per["ratio_dev"].max(), per["sampler_ratio_dev"].max()
    return total / k_train, (stats, log_prob)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def update(params, ref_trainable, opt_state, train_batch, own_old: bool):
    """One optimizer update of the trainable groups from `grad_accum` micro-batches (a scan,
    gradients averaged); also returns the update's (B, K) log-probs of the sampled transitions."""
    trainable, frozen = optim.partition(params, hp.frozen)
    n = hp.grad_accum
    # micro-batch i holds rows i, i + n, ...: each spans every device's rows of the batch-sharded train batch (a
    # contiguous split would put whole micro-batches on single devices and replicate their compute)
    micro = jax.tree.map(lambda x: parallel.split_rows(x, n), train_batch)
    # the loss scans over timesteps: per-timestep fields become time-major (K, b, ...)
    micro = {k: (jnp.swapaxes(v, 1, 2) if k in _TIME_MAJOR else v) for k, v in micro.items()}

    def acc(carry, mb):
      g_sum, l_sum = carry
      (l, (stats, lp)), g = grad_fn(trainable, frozen, ref_trainable, mb, own_old)
      return (jax.tree.map(jnp.add, g_sum, g), l_sum + l), (stats, lp)

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (g, l), (stats, lp) = jax.lax.scan(acc, (zeros, 0.0), micro)
    g = jax.tree.map(lambda x: x / n, g)
    stats = jax.tree.map(jnp.mean, stats) | {k: stats[k].max() for k in ("ratio_dev", "sampler_ratio_dev")}
    trainable, opt_state, stats["grad_norm"] = optim.apply_gradients(optimizer, g, opt_state, trainable)
    lp = jnp.transpose(lp, (2, 0, 1)).reshape(-1, lp.shape[1])  # (n, K, b) -> (b, n, K) -> (B, K): row j·n + i
    return optim.merge(trainable, frozen), opt_state, l / n, stats, lp

  def experience(state, batch, rng, constants):
    params = jax.lax.stop_gradient(state["params"])
    k_roll, _ = jax.random.split(rng)
    out = {}
    if hp.text_frozen:
      text, text_uncond = text_of(params, batch)
      out = {"text": text, **({"text_uncond": text_uncond} if text_uncond is not None else {})}
    x0, traj = sample(params, {**batch, **out}, k_roll)
    batch_major = lambda a: jnp.swapaxes(a, 0, 1)
    return out | {"traj_x": batch_major(traj.x), "traj_x_next": batch_major(traj.x_next),
                  "traj_log_prob": batch_major(traj.log_prob),
                  "images": jnp.clip(x0, -1.0, 1.0) if decode is None else
                  parallel.map_rows(lambda z: decode(constants, z), hp.decode_chunks, x0)}

  def train_step(state, batch, rng, constants):
    params, opt_state = state["params"], state["opt_state"]
    _, k_time = jax.random.split(rng)
    images = batch["images"]
    reward, reward_logs = reward_fn(images, batch)
    adv, adv_stats = grpo.group_advantages(reward, hp.group_size, hp.adv_eps, hp.adv_clip, hp.adv_std)

    b = reward.shape[0]
    # each sample trains on its own random subset of k_train timesteps, gathered batch-major (B, K, ...)
    order = jnp.argsort(jax.random.uniform(k_time, (b, t_total)), axis=1)[:, :k_train]  # (B, K)
    take = lambda a: jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)
    train_batch = {
        "x": take(batch["traj_x"]), "x_next": take(batch["traj_x_next"]), "log_prob": take(batch["traj_log_prob"]),
        "old_log_prob": take(batch["traj_log_prob"]),
        "sigma": sigmas[order], "sigma_next": sigmas[order + 1],
        "advantages": adv, "valence": batch["valence"], "arousal": batch["arousal"],
        **{k: batch[k] for k in ("input_ids", "uncond_ids", "text", "text_uncond") if k in batch},
    }

    metrics = {}
    for epoch in range(hp.inner_epochs):
      own_old = epoch == 0 and hp.old_logprob == "update"
      params, opt_state, loss, stats, lp = update(params, constants.get("ref_trainable"), opt_state, train_batch,
                                                  own_old)
      if own_old:  # later epochs compare to the first update's forward, not the sampler's
        train_batch = {**train_batch, "old_log_prob": lp}
      if epoch == 0:
        metrics["ratio_dev_first"] = stats["ratio_dev"]
        metrics["loss"] = loss
        metrics.update({k: v for k, v in stats.items() if k != "ratio_dev"})
    metrics.update({"reward_mean": reward.mean(), "reward_std": reward.std(),
                    "zero_std_ratio": adv_stats["zero_std_ratio"]})
    metrics.update({k: v.mean() for k, v in reward_logs.items()})
    metrics.update(metrics_fn(images, batch))
    return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return experience, train_step, sample


_TIME_MAJOR = ("x", "x_next", "log_prob", "old_log_prob", "sigma", "sigma_next")
