"""The tiny world's generator pipeline: byte tokenizer + text encoder + V-A tokens + pixel-space
MMDiT (no VAE), loaded from an emojax generator directory and sampled as one jitted scan rollout.

A generator directory is `emojax.io.assets`' layout (config.json + params.safetensors), as the
shipped `emojax/assets/generator_tiny/` and every generator job's `<workdir>/export/` are. An
export also holds its MMDiT in the diffusers layout, `transformer/` (config.json +
diffusion_pytorch_model.safetensors), which `SD3Transformer2DModel.from_pretrained` reads.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from emojax.diffusion import schedule
from emojax.diffusion.rollout import cfg_velocity, rollout
from emojax.io import assets, hf_weights
from emojax.io.images import to_uint8
from emojax.io.tokenizers import ByteTokenizer
from emojax.models import generator as gen_lib
from emojax.models import mmdit

SHIPPED_GENERATOR = "generator_tiny"
PRETRAIN_HINT = ("make it with `python -m emojax.train --config=configs/pretrain_generator.py --workdir=DIR` "
                 "and point config.model.pretrained at DIR/export")


def generator_dir(path: str) -> str:
  """A generator directory; "" means the shipped tiny generator."""
  return path or assets.asset_dir(SHIPPED_GENERATOR)


def load_generator(path: str, dtype=jnp.float32, remat: str = "none", scan_layers: bool = False,
                   attention: str = "auto"):
  """-> (Generator computing in `dtype`, GeneratorConfig, params as a float32 host numpy tree) from a
  generator directory."""
  directory = generator_dir(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"pretrained generator directory {directory} does not exist; {PRETRAIN_HINT}")
  if os.path.isdir(os.path.join(directory, "checkpoints")) and not os.path.isfile(os.path.join(directory, "config.json")):
    raise FileNotFoundError(f"{directory} is a training workdir, not a generator directory: pass "
                            f"{os.path.join(directory, 'export')} (or write it with `python -m emojax.export "
                            f"--workdir={directory}`)")
  params, cfg_dict = assets.load(directory, "pretrained generator", PRETRAIN_HINT)
  gcfg = gen_lib.GeneratorConfig.from_dict(cfg_dict)
  gen = gen_lib.Generator(gcfg, dtype=dtype, remat=remat, scan_layers=scan_layers, attention=attention)
  expected = jax.eval_shape(lambda: gen_lib.init_params(gen_lib.Generator(gcfg), jax.random.key(0)))
  assets.check_tree_matches(params, expected, f"pretrained generator {directory}")
  return gen, gcfg, params


DIFFUSERS_TRANSFORMER = {"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.42.1"}


def export_generator(directory: str, gcfg: gen_lib.GeneratorConfig, params, dtype=np.float32,
                     write_more=None) -> None:
  """Writes a generator directory (atomically; see `assets.save`) with `transformer/` beside it;
  `write_more(tmp)` adds files to it before it is renamed into place."""
  def transformer(tmp):
    state = {k: np.asarray(v, dtype) for k, v in mmdit.to_diffusers_state_dict(params["mmdit"]).items()}
    hf_weights.write_pretrained(os.path.join(tmp, "transformer"), "diffusion_pytorch_model", state,
                                {**DIFFUSERS_TRANSFORMER, **gcfg.mmdit.to_dict()})
    if write_more is not None:
      write_more(tmp)
  assets.save(directory, params, gcfg.to_dict(), dtype=dtype, write_more=transformer)


def tokenizer_for(gcfg: gen_lib.GeneratorConfig) -> ByteTokenizer:
  return ByteTokenizer(gcfg.max_text_length)


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


def generate_uint8(gen: gen_lib.Generator, gcfg: gen_lib.GeneratorConfig, params, prompts, va, *, seed: int,
                   batch_size: int, num_steps: int, shift: float, cfg_scale: float, progress: bool = True,
                   noise_ids=None) -> np.ndarray:
  """uint8 ODE images (N, H, W, 3) of prompts at va, in jitted batches: row i from the noise
  fold_in(key(seed), noise_ids[i]) (default i), whatever the batching."""
  tok = tokenizer_for(gcfg)
  key = jax.random.key(seed)
  noise_ids = np.arange(len(prompts)) if noise_ids is None else np.asarray(noise_ids)
  if len(noise_ids) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(noise_ids)} noise ids")
  out = []
  starts = range(0, len(prompts), batch_size)
  if progress:
    from tqdm import tqdm
    starts = tqdm(starts, desc="generate", unit="batch")
  for start in starts:
    idx = np.arange(start, min(start + batch_size, len(prompts)))
    pad = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
    batch_prompts = [prompts[i] for i in pad]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(noise_ids[pad]))
    images = _generate_rows(gen, params, tok(batch_prompts), tok([""] * batch_size), jnp.asarray(va[pad]), keys,
                            num_steps=num_steps, shift=shift, cfg_scale=cfg_scale)
    out.append(to_uint8(np.asarray(images))[:len(idx)])
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("gen", "num_steps", "shift", "cfg_scale"))
def _generate_rows(gen, params, ids, uncond, va, keys, *, num_steps, shift, cfg_scale):
  """One jitted batch where each row has its own noise key (so batching never changes a row)."""
  kw = dict(num_steps=num_steps, shift=shift, cfg_scale=cfg_scale)
  return jax.vmap(lambda i, u, v, k: generate(gen, params, i[None], u[None], v[None], k, **kw)[0])(
      ids, uncond, va, keys)
