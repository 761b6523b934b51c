"""Generator GRPO (the main job): wires the pretrained generator, EmoShapes prompts, rewards
and the pure functions of emojax.rl.generator_step into the shared trainer's three-stage step:
rollout (jitted) -> host rewards such as the LVLM judge (score) -> update (jitted).

The generator is a policy (emojax.pipelines.policy): the tiny world's pixel-space generator, or a diffusers
SD3 / SD3.5 pipeline directory (latents, VAE-decoded before rewards; frozen text encoders run on the host
batch; a zero-initialised V-A embedding; `model.pretrained` names either).

The colour judge is the evaluator whatever the reward is: its errors on the rollout images are
logged as judge/* every step, and on a fixed prompt x V-A grid (eval/*, a PNG in samples/) every
eval_every steps. At the end the generator is exported to <workdir>/export (the policy's `export`).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from emojax import optim, trainer
from emojax.data import pipeline, sources
from emojax.diffusion import schedule
from emojax.emotion.space import check_va
from emojax.evaluation.training_eval import EvalSet
from emojax.models import attention as attention_lib
from emojax.models import lora as lora_lib
from emojax.pipelines import policy as policy_lib
from emojax.rewards import registry as reward_registry
from emojax.rl import generator_step


def colour_judge_errors(images, batch) -> dict:
  """The independent evaluator's |error| against the requested V-A (logged, never optimised)."""
  _, err = reward_registry.get("colour_emotion")(images, batch)
  return {"judge/v_abs_err": err["v_abs_err"].mean(), "judge/a_abs_err": err["a_abs_err"].mean()}


LORA_FILE = policy_lib.LORA_FILE


class GeneratorGRPO:
  progress_keys = ("reward_mean", "judge/v_abs_err", "judge/a_abs_err")
  batch_description = "global batch (rl.prompts_per_step * rl.group_size)"

  def __init__(self, config, policy=None, host_rewards=None):
    """policy / host_rewards: built elsewhere instead of from config (emojax.plan: weight shapes, no judge)."""
    self.config = c = config
    m = c.model
    attention_lib.require(m.attention, what="model.attention")  # before anything is loaded or written
    if m.kind == "sd3" and policy is None:  # real scale: no shipped tiny judge or preference model stands in
      _require_paths(c)
    self.policy = p = policy or policy_lib.load(m.pretrained, m.kind, jnp.dtype(m.dtype), m.remat, m.scan_layers,
                                                attention=m.attention,
                                                resolution=m.resolution, max_sequence_length=m.max_sequence_length,
                                                emotion_tokens=m.emotion_tokens, seed=c.seed)
    self._pretrained = p.params
    self.lora = lora_lib.grpo_config(m.lora)
    if self.lora is not None:  # adapters on the MMDiT, their own parameter group (fresh: the pretrained model)
      self._pretrained = lora_lib.with_adapters(self._pretrained, p.adapted_group, self.lora, jax.random.key(c.seed))
    r = c.rl
    self.global_batch_size = r.prompts_per_step * r.group_size
    if self.global_batch_size % r.grad_accum:
      raise ValueError(f"batch {self.global_batch_size} (prompts_per_step*group_size) is not divisible by rl.grad_accum={r.grad_accum}")
    for name in ("rollout_chunks", "decode_chunks"):
      if self.global_batch_size % r[name]:
        raise ValueError(f"rl.{name}={r[name]} does not divide the batch of {self.global_batch_size} rows "
                         "(rl.prompts_per_step * rl.group_size)")
    if r.sde_steps > r.num_steps:
      raise ValueError(f"rl.sde_steps={r.sde_steps} exceeds rl.num_steps={r.num_steps}; at most every step is stochastic")
    weights = {k: float(v) for k, v in sorted(c.rewards.weights.items()) if float(v) != 0.0}
    if not weights:
      raise ValueError(f"every reward weight is 0 ({dict(c.rewards.weights)}); give one a nonzero weight, "
                       "e.g. --config.rewards.weights.lvlm_emotion=1")
    # host rewards (the LVLM judge) are built once here: loading a judge is not a per-step cost
    if host_rewards is None:
      host_rewards = {k: reward_registry.make_host(k, c) for k in weights if reward_registry.is_host(k)}
    self.host_rewards = host_rewards
    self.reward_weights = weights
    self.frozen = optim.check_frozen(self._pretrained, c.model.frozen, "generator")
    # frozen groups are stored in the compute dtype; the trainable ones, optimizer and KL reference stay float32
    self._pretrained = optim.frozen_in(self._pretrained, self.frozen, m.dtype)
    self.hp = generator_step.GRPOHyper(
        group_size=r.group_size, num_steps=r.num_steps, sigmas=tuple(float(s) for s in schedule.sd3_sigmas(r.num_steps, r.shift)),
        noise_level=r.noise_level, cfg_scale=r.cfg_scale, clip_eps=r.clip_eps, kl_beta=r.kl_beta, adv_clip=r.adv_clip,
        adv_eps=r.adv_eps, timestep_fraction=r.timestep_fraction, grad_accum=r.grad_accum, inner_epochs=r.inner_epochs,
        sde_steps=r.sde_steps or None, old_logprob=r.old_logprob, shared_init_noise=r.shared_init_noise,
        adv_std=r.adv_std, rollout_chunks=r.rollout_chunks, decode_chunks=r.decode_chunks,
        remat_timesteps=r.remat_timesteps,
        image_shape=p.image_shape, frozen=self.frozen)
    self.tx = optim.make_optimizer(c.optim, c.total_steps)
    self._experience, self._step, _ = generator_step.make_train_step(
        apply_velocity=self._velocity,
        encode_text=lambda params, ids: p.encode_text(lora_lib.without(params), ids),
        add_emotion=lambda params, text, va, mask: p.add_emotion(lora_lib.without(params), text, va, mask),
        reward_fn=lambda images, batch: reward_registry.combine(images, batch, weights, c.rewards.normalize,
                                                                r.group_size, c.rewards.emotion_distance),
        metrics_fn=colour_judge_errors, optimizer=self.tx, hp=self.hp, decode=p.decode)
    preference = None
    if c.eval.preference:
      preference = self.host_rewards.get("pickscore") or reward_registry.make_host("pickscore", c)
    self.eval_set = EvalSet(p, num_prompts=c.eval.num_prompts, seed=c.eval.seed,
                            num_steps=c.eval.num_steps, shift=r.shift, cfg_scale=r.cfg_scale, source="grid",
                            preference=preference)

  def _velocity(self, params, x, sigma, cond):
    if self.lora is None:
      return self.policy.velocity(params, x, sigma, cond)
    with lora_lib.enabled(params[lora_lib.GROUP], self.lora, root=self.policy.lora_root):
      return self.policy.velocity(lora_lib.without(params), x, sigma, cond)

  def merged(self, params):
    """Generator params with the LoRA folded into the MMDiT (what evaluation and export use); a frozen base is
    merged at the precision it was loaded in (the policy's params), not in its compute-dtype copy."""
    if self.lora is None:
      return params
    group = self.policy.adapted_group
    if group in self.frozen:
      params = {**params, group: self.policy.params[group]}
    return lora_lib.merge_group(params, group, self.lora)

  def make_loader(self, shard_index, shard_count):
    c = self.config
    source = sources.open_source(c.data, "train", size=self.policy.image_size)
    prompts = pipeline.per_process(c.rl.prompts_per_step, shard_count, "rl.prompts_per_step")  # groups stay whole
    return pipeline.grpo_prompt_loader(source, prompts_per_step=prompts, group_size=c.rl.group_size, seed=c.seed,
                                       shard_index=shard_index, shard_count=shard_count, target_mode=c.data.target_mode,
                                       worker_count=c.data.workers)

  def host_batch(self, raw):
    v, a = np.asarray(raw["valence"], np.float32), np.asarray(raw["arousal"], np.float32)
    check_va(v, a)
    prompts = [p.decode() if isinstance(p, bytes) else str(p) for p in raw[self.config.data.prompt_field]]
    return {**self.policy.prompt_fields(prompts, self.config.rl.cfg_scale != 1.0), "valence": v, "arousal": a}

  def initial_state(self, rng, shardings):
    return trainer.pretrained_state(self._pretrained, self.tx, self.frozen, shardings)

  def init_state(self, rng):  # shapes only: the trainer calls it under eval_shape
    return trainer.pretrained_state(self._pretrained, self.tx, self.frozen)

  def constants(self):
    """The KL reference (the pretrained trainable groups only: the frozen ones are the state's own) and what
    decoding needs (the VAE at SD3 scale)."""
    out = dict(self.policy.decode_constants())
    if self.config.rl.kl_beta > 0:
      out["ref_trainable"] = optim.partition(self._pretrained, self.frozen)[0]
    return out

  score_keys = ("images",)  # the experience fields `score` reads (the trainer fetches only these)

  def experience(self, state, batch, rng, constants):
    return self._experience(state, batch, rng, constants)

  def score(self, rows, raw):
    """Host rewards of this host's images against their requested V-A (nothing if none is configured)."""
    target = {"valence": np.asarray(raw["valence"], np.float32), "arousal": np.asarray(raw["arousal"], np.float32),
              "prompt": [str(p) for p in raw[self.config.data.prompt_field]]}
    out = {}
    for name, fn in self.host_rewards.items():
      r, extras = fn(rows["images"], target)
      out[f"reward/{name}"] = np.asarray(r, np.float32)
      out.update({f"{name}/{k}": np.asarray(v, np.float32) for k, v in extras.items()})
    return out

  def train_step(self, state, batch, rng, constants):
    return self._step(state, batch, rng, constants)

  def on_step_end(self, step, state, metrics, workdir):
    c = self.config
    out = {}
    if metrics.get("ratio_dev_first", 0.0) > c.rl.ratio_tolerance:
      logging.warning("step %d: on-policy ratio deviates from 1 by %.3g (> %.0e): log-prob recomputation is not "
                      "identical to the rollout", step, metrics["ratio_dev_first"], c.rl.ratio_tolerance)
    first = step == 1 and c.eval.at_start
    if first:  # the pretrained model's numbers, for the before/after comparison
      out.update({f"{k}_start": v for k, v in self.eval_set(self.merged(self._pretrained), _png(workdir, 0)).items()})
    if trainer.eval_due(step, c):
      out.update(self.eval_set(self.merged(state["params"]), _png(workdir, step)))
    return out

  def export(self, state, directory):
    """The fine-tuned generator as a generator directory: `--config.model.pretrained=<it>` reads it. Tiny: with
    LoRA its MMDiT is the merged one, and the adapters sit beside it as `pytorch_lora_weights.safetensors`
    (diffusers' `load_lora_weights` layout, for the unmerged `transformer/` of the pretrained directory).
    SD3: the V-A embedding and the unmerged adapters (or the transformer, when it trained) beside the name of
    the base pipeline (policy.SD3Policy.export)."""
    params = trainer.host_params(state)
    dtype = np.dtype(self.config.export_dtype)
    lora = None if self.lora is None else (params[lora_lib.GROUP], self.lora)
    if isinstance(self.policy, policy_lib.SD3Policy):
      self.policy.export(directory, lora_lib.without(params), dtype, lora=lora,
                         transformer_trained="transformer" not in self.frozen)
      return
    write_lora = None if lora is None else (lambda tmp: lora_lib.save(os.path.join(tmp, LORA_FILE), *lora))
    self.policy.export(directory, jax.device_get(self.merged(params)), dtype, write_more=write_lora)


def _require_paths(c):
  """One line naming the first directory an SD3 run lacks (the sd35m preset leaves them to the user)."""
  needs = [("model.pretrained", policy_lib.SD3_HINT)]
  if c.rewards.weights.get("lvlm_emotion", 0.0):
    needs.append(("rewards.lvlm.path", "a Qwen2.5-VL emotion judge (an emojax LVLM export or a transformers "
                                       "Qwen2.5-VL directory, e.g. Qwen2.5-VL-7B-Instruct trained by configs/lvlm.py)"))
  if c.rewards.weights.get("pickscore", 0.0) or c.eval.preference:
    needs.append(("rewards.pickscore.path", "a transformers CLIP preference model directory (PickScore_v1)"))
  for field, what in needs:
    value = c
    for part in field.split("."):
      value = value[part]
    if not value:
      raise ValueError(f"model.kind=sd3 needs --config.{field}=DIR: {what}")


def _png(workdir, step):
  path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path
