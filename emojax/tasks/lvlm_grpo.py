"""LVLM GRPO: the SFT judge sharpened by multi-task rewards (format, valence, arousal, category), and with
data.feedback_share > 0 (`configs/lvlm.py:feedback`) the feedback task trained beside it.

The trainer's three-stage step (emojax.trainer):
  experience (jitted): G answers per EmoShapes image, sampled with the KV cache at the configured
    temperature / top_p, with their per-token log-probs at that temperature (the old policy's);
  score (host): answers decoded to text and parsed; `multitask_reward` against the image's own V, A
    and category (the colour judge's labels), per-component rewards kept for the metrics; a feedback
    row (`pipeline.FeedbackTask`: the row's neutral prompt, a uniform target, the image's own V-A as the
    reading) earns `rewards.feedback.feedback_reward`: format, content kept, and what the rewrite
    achieves — the generator (feedback.generator) renders it at the target from noise shared by the
    group, a frozen LVLM judge (feedback.judge, not the policy, and never the colour judge) reads it;
  train_step (jitted): group advantages, token-level clipped loss + β·k3 KL to the SFT judge
    (emojax.rl.lvlm_step), one optax update per inner epoch.
The batch has one row per image (B = images_per_step); experience and scores have B·G rows, sample g
of image b at row b·G + g, so a device holds its images' samples under the same batch sharding.

Every log-prob (the sampler's, the training scorer's, the old and the reference ones) is taken at the
sampling temperature: the policy optimised is the policy sampled from. With rescore_old (the default)
the ratio's old log-probs are the training scorer's own re-scoring of the sampled answers and the
sampler's gap to them is logged (sampler_logprob_dev); without it they are the sampler's, and the
first inner iteration's ratio measures that gap instead (ratio_dev_first; 1e-5 is their tested
agreement): a divergence from 1 is a numerics bug.
"""
from __future__ import annotations


import contextlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from emojax import optim, trainer
from emojax.data import feedback, judge_targets, pipeline
from emojax.emotion.answer import parse_answers
from emojax.emotion.colour import colour_judge_np
from emojax.io import assets
from emojax.lvlm import judge, sampling
from emojax.lvlm import processor as proc_lib
from emojax.models import attention as attention_lib
from emojax.models import lora as lora_lib
from emojax.pipelines import feedback_loop, tiny
from emojax.rewards import feedback as fb_rewards
from emojax.rewards import multitask
from emojax.rewards.lvlm_emotion import LVLMJudgeReward
from emojax.rl import lvlm_step


SHIPPED_SFT_JUDGE = "lvlm_tiny_sft"


class LVLMGRPO:
  progress_keys = ("reward_mean", "reward/valence", "reward/format", "reward/feedback_content", "eval/valence_mae")

  def __init__(self, config, lvlm=None):
    """lvlm: (model, config, params, processor) built elsewhere instead of read from model.pretrained (emojax.plan:
    weight shapes)."""
    self.config = c = config
    attention_lib.require(c.model.attention, what="model.attention")  # before anything is loaded or written
    if lvlm is None and not c.model.pretrained and not c.model.allow_shipped:
      raise ValueError("this preset needs --config.model.pretrained=DIR: a transformers Qwen2.5-VL directory "
                       "(e.g. Qwen2.5-VL-7B-Instruct) or an LVLM export of configs/sft_lvlm.py")
    self.model, self.qcfg, self._pretrained, self.processor = lvlm or judge.load_lvlm(
        c.model.pretrained or assets.asset_dir(SHIPPED_SFT_JUDGE))
    # compute in model.dtype; params, optimizer, log-probs (logits are cast to float32) and the loss stay float32
    self.model = self.model.clone(remat=c.model.remat, dtype=jnp.dtype(c.model.dtype), scan_layers=c.model.scan_layers,
                                  attention=c.model.attention)
    self.global_batch_size = c.images_per_step
    self.lora = lora_lib.grpo_config(c.model.lora)
    if self.lora is not None:  # adapters on the decoder, their own parameter group (fresh: the SFT judge)
      self._pretrained = lora_lib.with_adapters(self._pretrained, "language_model", self.lora, jax.random.key(c.seed))
    need = judge_targets.max_target_tokens(self.processor)
    if c.max_new_tokens < need:  # fine for smoke runs; a real run could never earn the format reward
      logging.warning("max_new_tokens=%d is below the longest SFT answer (%d tokens): full answers get truncated",
                      c.max_new_tokens, need)
    if c.images_per_step % c.grad_accum:
      raise ValueError(f"images_per_step={c.images_per_step} is not divisible by grad_accum={c.grad_accum}")
    self.frozen = frozen = optim.check_frozen(self._pretrained, c.model.frozen, "LVLM")
    self._pretrained = optim.frozen_in(self._pretrained, frozen, c.model.dtype)  # trainable groups stay float32
    self.weights = {k: float(v) for k, v in c.rewards.weights.items()}
    _, parts = multitask.multitask_reward([], [], [], [], self.weights, c.rewards.eps)  # bad names / eps fail here
    self._reward_keys = ["reward/parsed"] + [f"reward/{k}" for k in parts]  # every step logs the same keys
    self.hp = lvlm_step.LVLMHyper(
        group_size=c.group_size, clip_eps=c.clip_eps, kl_beta=c.kl_beta, aggregation=c.aggregation,
        grad_accum=c.grad_accum, inner_epochs=c.inner_epochs, adv_eps=c.adv_eps, adv_clip=c.adv_clip, frozen=frozen,
        rescore_old=c.rescore_old)
    self.tx = optim.make_optimizer(c.optim, c.total_steps)
    self._grid = proc_lib.image_grid(self.processor, c.data.image_size, 1)[0]  # every image has this (t, h, w)
    self._step = lvlm_step.make_train_step(logprob_fn=self.logprobs, optimizer=self.tx, hp=self.hp)
    self.eval_split = pipeline.held_out_split(c.data, c.eval.seed, c.eval.num_examples)
    self.last_texts: list[str] = []
    self.eval_feedback = []
    if c.data.feedback_share > 0:
      self._init_feedback()

  def _init_feedback(self):
    """The feedback task's lengths, reward weights, renderer, frozen judge and held-out turns."""
    c = self.config
    if not self.processor.is_tiny:
      raise ValueError("data.feedback_share > 0 needs the tiny world's byte-level LVLM (its feedback answers are "
                       "EmoShapes rewrites); set data.feedback_share=0 for this model")
    need_prompt, need_new = feedback_loop.feedback_lengths(self.processor, c.data.image_size)
    if c.max_prompt_len < need_prompt or c.max_new_tokens < need_new:
      raise ValueError(f"max_prompt_len={c.max_prompt_len}, max_new_tokens={c.max_new_tokens}: the feedback task needs "
                       f"at least {need_prompt} and {need_new} (use configs/lvlm.py:feedback)")
    f = c.feedback
    self.fb_weights = {k: float(v) for k, v in f.weights.items()}
    _, parts = fb_rewards.feedback_reward([], [], np.zeros((0, 2)), [], self.fb_weights, render=None, read=None,
                                          eps=f.eps)
    self._reward_keys += [f"reward/feedback_{k}" for k in parts]
    gen, gcfg, gparams = tiny.load_generator(f.generator)
    gparams = jax.device_put(gparams)
    self._render = lambda prompts, va, ids: tiny.generate_uint8(
        gen, gcfg, gparams, prompts, np.asarray(va, np.float32), seed=f.noise_seed, batch_size=f.batch_size,
        num_steps=f.num_steps, shift=f.shift, cfg_scale=f.cfg_scale, progress=False, noise_ids=ids)
    reader = LVLMJudgeReward.from_config(f.judge)
    self._read = lambda images: parse_answers(reader.answers(images))
    self.eval_feedback = [feedback.feedback_example(c.eval.seed, i, c.data.image_size)
                          for i in range(c.eval.feedback_examples)]

  # ------------------------------------------------------------------------------------------ data

  def make_loader(self, shard_index, shard_count):
    return pipeline.image_loader(self.config.data, batch_size=self.config.images_per_step, seed=self.config.seed,
                                 shard_index=shard_index, shard_count=shard_count)

  def host_batch(self, raw):
    """The judge (or feedback) question per image; pixel_values (B, patches, dim) so each image's patches shard with it."""
    images = np.asarray(raw["image"])
    questions = feedback.task_questions(raw, judge.question(self.processor), short=self.processor.is_tiny)
    p = proc_lib.prompt_batch(self.processor, images, questions, self.config.max_prompt_len)
    return {"input_ids": p["input_ids"], "attention_mask": p["attention_mask"],
            "pixel_values": p["pixel_values"].reshape(len(images), -1, p["pixel_values"].shape[-1])}

  # ----------------------------------------------------------------------------------------- state

  def init_state(self, rng):  # shapes only: the trainer calls it under eval_shape
    return trainer.pretrained_state(self._pretrained, self.tx, self.frozen)

  def initial_state(self, rng, shardings):
    return trainer.pretrained_state(self._pretrained, self.tx, self.frozen, shardings)

  def constants(self):
    """The k3 KL's reference: the SFT judge's trainable groups (its frozen ones are the state's own), stored in
    model.dtype like the frozen groups."""
    if self.config.kl_beta <= 0:  # no reference forward at all
      return {}
    trainable = optim.partition(self._pretrained, self.frozen)[0]  # only read by a forward: the compute dtype
    return {"ref_trainable": optim.frozen_in(trainable, trainable, self.config.model.dtype)}

  # ------------------------------------------------------------------------------------------ step

  def _prompts(self, batch):
    px = batch["pixel_values"]
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=px.reshape(-1, px.shape[-1]), image_grid_thw=(self._grid,) * px.shape[0])

  @contextlib.contextmanager
  def _adapted(self, params):
    """Within it the model runs with the LoRA of `params` (if any); yields the model's own params."""
    if self.lora is None:
      yield params
      return
    with lora_lib.enabled(params[lora_lib.GROUP], self.lora, root=("language_model",)):
      yield lora_lib.without(params)

  def merged(self, params):
    """The judge's params with the LoRA folded into the decoder (what evaluation and export use)."""
    return params if self.lora is None else lora_lib.merge_group(params, "language_model", self.lora)

  def logprobs(self, params, prompts, tokens, mask):
    """Per-token log-probs at the sampling temperature of completions (rows b·G + g) for a (micro-)batch of
    prompts; traceable."""
    p = self._prompts(prompts)
    with self._adapted(params) as base:
      return sampling.completion_logprobs(self.model, base, p["input_ids"], p["attention_mask"], p["pixel_values"],
                                          tokens, mask, p["image_grid_thw"], self.config.temperature,
                                          self.config.model.logprob_chunk)

  def experience(self, state, batch, rng, constants):
    """G sampled answers per image. `sampling.sample` is itself a jit with static model/grid/sizes; called
    here under the trainer's jit it is traced inline (jit of jit), the static arguments being Python
    values the task holds, so nothing about the trace depends on data."""
    c = self.config
    with self._adapted(state["params"]) as base:
      out = sampling.sample(self.model, base, self._prompts(batch), rng, max_new_tokens=c.max_new_tokens,
                            eos_ids=self.processor.eos_ids, pad_id=self.processor.pad_id, num_samples=c.group_size,
                            temperature=c.temperature, top_p=c.top_p)
    return {"tokens": out["tokens"], "old_logprobs": out["logprobs"], "completion_mask": out["mask"],
            "finished": out["finished"]}

  def score(self, rows, raw):
    """Host: decode this host's B·G answers; judge rows are rewarded against each image's own labels,
    feedback rows by `fb_rewards.feedback_reward`. Components of the other task's rows are NaN (the
    step's metrics average each component over its own task's rows)."""
    c, g = self.config, self.config.group_size
    texts = [self.processor.decode(t[m > 0], skip_special_tokens=True)
             for t, m in zip(np.asarray(rows["tokens"]), np.asarray(rows["completion_mask"]))]
    rep = lambda k: np.repeat(np.asarray(raw[k]), g, axis=0)
    is_fb = rep("task").astype(bool) if "task" in raw else np.zeros(len(texts), bool)
    total = np.zeros(len(texts), np.float32)
    out = {k: np.full(len(texts), np.nan, np.float32) for k in self._reward_keys}  # NaN: not this row's task

    def put(name, idx, values):
      out[name][idx] = values

    jr = np.flatnonzero(~is_fb)
    if len(jr):
      answers = parse_answers([texts[i] for i in jr])
      t, parts = multitask.multitask_reward(answers, rep("valence")[jr], rep("arousal")[jr], rep("category")[jr],
                                               self.weights, c.rewards.eps)
      total[jr] = t
      put("reward/parsed", jr, [a is not None for a in answers])
      for k, v in parts.items():
        put(f"reward/{k}", jr, v)
    fr = np.flatnonzero(is_fb)
    if len(fr):
      prompts = [str(p) for p in rep("prompt")[fr]]
      targets = np.stack([rep("feedback_valence")[fr], rep("feedback_arousal")[fr]], -1)
      # one noise per group (its answers differ only in their words), a pure function of the row
      ids = [zlib.crc32(f"{p}|{v:.1f}|{a:.1f}".encode()) % (1 << 20) for p, (v, a) in zip(prompts, targets)]
      t, parts = fb_rewards.feedback_reward([texts[i] for i in fr], prompts, targets, ids, self.fb_weights,
                                            render=self._render, read=self._read, eps=c.feedback.eps,
                                            renders=c.feedback.renders)
      total[fr] = t
      for k, v in parts.items():
        put(f"reward/feedback_{k}", fr, v)
    self.last_texts = texts
    return {"rewards": total, "task": is_fb.astype(np.float32), **out}

  def train_step(self, state, batch, rng, constants):
    state, metrics = self._step(state, batch, rng, constants)
    for k in (k for k in batch if k.startswith("reward/")):  # over the rows where the component is defined
      ok = jnp.isfinite(batch[k])
      metrics[k] = jnp.where(ok, batch[k], 0.0).sum() / jnp.maximum(ok.sum(), 1)
    metrics["feedback_rows"] = batch["task"].mean()
    metrics["completion_len"] = batch["completion_mask"].sum(1).mean()
    metrics["truncated_frac"] = 1.0 - batch["finished"].astype(jnp.float32).mean()
    return state, metrics

  # ----------------------------------------------------------------------------------------- hooks

  def evaluate(self, params) -> dict[str, float]:
    c = self.config
    m = judge.evaluate(self.model, params, self.processor, self.eval_split, batch_size=c.eval.batch_size,
                       max_prompt_len=c.max_prompt_len, max_new_tokens=c.max_new_tokens)
    out = {f"eval/{k}": v for k, v in m.items() if isinstance(v, float)}
    if self.eval_feedback:
      out |= {f"eval/feedback_{k}": v for k, v in self.evaluate_feedback(params).items()}
    return out

  def evaluate_feedback(self, params) -> dict[str, float]:
    """Greedy rewrites of the held-out feedback turns: format, content and oracle-exact rates, and what
    they achieve rendered at their targets (noise i for turn i): the frozen judge's |dV| + |dA| and the
    colour judge's (the honest one), over the rewrites that keep their content."""
    c, ex = self.config, self.eval_feedback
    texts = judge.answer(self.model, params, self.processor, np.stack([e["image"] for e in ex]),
                         [e["question"] for e in ex], batch_size=c.eval.batch_size, max_prompt_len=c.max_prompt_len,
                         max_new_tokens=c.max_new_tokens)
    targets = np.array([[e["valence"], e["arousal"]] for e in ex], np.float32)
    seen = {}

    def render(prompts, va, ids):
      seen["images"], seen["va"] = self._render(prompts, va, ids), np.asarray(va)
      return seen["images"]

    eff = fb_rewards.effect_reward(texts, [e["prompt"] for e in ex], targets, np.arange(len(ex)), render=render,
                                   read=self._read, eps=c.feedback.eps)
    out = fb_rewards.feedback_metrics(texts, ex)
    if seen:
      cv, ca = colour_judge_np(seen["images"])
      out["colour_error"] = float(np.mean(np.abs(cv - seen["va"][:, 0]) + np.abs(ca - seen["va"][:, 1])))
      out["judged_error"] = float(np.nanmean(eff["v_abs_err"] + eff["a_abs_err"]))
    return out

  def on_step_end(self, step, state, metrics, workdir):
    c = self.config
    out = {}
    if metrics.get("ratio_dev_first", 0.0) > c.ratio_tolerance:
      logging.warning("step %d: on-policy ratio deviates from 1 by %.3g (> %.0e): the sampler's log-probs and the "
                      "training scorer disagree", step, metrics["ratio_dev_first"], c.ratio_tolerance)
    if step == 1 and c.eval.at_start:  # the SFT judge's numbers, for the before/after comparison
      out.update({f"{k}_start": v for k, v in self.evaluate(self.merged(self._pretrained)).items()})
    if trainer.eval_due(step, c):
      out.update(self.evaluate(self.merged(state["params"])))
      if self.last_texts:
        logging.info("step %d: a sampled answer: %r", step, self.last_texts[0])
    return out

  def export(self, state, directory):
    """params + model config, the layout SFT writes and `judge.load_lvlm` reads (with LoRA: merged)."""
    params = jax.device_get(self.merged(trainer.host_params(state)))
    assets.save(directory, params, self.qcfg.to_dict(), dtype=np.dtype(self.config.export_dtype))
