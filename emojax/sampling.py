"""Image generation with a Generator: text + V-A -> images, as one jitted scan rollout."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from emojax.diffusion.rollout import cfg_velocity, rollout
from emojax.diffusion import schedule
from emojax.models import generator as gen_lib


def apply_velocity(gen: gen_lib.Generator, params, x, sigma, cond):
  return gen.apply({"params": params}, x, sigma, cond, method=gen_lib.Generator.velocity)


def encode(gen: gen_lib.Generator, params, input_ids, va, emotion_mask=None):
  return gen.apply({"params": params}, input_ids, va, emotion_mask, method=gen_lib.Generator.encode)


def encode_text(gen: gen_lib.Generator, params, input_ids):
  return gen.apply({"params": params}, input_ids, method=gen_lib.Generator.encode_text)


def add_emotion(gen: gen_lib.Generator, params, text, va, emotion_mask=None):
  return gen.apply({"params": params}, text, va, emotion_mask, method=gen_lib.Generator.add_emotion)


@functools.partial(jax.jit, static_argnames=("gen", "num_steps", "shift", "cfg_scale", "method", "noise_level"))
def generate(gen: gen_lib.Generator, params, input_ids, uncond_ids, va, key, *, num_steps: int, shift: float,
             cfg_scale: float, method: str = "ode", noise_level: float = 0.7):
  """Returns images (B, H, W, C) in [-1, 1]. method "ode" is deterministic given the key."""
  c = gen.config.mmdit
  cond = encode(gen, params, input_ids, va)
  uncond = encode(gen, params, uncond_ids, va, jnp.zeros(va.shape[:1])) if cfg_scale != 1.0 else None
  k_init, k_roll = jax.random.split(key)
  x = jax.random.normal(k_init, (va.shape[0], c.sample_size, c.sample_size, c.in_channels))
  fn = cfg_velocity(lambda x_, s_, c_: apply_velocity(gen, params, x_, s_, c_), cond, uncond, cfg_scale)
  sigmas = jnp.asarray(schedule.sd3_sigmas(num_steps, shift))
  x0, _ = rollout(fn, x, sigmas, k_roll, noise_level=noise_level, method=method, with_logprob=False)
  return jnp.clip(x0, -1.0, 1.0)


def to_uint8(images) -> np.ndarray:
  return np.asarray(np.round((np.asarray(images, np.float32) + 1.0) * 127.5).clip(0, 255), np.uint8)


def save_grid(images, path: str, ncol: int, scale: int = 2) -> None:
  """Images in [-1, 1] (N, H, W, 3) -> one PNG of ncol columns, 1-pixel gaps, upscaled."""
  from PIL import Image
  imgs = to_uint8(images)
  n, h, w, _ = imgs.shape
  nrow = -(-n // ncol)
  grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), 255, np.uint8)
  for i, im in enumerate(imgs):
    r, c = divmod(i, ncol)
    grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = im
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
