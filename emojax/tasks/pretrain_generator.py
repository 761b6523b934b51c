"""Flow-matching pretraining of the tiny generator (text encoder + MMDiT) on EmoShapes.

Captions mix the neutral prompt, the emotional prompt (colour adjectives) and the empty
prompt (for classifier-free guidance), so text steers colour. Layout needs two more pushes
(`shape_weight`, `caption.p_drop_pooled`): without them the model reads its prompt through the
pooled vector alone, which cannot say where a shape goes. The emotion tokens stay at
their zero initialisation (frozen) in these stages. A later, supervised V-A stage starts from a
generator directory (`model.init_from`), freezes the text encoder and the MMDiT and trains only the
V-A embedding on neutral captions with each image's exact (V, A): EmoShapes knows the emotion of
every image, so the V-A input learns to carry the colour the neutral prompt does not name.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from emojax import optim, trainer
from emojax.data import emoshapes, pipeline
from emojax.evaluation.training_eval import EvalSet
from emojax.models import generator as gen_lib
from emojax.pipelines import policy as policy_lib, tiny

def pixel_weights(shape_mask, shape_weight, margin: int = 0):
  """(B, H, W) flow-matching loss weights: 1 + shape_weight within `margin` px of a shape, mean 1 per image.

  Shapes cover ~5% of an EmoShapes image, so with uniform weights which shape sits in which
  cell barely moves the loss and the generator learns colour words but ignores layout.
  Weighting the shape pixels alone biases the optimum toward shape colour wherever a shape
  might be, so the model paints blocks; a margin of background around each shape gets the
  same weight, which keeps the optimum unbiased near the shape and makes its outline pay.
  """
  if margin:
    k = 2 * margin + 1
    shape_mask = jax.lax.reduce_window(shape_mask.astype(jnp.float32), 0.0, jax.lax.max, (1, k, k), (1, 1, 1), "SAME")
  w = 1.0 + shape_weight * shape_mask
  return w / jnp.mean(w, axis=(1, 2), keepdims=True)


class PretrainGenerator:
  progress_keys = ("loss",)

  def __init__(self, config):
    self.config = c = config
    self._init = None
    if c.model.init_from:  # a later stage of training: start from a generator directory's weights
      self.gen, self.gcfg, self._init = tiny.load_generator(c.model.init_from)
    else:
      gcfg = gen_lib.preset(c.model.preset)
      self.gcfg = gen_lib.GeneratorConfig(mmdit=gcfg.mmdit, text=gcfg.text, num_emotion_tokens=c.model.num_emotion_tokens,
                                          max_text_length=c.model.max_text_length)
      self.gen = gen_lib.Generator(self.gcfg)
    groups = jax.eval_shape(lambda: gen_lib.init_params(self.gen, jax.random.key(0)))
    self.frozen = optim.check_frozen(groups, c.model.frozen, "generator")
    if self._init is None and {"text", "mmdit"} & set(self.frozen):
      raise ValueError(f"model.frozen={tuple(c.model.frozen)} freezes a random init; set --config.model.init_from to "
                       "the generator directory this stage continues")
    self.tok = tiny.tokenizer_for(self.gcfg)
    self.global_batch_size = c.batch_size
    self._empty = self.tok([""])[0]
    self.tx = optim.make_optimizer(c.optim, c.total_steps)
    self.eval_set = EvalSet(policy_lib.TinyPolicy(self.gen, self.gcfg), num_prompts=c.eval.num_prompts, seed=c.eval.seed,
                            num_steps=c.eval.num_steps, shift=c.eval.shift, cfg_scale=c.eval.cfg_scale,
                            source=c.eval.source)

  def make_loader(self, shard_index, shard_count):
    d = self.config.data
    source = emoshapes.EmoShapesSource(d.seed, d.num_examples, size=self.gcfg.mmdit.sample_size)
    rows = pipeline.per_process(self.global_batch_size, shard_count, "batch_size")
    return pipeline.pretrain_loader(source, batch_size=rows, seed=self.config.seed, shard_index=shard_index,
                                    shard_count=shard_count)

  def host_batch(self, raw):
    image = np.asarray(raw["image"], np.float32)
    if "shape_mask" in raw:
      mask = np.asarray(raw["shape_mask"], np.float32)
    elif self.config.shape_weight:
      raise ValueError(f"shape_weight={self.config.shape_weight} needs per-pixel shape masks, which this data source "
                       "does not give; set --config.shape_weight=0")
    else:
      mask = np.zeros(image.shape[:3], np.float32)
    return {"image": image, "shape_mask": mask,
            "neutral_ids": self.tok(list(raw["prompt"])), "emotional_ids": self.tok(list(raw["emotional_prompt"])),
            "valence": np.asarray(raw["valence"], np.float32), "arousal": np.asarray(raw["arousal"], np.float32)}

  def initial_state(self, rng, shardings):
    if self._init is None:
      return jax.jit(self.init_state, out_shardings=shardings)(rng)
    state = trainer.pretrained_state(self._init, self.tx, self.frozen, shardings)
    return {**state, "ema": jax.device_put(self._init, shardings["ema"])}

  def init_state(self, rng):
    params = gen_lib.init_params(self.gen, rng) if self._init is None else jax.tree.map(jnp.asarray, self._init)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params,
            "opt_state": optim.init_opt_state(self.tx, params, self.frozen)}

  def constants(self):
    return {}

  def train_step(self, state, batch, rng, constants):
    c = self.config
    trainable, frozen = optim.partition(state["params"], self.frozen)
    x0 = batch["image"]
    b = x0.shape[0]
    k_cap, k_sig, k_noise = jax.random.split(rng, 3)
    u = jax.random.uniform(k_cap, (b, 1))
    ids = jnp.where(u < c.caption.p_empty, jnp.asarray(self._empty)[None],
                    jnp.where(u < c.caption.p_empty + c.caption.p_neutral, batch["neutral_ids"], batch["emotional_ids"]))
    # SD3's logit-normal timestep density, optionally mixed with uniform sigma
    sigma = jax.nn.sigmoid(c.logit_mean + c.logit_std * jax.random.normal(k_sig, (b,)))
    if c.uniform_sigma_frac > 0:
      k_pick, k_uni = jax.random.split(jax.random.fold_in(k_sig, 1))
      sigma = jnp.where(jax.random.uniform(k_pick, (b,)) < c.uniform_sigma_frac, jax.random.uniform(k_uni, (b,)), sigma)
    noise = jax.random.normal(k_noise, x0.shape)
    s = sigma[:, None, None, None]
    x_t = (1.0 - s) * x0 + s * noise
    va = jnp.stack([batch["valence"], batch["arousal"]], -1)

    weight = pixel_weights(batch["shape_mask"], c.shape_weight, c.shape_margin)

    drop_pooled = jax.random.uniform(jax.random.fold_in(k_cap, 1), (b, 1)) < c.caption.p_drop_pooled

    def loss_fn(trainable):
      p = optim.merge(trainable, frozen)
      text = self.gen.apply({"params": p}, ids, method=gen_lib.Generator.encode_text)
      if c.caption.p_drop_pooled > 0:
        empty = self.gen.apply({"params": p}, jnp.asarray(self._empty)[None], method=gen_lib.Generator.encode_text)
        text = {"context": text["context"], "pooled": jnp.where(drop_pooled, empty["pooled"], text["pooled"])}
      cond = self.gen.apply({"params": p}, text, va, method=gen_lib.Generator.add_emotion)
      v = self.gen.apply({"params": p}, x_t, sigma, cond, method=gen_lib.Generator.velocity)
      err = jnp.mean((v - (noise - x0)) ** 2, axis=-1)
      return jnp.mean(weight * err), jnp.mean(err)

    (loss, fm_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    trainable, opt_state, gnorm = optim.apply_gradients(self.tx, grads, state["opt_state"], trainable)
    params = optim.merge(trainable, frozen)
    # warmed-up EMA: forgets the random init quickly, then settles at ema_decay
    step = state["step"].astype(jnp.float32)
    decay = jnp.minimum(c.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema"], params)
    return ({"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state},
            {"loss": loss, "fm_loss": fm_loss, "grad_norm": gnorm})

  def on_step_end(self, step, state, metrics, workdir):
    c = self.config
    out = {}
    if trainer.eval_due(step, c):
      png = os.path.join(workdir, "samples", f"step_{step:06d}.png")
      os.makedirs(os.path.dirname(png), exist_ok=True)
      out = self.eval_set(state[c.export_weights], png)
    return out

  def export(self, state, directory):
    """config.export_weights (EMA or raw) as a generator directory (the shipped asset's layout)."""
    tiny.export_generator(directory, self.gcfg, trainer.host_params(state, self.config.export_weights),
                          np.dtype(self.config.export_dtype))
