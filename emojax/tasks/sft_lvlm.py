"""Supervised fine-tuning of the Qwen2.5-VL judge on EmoShapes (produces the tiny LVLM).

Teacher forcing on the judge question with the image -> the canonical answer (target text:
`emojax.data.judge_targets`; layout: `emojax.lvlm.sampling.target_logits`). With
`data.feedback_share` > 0 that share of rows asks the feedback question instead (`data.feedback`: the
row's neutral prompt, a target uniform on [-3, 3]^2, the image's own V-A as the judged reading) and
teaches the critique and the oracle's rewrite, so one model judges and writes feedback. This is what gives the tiny judge its answer format and a first reading of
colour before LVLM GRPO sharpens it with multi-task rewards; the loss is the mean cross-entropy
over answer tokens only. Every eval_every steps the judge answers a held-out EmoShapes split
greedily, scored against the colour judge's labels and the predict-the-mean baseline.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emojax import optim, trainer
from emojax.emotion import prompts
from emojax.data import feedback, judge_targets, pipeline
from emojax.io import assets
from emojax.lvlm import judge, sampling
from emojax.lvlm import processor as proc_lib
from emojax.models import attention as attention_lib
from emojax.models import qwen_vl as qv
from emojax.rewards import feedback as fb_rewards


def make_model(model_config):
  """config.model -> (QwenVL, QwenVLConfig, pretrained host params or None, Processor).
  `pretrained` (a directory) wins over `preset` (random init, `qwen_vl.init_params`)."""
  if model_config.pretrained:
    return judge.load_lvlm(model_config.pretrained)
  cfg = qv.PRESETS[model_config.preset]
  return qv.QwenVL(cfg), cfg, None, proc_lib.Processor.tiny(cfg)


def turns(processor, raw: dict) -> tuple[list[str], list[str]]:
  """(questions, answers) of a loader batch: the judge turn per row, or the feedback turn where
  raw["task"] is 1 (pipeline.FeedbackTask)."""
  tasks = raw.get("task", np.zeros(len(raw["image"]), np.int32))
  questions = feedback.task_questions(raw, judge.question(processor), short=processor.is_tiny)
  answers = []
  for i, (im, ep, v, a, c) in enumerate(zip(raw["image"], raw["emotional_prompt"], raw["valence"], raw["arousal"],
                                            raw["category"])):
    if tasks[i]:
      target = (raw["feedback_valence"][i], raw["feedback_arousal"][i])
      answers.append(feedback.feedback_turn(str(raw["prompt"][i]), target, (v, a), short=processor.is_tiny)[1])
    else:
      answers.append(judge_targets.target_text(im, ep, v, a, c, str(raw["prompt"][i]) if "prompt" in raw else None))
  return questions, answers


def sft_batch(processor, raw: dict, max_prompt_len: int, target_len: int) -> dict[str, np.ndarray]:
  """A loader batch (uint8 images, prompts, V, A, category; task and feedback targets if mixed) -> numpy
  model inputs. pixel_values is (B, patches per image, patch_dim) so sharding the batch axis keeps each
  image's patches with its row; the step flattens it back (all images share one size, hence one grid)."""
  images = np.asarray(raw["image"])
  questions, texts = turns(processor, raw)
  p = proc_lib.prompt_batch(processor, images, questions, max_prompt_len)
  ids, mask = proc_lib.target_batch(processor, texts, target_len)
  return {"input_ids": p["input_ids"], "attention_mask": p["attention_mask"],
          "pixel_values": p["pixel_values"].reshape(len(images), -1, p["pixel_values"].shape[-1]),
          "target_ids": ids, "target_mask": mask}


def sft_loss(logits, target_ids, target_mask) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, argmax accuracy) over the target tokens of the batch (token mean: every
  answer token weighs the same); prompt, image and padding never enter. fp32 log-softmax."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(lp, target_ids[..., None], -1)[..., 0]
  m = target_mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  return (nll * m).sum() / n, ((jnp.argmax(lp, -1) == target_ids) * m).sum() / n


class SFTLVLM:
  progress_keys = ("loss", "token_acc", "eval/valence_mae", "eval/format_rate", "eval/feedback_exact_rate")

  def __init__(self, config):
    self.config = c = config
    attention_lib.require(c.model.attention, what="model.attention")  # before anything is loaded or written
    self.model, self.qcfg, self._pretrained, self.processor = make_model(c.model)
    self.model = self.model.clone(remat=c.model.remat, dtype=jnp.dtype(c.model.dtype),  # params stay float32
                                  scan_layers=c.model.scan_layers, attention=c.model.attention)
    self.global_batch_size = c.batch_size
    need, need_prompt = judge_targets.max_target_tokens(self.processor), 0
    if c.data.feedback_share > 0:
      if not self.processor.is_tiny:
        raise ValueError("data.feedback_share > 0 needs the tiny world's byte-level LVLM (its feedback answers "
                         "are EmoShapes rewrites); set data.feedback_share=0 for this model")
      question, answer = feedback.longest_turn()
      _, grid = self.processor.image(np.zeros((c.data.image_size,) * 2 + (3,), np.uint8))
      need = max(need, len(self.processor.tokenizer.encode(answer)) + 1)
      need_prompt = len(self.processor.encode(prompts.chat_text(question), [grid]))
    if c.target_len < need:
      raise ValueError(f"target_len={c.target_len} is below the longest SFT answer ({need} tokens)")
    if c.max_prompt_len < need_prompt:
      raise ValueError(f"max_prompt_len={c.max_prompt_len} is below the longest feedback question ({need_prompt} "
                       "tokens with the image)")
    self.grid = proc_lib.image_grid(self.processor, c.data.image_size, c.batch_size)
    self.tx = optim.make_optimizer(c.optim, c.total_steps)
    self.eval_split = pipeline.held_out_split(c.data, c.eval.seed, c.eval.num_examples)
    self.eval_feedback = [feedback.feedback_example(c.eval.seed, i, c.data.image_size)
                          for i in range(c.eval.feedback_examples if c.data.feedback_share > 0 else 0)]

  def make_loader(self, shard_index, shard_count):
    return pipeline.image_loader(self.config.data, batch_size=self.global_batch_size, seed=self.config.seed,
                                 shard_index=shard_index, shard_count=shard_count)

  def host_batch(self, raw):
    return sft_batch(self.processor, raw, self.config.max_prompt_len, self.config.target_len)

  def init_state(self, rng):  # the trainer jits it (random init) or only takes its shapes (pretrained)
    if self._pretrained is not None:
      return trainer.pretrained_state(self._pretrained, self.tx)
    params = qv.init_params(self.qcfg, rng, self.config.model.init_std)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optim.init_opt_state(self.tx, params, ())}

  def initial_state(self, rng, shardings):
    if self._pretrained is None:
      return jax.jit(self.init_state, out_shardings=shardings)(rng)
    return trainer.pretrained_state(self._pretrained, self.tx, (), shardings)

  def constants(self):
    return {}

  def train_step(self, state, batch, rng, constants):
    def loss_fn(p):
      logits = sampling.target_logits(self.model, p, batch, self.grid)
      return sft_loss(logits, batch["target_ids"], batch["target_mask"])

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params, opt_state, gnorm = optim.apply_gradients(self.tx, grads, state["opt_state"], state["params"])
    return ({"step": state["step"] + 1, "params": params, "opt_state": opt_state},
            {"loss": loss, "token_acc": acc, "grad_norm": gnorm})

  def evaluate(self, params) -> dict[str, float]:
    c = self.config
    m = judge.evaluate(self.model, params, self.processor, self.eval_split, batch_size=c.eval.batch_size,
                       max_prompt_len=c.max_prompt_len, max_new_tokens=c.target_len)
    out = {f"eval/{k}": v for k, v in m.items() if isinstance(v, float)}  # the baseline too, to read beside it
    if self.eval_feedback:
      texts = judge.answer(self.model, params, self.processor, np.stack([e["image"] for e in self.eval_feedback]),
                           [e["question"] for e in self.eval_feedback], batch_size=c.eval.batch_size,
                           max_prompt_len=c.max_prompt_len, max_new_tokens=c.target_len)
      out |= {f"eval/feedback_{k}": v for k, v in fb_rewards.feedback_metrics(texts, self.eval_feedback).items()}
    return out

  def export(self, state, directory):
    """params + model config (`emojax.io.assets` layout), which `python -m emojax.evaluate --config.lvlm=`
    and LVLM GRPO's model.pretrained read."""
    assets.save(directory, trainer.host_params(state), self.qcfg.to_dict(), dtype=np.dtype(self.config.export_dtype))
